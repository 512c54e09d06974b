"""On-policy distillation (GKD, Agarwal et al. 2024): train on the student's samples.

Some training batches replace their labels with replies sampled from the
current student; the teacher scores them and the student minimises the
divergence on its own samples (no cross-entropy: the samples are not labels).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn


class OnPolicySchedule:
    """Which training batches are on-policy: each with probability ``fraction``,
    drawn from a generator seeded with ``seed`` (never in evaluation)."""

    def __init__(self, fraction: float, seed: int = 0):
        self.fraction = float(fraction)
        self._rng = random.Random(seed)

    def now(self, training: bool) -> bool:
        if not (training and self.fraction > 0):
            return False
        return self._rng.random() < self.fraction


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


def on_policy_batch(
    model: nn.Module,
    batch: Any,
    encoder_input: tuple,
    initial: torch.Tensor,
    opt: dict,
    end_and_null: tuple[int, int],
) -> Any:
    """A copy of ``batch`` whose labels are replies sampled from ``model``.

    Sampling follows ``--on-policy-max-length``, ``--on-policy-temperature`` and
    ``--on-policy-topk`` (:func:`sample_replies`), in eval mode (no dropout); the
    model is then back in training mode, its encoder in eval mode if frozen.
    """
    end, null = end_and_null
    model.eval()
    try:
        samples = sample_replies(
            model,
            encoder_input,
            initial,
            int(opt.get('on_policy_max_length') or 32),
            float(opt.get('on_policy_temperature') or 1.0),
            int(opt.get('on_policy_topk') or 0),
            end,
        )
    finally:
        model.train()
        if opt.get('freeze_encoder'):
            model.encoder.eval()
    labels = replies_to_labels(list(samples[:, initial.size(1) :]), end, null)
    sampled = type(batch)(**dict(batch.items()))
    sampled.label_vec = labels.to(batch.label_vec.device)
    sampled.labels = None
    return sampled
