"""A shared encoder (DistilBART, distil-whisper): the student keeps the teacher's.

When the student keeps the teacher's whole encoder, the encoder runs once per
step and both decoders consume its states
(``TorchGeneratorModel.forward(..., prev_enc=...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..errors import DistillationError


@contextmanager
def provide_encoder_states(model: nn.Module, encoder_states: Any) -> Iterator[None]:
    """Within the block, ``model(...)`` reuses ``encoder_states`` instead of encoding.

    Implemented as a keyword pre-hook that sets ParlAI's ``prev_enc`` argument;
    the hook is removed on exit.
    """

    def hook(_module, args, kwargs):  # noqa: ANN001
        kwargs['prev_enc'] = encoder_states
        return args, kwargs

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def check_shared_encoder(
    wide: bool,
    teachers: int,
    student_layers: int,
    teacher_layers: int,
    init_map: list[int],
    copy_weights: bool,
) -> None:
    """The student may share the teacher's encoder only if it is an exact copy."""
    problem = None
    if not wide:
        problem = 'the student must be wide (DistillTransformerAgent/DistillBartAgent)'
    elif teachers != 1:
        problem = 'it needs exactly one teacher'
    elif student_layers != teacher_layers or init_map != list(range(teacher_layers)):
        problem = (
            f'the student must keep all {teacher_layers} teacher encoder layers '
            f'(it has {student_layers}, initialised from {init_map})'
        )
    elif not copy_weights:
        problem = 'the student must be initialised from the teacher (--copy-teacher-weights true)'
    if problem:
        raise DistillationError(f'--share-teacher-encoder: {problem}')
