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


@torch.no_grad()
def sample_replies(
    model: nn.Module,
    encoder_input: tuple,
    initial: torch.Tensor,
    max_length: int,
    temperature: float,
    topk: int,
    end: int,
) -> torch.Tensor:
    """Sample one reply per example from ``model``, token by token (incremental decoding).

    ``initial`` ``[B, S]`` seeds the decoder (ParlAI's ``_get_initial_decoder_input``:
    the start token, or BART's end-start pair). Each step draws from
    ``softmax(z / temperature)`` restricted to the ``topk`` most likely tokens
    (0: all). Returns the seed followed by the sampled tokens ``[B, S + n]``; rows
    that produced ``end`` keep repeating it. A plain sampling loop over ParlAI's
    decoder and output layer: no beam bookkeeping, so it costs little more than
    the forward passes themselves.
    """
    encoder_states = model.encoder(*encoder_input)
    tokens, state = initial, None
    done = torch.zeros(initial.size(0), dtype=torch.bool, device=initial.device)
    order = torch.arange(initial.size(0), device=initial.device)
    for _ in range(max_length):
        hidden, state = model.decoder(tokens, encoder_states, state)
        logits = model.output(hidden[:, -1:, :])[:, 0, :].float() / temperature
        if 0 < topk < logits.size(-1):
            threshold = logits.topk(topk, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < threshold, float('-inf'))
        choice = torch.multinomial(torch.softmax(logits, dim=-1), 1)[:, 0]
        choice = torch.where(done, torch.full_like(choice, end), choice)
        tokens = torch.cat([tokens, choice.unsqueeze(1)], dim=1)
        done |= choice == end
        if bool(done.all()):
            break
        state = model.reorder_decoder_incremental_state(state, order)
    return tokens


def replies_to_labels(replies: list[torch.Tensor], end: int, null: int) -> torch.Tensor:
    """Pad sampled replies into a label tensor ``[B, L]`` as ParlAI's batches hold them.

    Each reply is cut after its first ``end`` token, or gets one appended when
    the sample hit the length limit; shorter rows are padded with ``null``.
    """
    rows = []
    for reply in replies:
        tokens = [int(t) for t in reply.tolist()]
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
