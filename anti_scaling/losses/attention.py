"""Attention objectives: scores, distributions and relations of attention modules.

Scores are ``[B*H, Q, K]`` as ParlAI's ``MultiHeadAttention`` returns them
(scaled, masked, pre-softmax); ``valid`` ``[B, Q, K]`` marks the (query, key)
pairs that are both real and allowed (see the ``*_pairs`` functions). Invalid
pairs count neither in the sum nor in the denominator. Everything is computed
in float32, whatever the inputs' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .prediction import LOGIT_FLOOR
from .token_mean import TokenMean, as_float32


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
    t = teacher_scores.view(batch, heads, q_len, k_len)
    total = _MaskedSquaredErrorSum.apply(s, t, valid.unsqueeze(1))
    count = valid.sum(dim=(1, 2)).to(total.dtype) * heads
    return TokenMean(total, count)


class _MaskedSquaredErrorSum(torch.autograd.Function):
    """``sum over dims 1.. of (s - t)^2 where valid``, one float32 value per example.

    The same value and gradient (``2 (s - t)`` where valid, 0 elsewhere) as the
    autograd graph of ``masked_fill``, ``pow`` and ``sum``, with two passes over
    the tensor forward and one backward instead of about seven: attention maps
    are the largest tensors a distillation step compares. The difference is
    taken in float32 (half-precision squares of 32 heads x 128 x 128 scores
    overflow); the gradient is returned in the student's dtype. The target
    ``t`` gets no gradient (it is the teacher's).
    """

    @staticmethod
    def forward(ctx, s, t, valid):  # noqa: ANN001, ANN205
        diff = (as_float32(s) - as_float32(t)).masked_fill_(~valid, 0.0)
        ctx.save_for_backward(diff)
        ctx.dtype = s.dtype
        return torch.linalg.vector_norm(diff, dim=tuple(range(1, diff.dim()))) ** 2

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (diff,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (diff.dim() - 1)
        return (diff * (2 * grad).view(shape)).to(ctx.dtype), None, None


def _masked_row_kl(
    target_logits: torch.Tensor, input_logits: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``KL(softmax(target) || softmax(input))`` per row over the valid entries only.

    ``valid`` broadcasts against the logits. Invalid entries are replaced by a
    finite floor before the softmax (whatever they held: ``-1e20``, ``-inf``, a
    real score), so both distributions are renormalised over the valid entries and
    nothing is NaN. Rows without a valid entry give 0.
    """
    valid = valid.expand_as(target_logits)
    target_logits, input_logits = as_float32(target_logits), as_float32(input_logits)
    log_p = F.log_softmax(target_logits.masked_fill(~valid, LOGIT_FLOOR), dim=-1)
    log_q = F.log_softmax(input_logits.masked_fill(~valid, LOGIT_FLOOR), dim=-1)
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(valid, terms, terms.new_zeros(())).sum(dim=-1)


def _heads_of(scores: torch.Tensor, valid: torch.Tensor, name: str) -> int:
    """``H`` of ``[B*H, Q, K]`` scores that go with a ``[B, Q, K]`` pair mask."""
    batch, q_len, k_len = valid.shape
    if (
        scores.dim() != 3
        or scores.shape[1:] != (q_len, k_len)
        or scores.size(0) % batch
    ):
        raise ValueError(
            f'{name}: scores {tuple(scores.shape)} are not [B*H, Q, K] for '
            f'valid pairs {tuple(valid.shape)} = [B, Q, K]'
        )
    return scores.size(0) // batch


def attention_distribution_kl(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    valid: torch.Tensor,
) -> TokenMean:
    """MiniLM attention transfer: KL between attention distributions, per head.

    ``student_scores``/``teacher_scores`` are ``[B*H, Q, K]`` pre-softmax scores as
    ParlAI's ``MultiHeadAttention`` returns them; ``valid`` is ``[B, Q, K]``, true
    for allowed (query, key) pairs (see :func:`self_attention_pairs`,
    :func:`causal_attention_pairs`, :func:`cross_attention_pairs`). With ``A`` the
    softmax of the scores over the valid keys of each query only (whatever the
    invalid positions hold)::

        loss = sum_{b,h,q: q has a valid key} KL(A_T[b,h,q] || A_S[b,h,q])
               / (H * #{(b, q): q has a valid key})

    i.e. ``1/(H |x|) sum_h sum_t KL`` of Wang et al. 2020, over real queries of the
    whole batch. Both models must have the same number of heads.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f'attention_distribution_kl: student scores {tuple(student_scores.shape)} '
            f'and teacher scores {tuple(teacher_scores.shape)} differ (head counts '
            'must match; relation_kl works with any head counts)'
        )
    batch, q_len, k_len = valid.shape
    heads = _heads_of(student_scores, valid, 'attention_distribution_kl')
    s = as_float32(student_scores).view(batch, heads, q_len, k_len)
    t = as_float32(teacher_scores).view(batch, heads, q_len, k_len)
    kl = _masked_row_kl(t, s, valid.unsqueeze(1))
    total = kl.sum(dim=(1, 2))
    count = valid.any(dim=-1).sum(dim=1).to(total.dtype) * heads
    return TokenMean(total, count)


def _relation_logits(
    states: torch.Tensor, heads: int, valid: torch.Tensor, name: str
) -> torch.Tensor:
    """``X_r X_r^T / sqrt(D / R)`` per relation head: ``[B, T, D]`` -> ``[B, R, T, T]``.

    ``X_r`` is the ``r``-th of ``R`` equal slices of the width (for ``R`` = the
    attention heads, exactly ParlAI's head split). Positions in no valid pair are
    zeroed first, so whatever padding holds cannot reach the valid relations.
    """
    batch, length, width = states.shape
    if width % heads:
        raise ValueError(
            f'{name}: width {width} is not divisible by {heads} heads '
            f'(each head needs width/heads dims)'
        )
    used = valid.any(dim=-1) | valid.any(dim=-2)
    x = torch.where(used.unsqueeze(-1), as_float32(states), 0.0)
    size = width // heads
    x = x.reshape(batch, length, heads, size).transpose(1, 2)
    return x @ x.transpose(-1, -2) / math.sqrt(size)


def _relation_loss(
    name: str,
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    valid: torch.Tensor,
    student_heads: int,
    teacher_heads: int,
) -> TokenMean:
    batch, length = student_states.shape[:2]
    if (
        student_states.dim() != 3
        or teacher_states.dim() != 3
        or teacher_states.shape[:2] != (batch, length)
        or valid.shape != (batch, length, length)
    ):
        raise ValueError(
            f'{name}: shapes disagree: student {tuple(student_states.shape)}, '
            f'teacher {tuple(teacher_states.shape)}, valid {tuple(valid.shape)} '
            '(want [B, T, D_s], [B, T, D_t], [B, T, T])'
        )
    if min(student_heads, teacher_heads) < 1:
        raise ValueError(f'{name}: the number of heads must be positive')
    rel_s = _relation_logits(student_states, student_heads, valid, f'{name} (student)')
    rel_t = _relation_logits(teacher_states, teacher_heads, valid, f'{name} (teacher)')
    kl = _masked_row_kl(rel_t, rel_s, valid.unsqueeze(1))
    total = kl.sum(dim=(1, 2))
    count = valid.any(dim=-1).sum(dim=1).to(total.dtype) * student_heads
    return TokenMean(total, count)


def value_relation_kl(
    student_values: torch.Tensor,
    teacher_values: torch.Tensor,
    valid: torch.Tensor,
    heads: int,
) -> TokenMean:
    """MiniLM value-relation transfer, per attention head.

    ``student_values`` ``[B, K, D_s]`` and ``teacher_values`` ``[B, K, D_t]`` are the
    outputs of the attention modules' ``v_lin`` (before the head split); both
    models have ``H = heads`` heads (widths may differ). ``valid`` ``[B, K, K]``
    marks the allowed pairs of value positions (:func:`self_attention_pairs` of
    the key mask, or :func:`causal_attention_pairs` in a decoder). With ``V_h`` the
    ``h``-th head slice, ``d_h = D / H`` of each model::

        VR_h = softmax(V_h V_h^T / sqrt(d_h))      (over the valid positions of a row)
        loss = sum_{b,h,k: k has a valid pair} KL(VR_T[b,h,k] || VR_S[b,h,k])
               / (H * #{(b, k): k has a valid pair})
    """
    return _relation_loss(
        'value_relation_kl', student_values, teacher_values, valid, heads, heads
    )


def relation_kl(
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    valid: torch.Tensor,
    relation_heads: int,
) -> TokenMean:
    """MiniLMv2 multi-head self-attention relation transfer (Wang et al. 2021).

    ``student_states`` ``[B, T, D_s]`` and ``teacher_states`` ``[B, T, D_t]`` are the
    queries, keys or values (outputs of ``q_lin``/``k_lin``/``v_lin``) of one
    attention module of each model; the widths and the attention head counts may
    differ. Each is cut into ``R = relation_heads`` slices ``X_r`` of ``D / R`` dims
    (the paper concatenates the heads and splits the result into ``R`` relation
    heads; both ``D_s`` and ``D_t`` must be divisible by ``R``)::

        Rel_r = softmax(X_r X_r^T / sqrt(D / R))   (over the valid positions of a row)
        loss = sum_{b,r,t: t has a valid pair} KL(Rel_T[b,r,t] || Rel_S[b,r,t])
               / (R * #{(b, t): t has a valid pair})

    Call it once per relation (query-query, key-key, value-value). ``valid``
    ``[B, T, T]`` marks the allowed pairs of positions: :func:`self_attention_pairs`
    of the token mask in an encoder; :func:`causal_attention_pairs` of the label
    mask for decoder queries (or self-attention keys/values) if future positions
    are to be left out; for encoder-decoder attention the keys and values are the
    encoder's states, so use :func:`self_attention_pairs` of the context mask.
    """
    return _relation_loss(
        'relation_kl',
        student_states,
        teacher_states,
        valid,
        relation_heads,
        relation_heads,
    )
