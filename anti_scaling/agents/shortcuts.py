"""Cheaper distillation steps: a shared encoder and on-policy samples.

- Shared encoder (DistilBART / distil-whisper): when the student keeps the
  teacher's encoder, the encoder runs once per step and both decoders consume
  its states (``TorchGeneratorModel.forward(..., prev_enc=...)``).
- On-policy distillation (GKD, Agarwal et al. 2024): some batches replace the
  labels with replies sampled from the current student; the teacher scores
  them and the student minimises the divergence on its own samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
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


def freeze(module: nn.Module) -> int:
    """Stop training ``module``'s parameters; returns how many tensors were frozen."""
    params = list(module.parameters())
    for param in params:
        param.requires_grad_(False)
    return len(params)


@contextmanager
def sampling_settings(agent: Any, temperature: float, topk: int) -> Iterator[None]:
    """Make ``agent._generate`` sample (top-k over ``topk`` tokens, at ``temperature``).

    ParlAI's tree search reads ``opt['inference']`` and ``opt['topk']`` and the
    agent's ``temperature``; they are restored on exit.
    """
    saved = {k: agent.opt.get(k) for k in ('inference', 'topk', 'beam_min_length')}
    saved_attrs = (agent.temperature, agent.beam_min_length)
    agent.opt['inference'], agent.opt['topk'] = 'topk', topk
    agent.temperature, agent.beam_min_length = temperature, 1
    try:
        yield
    finally:
        for key, value in saved.items():
            agent.opt[key] = value
        agent.temperature, agent.beam_min_length = saved_attrs


def replies_to_labels(
    replies: list[torch.Tensor], start: int, end: int, null: int
) -> torch.Tensor:
    """Pad sampled replies into a label tensor ``[B, L]`` as ParlAI's batches hold them.

    Leading start/end seed tokens are dropped; each reply ends with ``end``
    (kept, or appended when the sample hit the length limit).
    """
    rows = []
    for reply in replies:
        tokens = [int(t) for t in reply.tolist()]
        while tokens and tokens[0] in (start, end) and len(tokens) > 1:
            tokens = tokens[1:]
        if end in tokens:
            tokens = tokens[: tokens.index(end) + 1]
        else:
            tokens.append(end)
        rows.append(tokens)
    width = max(len(r) for r in rows)
    labels = torch.full((len(rows), width), null, dtype=torch.long)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return labels
