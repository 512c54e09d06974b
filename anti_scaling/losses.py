"""Distillation objectives as pure tensor functions.

Every function returns a :class:`TokenMean`: per-example sums and per-example
counts, so that the batch value is ``sum(total) / sum(count)`` (a mean over the
real tokens, or real attention pairs, of the whole batch) and ParlAI can
aggregate the same numbers exactly across batches with ``AverageMetric``.

Notation used in the docstrings: ``B`` batch, ``T`` positions, ``D`` width,
``V`` vocabulary, ``H`` heads, ``Q``/``K`` query/key positions. Masks are bool
tensors, true for real tokens (or valid pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

Projection = Callable[[torch.Tensor], torch.Tensor]


class TokenMean(NamedTuple):
    """A mean over tokens kept as per-example sums and counts.

    ``total[b]`` is the sum of the per-token (or per-pair) values of example ``b``
    and ``count[b]`` how many tokens (pairs) they cover.
    """

    total: torch.Tensor
    count: torch.Tensor

    def mean(self) -> torch.Tensor:
        """``sum(total) / sum(count)``; zero when nothing was counted."""
        return self.total.sum() / self.count.sum().clamp(min=1)


def average_terms(terms: Sequence[TokenMean]) -> TokenMean:
    """Average of several terms measured on the same tokens (e.g. one per layer).

    ``(1/P) * sum_p total_p`` over the shared count: the mean of the ``P``
    per-term means when all terms share one mask.
    """
    if not terms:
        raise ValueError('average_terms needs at least one term')
    total = torch.stack([t.total for t in terms]).mean(dim=0)
    return TokenMean(total, terms[0].count)


def _per_example(values: torch.Tensor, mask: torch.Tensor) -> TokenMean:
    """Sum ``values`` (one per true entry of ``mask``, in row-major order) per example."""
    batch = mask.size(0)
    example = mask.nonzero(as_tuple=True)[0]
    total = torch.zeros(batch, dtype=values.dtype, device=values.device)
    total = total.index_add(0, example, values)
    count = mask.reshape(batch, -1).sum(dim=1).to(values.dtype)
    return TokenMean(total, count)


def masked_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """Masked mean squared error between hidden states.

    ``student`` is ``[B, T, D_s]``, ``teacher`` ``[B, T, D_t]``, ``mask`` ``[B, T]``.
    With ``P`` the projection (identity if None)::

        loss = sum_{b,t: mask} mean_d (P(h_S[b,t]) - h_T[b,t])_d^2 / sum(mask)

    Only real tokens are projected, so padding costs nothing.
    """
    if student.shape[:2] != teacher.shape[:2] or mask.shape != student.shape[:2]:
        raise ValueError(
            f'masked_mse: shapes disagree: student {tuple(student.shape)}, '
            f'teacher {tuple(teacher.shape)}, mask {tuple(mask.shape)}'
        )
    s = student[mask]
    if projection is not None:
        s = projection(s)
    t = teacher[mask].to(s.dtype)
    if s.size(-1) != t.size(-1):
        raise ValueError(
            f'masked_mse: student width {s.size(-1)} != teacher width {t.size(-1)}; '
            'a projection is needed'
        )
    per_token = (s - t).pow(2).mean(dim=-1)
    return _per_example(per_token, mask)


def prediction_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Temperature-scaled forward KL from the teacher's to the student's distribution.

    ``[B, T, V]`` logits, ``[B, T]`` mask. With ``p = softmax(z_T / T)`` and
    ``q = softmax(z_S / T)``::

        loss = sum_{b,t: mask} T^2 * sum_v p_v (log p_v - log q_v) / sum(mask)

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al. 2015).
    """
    if temperature <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')
    s = student_logits[mask].float() / temperature
    t = teacher_logits[mask].float() / temperature
    log_q = F.log_softmax(s, dim=-1)
    log_p = F.log_softmax(t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1) * temperature**2
    return _per_example(kl, mask)


def argmax_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """Share of real tokens where the student's argmax equals the teacher's."""
    same = student_logits[mask].argmax(dim=-1) == teacher_logits[mask].argmax(dim=-1)
    return _per_example(same.float(), mask)


def attention_score_mse(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    valid: torch.Tensor,
) -> TokenMean:
    """TinyBERT attention loss: MSE between pre-softmax scores, per head.

    ``student_scores``/``teacher_scores`` are ``[B*H, Q, K]`` as ParlAI's
    ``MultiHeadAttention`` returns them (scaled, masked); ``valid`` is ``[B, Q, K]``,
    true for (query, key) pairs that are both real and allowed (not future)::

        loss = sum_{b,h,q,k: valid} (A_S - A_T)^2 / (H * sum(valid))

    Invalid pairs count neither in the sum nor in the denominator, so padding
    never dilutes the loss. Both models must have the same number of heads.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f'attention_score_mse: student scores {tuple(student_scores.shape)} and '
            f'teacher scores {tuple(teacher_scores.shape)} differ (head counts must match)'
        )
    batch, q_len, k_len = valid.shape
    heads = student_scores.size(0) // batch
    s = student_scores.view(batch, heads, q_len, k_len)
    t = teacher_scores.view(batch, heads, q_len, k_len).to(s.dtype)
    sq = torch.where(valid.unsqueeze(1), (s - t).pow(2), s.new_zeros(()))
    total = sq.sum(dim=(1, 2, 3))
    count = valid.sum(dim=(1, 2)).to(total.dtype) * heads
    return TokenMean(total, count)


def self_attention_pairs(mask: torch.Tensor) -> torch.Tensor:
    """Valid (query, key) pairs of bidirectional self-attention: both real. ``[B,T,T]``."""
    return mask.unsqueeze(2) & mask.unsqueeze(1)


def causal_attention_pairs(mask: torch.Tensor) -> torch.Tensor:
    """Valid pairs of causal self-attention: real query, key not in its future."""
    length = mask.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return mask.unsqueeze(2) & causal.unsqueeze(0)


def cross_attention_pairs(
    query_mask: torch.Tensor, key_mask: torch.Tensor
) -> torch.Tensor:
    """Valid pairs of encoder-decoder attention: real query and real key. ``[B,Q,K]``."""
    return query_mask.unsqueeze(2) & key_mask.unsqueeze(1)
