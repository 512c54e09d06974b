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

import math
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
    s, t = _masked_states('masked_mse', student, teacher, mask, projection)
    per_token = F.mse_loss(s, t, reduction='none').mean(dim=-1)
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
    (Hinton et al. 2015). Logits of ``-inf`` (or ParlAI's ``-1e20``) are safe.
    Computed as the soft-target cross-entropy ``-sum_v p_v log q_v`` (one fused
    kernel) minus the teacher's entropy, which carries no gradient.
    """
    _check_temperature(temperature)
    s, t = _select_logits('prediction_kl', student_logits, teacher_logits, mask)
    with torch.no_grad():
        log_p = _log_softmax(t, temperature)
        p = log_p.exp()
        neg_entropy = torch.einsum('nv,nv->n', p, log_p)
    s = s / temperature if temperature != 1 else s
    if _has_inf(s):
        s = s.clamp(min=_LOGIT_FLOOR)
    cross = F.cross_entropy(s, p, reduction='none')
    return _per_example((cross + neg_entropy) * temperature**2, mask)


def token_agreement(
    student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """Share of real tokens where two ``[B, T]`` token predictions agree."""
    return _per_example((student_tokens == teacher_tokens)[mask].float(), mask)


def argmax_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """Share of real tokens where the student's argmax equals the teacher's."""
    return token_agreement(
        student_logits.argmax(dim=-1), teacher_logits.argmax(dim=-1), mask
    )


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
    total = _MaskedSquaredErrorSum.apply(s, t, valid.unsqueeze(1))
    count = valid.sum(dim=(1, 2)).to(total.dtype) * heads
    return TokenMean(total, count)


class _MaskedSquaredErrorSum(torch.autograd.Function):
    """``sum over dims 1.. of (s - t)^2 where valid``, one value per example.

    The same value and gradient (``2 (s - t)`` where valid, 0 elsewhere) as the
    autograd graph of ``masked_fill``, ``pow`` and ``sum``, with two passes over
    the tensor forward and one backward instead of about seven: attention maps
    are the largest tensors a distillation step compares. The target ``t``
    gets no gradient (it is the teacher's).
    """

    @staticmethod
    def forward(ctx, s, t, valid):  # noqa: ANN001, ANN205
        diff = (s - t).masked_fill_(~valid, 0.0)
        ctx.save_for_backward(diff)
        return torch.linalg.vector_norm(diff, dim=tuple(range(1, diff.dim()))) ** 2

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (diff,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (diff.dim() - 1)
        return diff * (2 * grad).view(shape), None, None


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


# ---------------------------------------------------------------------------
# Prediction-layer objectives (the divergence menu)
# ---------------------------------------------------------------------------

#: The ``kind`` values that :func:`prediction_loss` accepts.
PREDICTION_LOSS_KINDS = ('kl', 'reverse_kl', 'jsd', 'logit_mse', 'soft_ce')

# Logits are clamped to this floor before the softmax, so that ``-inf`` (or an
# overflowing ``-1e20 / T``) becomes a large finite number: the probability is
# still exactly 0, but no ``0 * inf`` or ``inf - inf`` can produce a NaN.
_LOGIT_FLOOR = -1e20
# Logits at or below this value are "masked" (ParlAI writes ``-1e20`` in fp32 and
# ``-65504`` in fp16 at the start token). Only :func:`logit_mse` needs it: the
# softmax-based objectives already give such entries zero probability.
_MASKED_LOGIT = -65504.0


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')


def _select_logits(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the real tokens, ``[N, V]`` each, in float32."""
    if (
        student_logits.shape != teacher_logits.shape
        or mask.shape != student_logits.shape[:-1]
    ):
        raise ValueError(
            f'{name}: shapes disagree: student logits {tuple(student_logits.shape)}, '
            f'teacher logits {tuple(teacher_logits.shape)}, mask {tuple(mask.shape)}'
        )
    return student_logits[mask].float(), teacher_logits[mask].float()


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(z / T)`` over the last dim, with ``-inf`` logits made finite."""
    if temperature != 1:
        logits = logits / temperature
    if _has_inf(logits):  # ParlAI masks with -1e20, others with -inf
        logits = logits.clamp(min=_LOGIT_FLOOR)
    return F.log_softmax(logits, dim=-1)


def _has_inf(logits: torch.Tensor) -> bool:
    """Whether any logit is infinite (one reduction: a sum of finite float32
    logits, even ParlAI's ``-1e20``, stays finite)."""
    return not bool(torch.isfinite(logits.float().sum()))


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``sum_v a_v (log a_v - log b_v)`` over the last dim, from log-probabilities.

    Both inputs are finite (see :func:`_log_softmax`), so entries with ``a_v = 0``
    contribute exactly ``0`` to the value and to the gradient.
    """
    # one fused kernel for a * (log a - log b)
    return F.kl_div(log_b, log_a, reduction='none', log_target=True).sum(dim=-1)


def _jsd_rows(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD of GKD per row; ``beta`` 0/1 give forward/reverse KL."""
    if beta == 0:
        return _kl_rows(log_p, log_q)
    if beta == 1:
        return _kl_rows(log_q, log_p)
    # log m = log(beta * p + (1 - beta) * q), computed in log space
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    return beta * _kl_rows(log_p, log_m) + (1 - beta) * _kl_rows(log_q, log_m)


def reverse_prediction_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Temperature-scaled reverse KL from the student's to the teacher's distribution.

    ``[B, T, V]`` logits, ``[B, T]`` mask. With ``p = softmax(z_T / T)`` and
    ``q = softmax(z_S / T)``::

        loss = sum_{b,t: mask} T^2 * sum_v q_v (log q_v - log p_v) / sum(mask)

    Mode-seeking (as in MiniLLM, Gu et al. 2024, and GKD's on-policy setting). The
    ``T^2`` factor is ours, applied as for the forward KL (Hinton et al. 2015): at
    high temperature both directions agree to second order, so their gradients
    shrink alike as ``1/T^2``.
    """
    _check_temperature(temperature)
    s, t = _select_logits('reverse_prediction_kl', student_logits, teacher_logits, mask)
    log_q = _log_softmax(s, temperature)
    log_p = _log_softmax(t, temperature)
    return _per_example(_kl_rows(log_q, log_p) * temperature**2, mask)


def prediction_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> TokenMean:
    """Generalised Jensen-Shannon divergence ``JSD(beta)`` of GKD (Agarwal et al. 2024).

    ``[B, T, V]`` logits, ``[B, T]`` mask, ``p = softmax(z_T / T)`` (teacher),
    ``q = softmax(z_S / T)`` (student), ``0 <= beta <= 1``::

        m = beta * p + (1 - beta) * q
        JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)
        loss = sum_{b,t: mask} T^2 * JSD(beta) / sum(mask)

    ``beta = 0.5`` is the ordinary, symmetric JSD (bounded by ``log 2``). As
    ``beta -> 0`` the value vanishes like ``beta * KL(p || q)`` (forward KL) and as
    ``beta -> 1`` like ``(1 - beta) * KL(q || p)`` (reverse KL): the paper's "behaves
    like forward/reverse KL near 0/1" is about these scaled gradients. At exactly
    ``beta = 0`` and ``beta = 1``, where the formula is identically zero, we return
    ``KL(p || q)`` and ``KL(q || p)`` instead, as the GKD implementations do (TRL's
    GKDTrainer, ms-swift). Hence the loss is not continuous in ``beta`` at the ends.
    ``T^2`` as for the KL terms (our choice: GKD uses ``T`` only for sampling).
    """
    _check_temperature(temperature)
    if not 0 <= beta <= 1:
        raise ValueError(f'beta must be in [0, 1], got {beta}')
    s, t = _select_logits('prediction_jsd', student_logits, teacher_logits, mask)
    log_q = _log_softmax(s, temperature)
    log_p = _log_softmax(t, temperature)
    return _per_example(_jsd_rows(log_p, log_q, beta) * temperature**2, mask)


def logit_mse(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """Mean squared error between logits (Ba & Caruana 2014), over unmasked entries.

    ``[B, T, V]`` logits, ``[B, T]`` mask. With ``U_{b,t}`` the vocabulary entries
    whose logit is above ``-65504`` in both models (ParlAI's masked start token,
    ``-1e20`` in fp32 or ``-65504`` in fp16, and ``-inf`` are left out)::

        loss = sum_{b,t: mask} (1/|U_{b,t}|) sum_{v in U_{b,t}} (z_S - z_T)_v^2 / sum(mask)

    No temperature: ``T^2 * mean((z_S/T - z_T/T)^2)`` is the same number for every
    ``T``; it is also the high-temperature limit of the soft-target loss (Hinton et
    al. 2015, section 2.1).
    """
    s, t = _select_logits('logit_mse', student_logits, teacher_logits, mask)
    masked = (s <= _MASKED_LOGIT) | (t <= _MASKED_LOGIT)
    diff = s.masked_fill(masked, 0.0) - t.masked_fill(masked, 0.0)
    kept = (~masked).sum(dim=-1).clamp(min=1).to(diff.dtype)
    return _per_example(diff.pow(2).sum(dim=-1) / kept, mask)


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Cross-entropy against the teacher's soft targets (Hinton et al. 2015).

    ``[B, T, V]`` logits, ``[B, T]`` mask, ``p = softmax(z_T / T)``,
    ``q = softmax(z_S / T)``::

        loss = sum_{b,t: mask} -T^2 * sum_v p_v log q_v / sum(mask)

    Equals the forward KL plus ``T^2 * H(p)``: same gradient for the student, but
    not zero when the student matches the teacher. ``T^2`` as in Hinton et al.
    ("multiply them by T^2"), and DistilBERT.
    """
    _check_temperature(temperature)
    s, t = _select_logits('soft_cross_entropy', student_logits, teacher_logits, mask)
    log_q = _log_softmax(s, temperature)
    log_p = _log_softmax(t, temperature)
    ce = -(log_p.exp() * log_q).sum(dim=-1) * temperature**2
    return _per_example(ce, mask)


def prediction_loss(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> TokenMean:
    """One prediction-layer objective chosen by name.

    ``kind`` is one of :data:`PREDICTION_LOSS_KINDS`:

    - ``'kl'``: ``T^2 KL(p_T || q_S)`` (same value as :func:`prediction_kl`, but
      also safe for ``-inf`` logits);
    - ``'reverse_kl'``: :func:`reverse_prediction_kl`, ``T^2 KL(q_S || p_T)``;
    - ``'jsd'``: :func:`prediction_jsd`, ``T^2 JSD(beta)`` of GKD;
    - ``'logit_mse'``: :func:`logit_mse` (``temperature`` cancels; ignored);
    - ``'soft_ce'``: :func:`soft_cross_entropy`, ``-T^2 sum p_T log q_S``.

    ``beta`` is used by ``'jsd'`` only.
    """
    if kind == 'kl':
        return prediction_kl(student_logits, teacher_logits, mask, temperature)
    if kind == 'reverse_kl':
        return reverse_prediction_kl(student_logits, teacher_logits, mask, temperature)
    if kind == 'jsd':
        return prediction_jsd(student_logits, teacher_logits, mask, temperature, beta)
    if kind == 'logit_mse':
        _check_temperature(temperature)
        return logit_mse(student_logits, teacher_logits, mask)
    if kind == 'soft_ce':
        return soft_cross_entropy(student_logits, teacher_logits, mask, temperature)
    raise ValueError(
        f'unknown prediction loss {kind!r}; valid kinds: '
        + ', '.join(repr(k) for k in PREDICTION_LOSS_KINDS)
    )


# ---------------------------------------------------------------------------
# Hidden-state objectives
# ---------------------------------------------------------------------------


def _masked_states(
    name: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (projected) student and the teacher states of the real tokens, ``[N, D_t]``."""
    if student.shape[:2] != teacher.shape[:2] or mask.shape != student.shape[:2]:
        raise ValueError(
            f'{name}: shapes disagree: student {tuple(student.shape)}, '
            f'teacher {tuple(teacher.shape)}, mask {tuple(mask.shape)}'
        )
    s = student[mask]
    if projection is not None:
        s = projection(s)
    t = teacher[mask].to(s.dtype)
    if s.size(-1) != t.size(-1):
        raise ValueError(
            f'{name}: student width {s.size(-1)} != teacher width {t.size(-1)}; '
            'a projection is needed'
        )
    return s, t


def cosine_embedding_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """DistilBERT's cosine loss: align the directions of the hidden states.

    ``student`` ``[B, T, D_s]``, ``teacher`` ``[B, T, D_t]``, ``mask`` ``[B, T]``,
    ``P`` the projection (identity if None)::

        loss = sum_{b,t: mask} (1 - cos(P(h_S[b,t]), h_T[b,t])) / sum(mask)

    ``cos(x, y) = x.y / max(|x| |y|, 1e-8)`` (``torch.nn.CosineEmbeddingLoss`` with
    target 1, as DistilBERT uses). In ``[0, 2]``; blind to the states' norms.
    """
    s, t = _masked_states('cosine_embedding_loss', student, teacher, mask, projection)
    per_token = 1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return _per_example(per_token, mask)


def normalized_state_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """Patient KD's loss: squared distance between L2-normalised hidden states.

    Shapes as in :func:`cosine_embedding_loss`. With ``u = x / max(|x|, 1e-12)``::

        loss = sum_{b,t: mask} sum_d (u(P(h_S[b,t])) - u(h_T[b,t]))_d^2 / sum(mask)

    Summed over dims as in the paper (Sun et al. 2019, ``||.||_2^2``), so each token
    costs ``2 - 2 cos`` (in ``[0, 4]``), whatever the width. Patient KD applies it
    to the [CLS] state only; here it covers every real token.
    """
    s, t = _masked_states('normalized_state_mse', student, teacher, mask, projection)
    per_token = (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(dim=-1)
    return _per_example(per_token, mask)


# ---------------------------------------------------------------------------
# Attention objectives (MiniLM, MiniLMv2)
# ---------------------------------------------------------------------------


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
    log_p = F.log_softmax(target_logits.masked_fill(~valid, _LOGIT_FLOOR), dim=-1)
    log_q = F.log_softmax(input_logits.masked_fill(~valid, _LOGIT_FLOOR), dim=-1)
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
    s = student_scores.float().view(batch, heads, q_len, k_len)
    t = teacher_scores.float().view(batch, heads, q_len, k_len)
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
    x = torch.where(used.unsqueeze(-1), states.float(), 0.0)
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


# ---------------------------------------------------------------------------
# Prediction-layer objectives against a top-k teacher cache
# ---------------------------------------------------------------------------

# Stand-in for the log-probability of the cached tokens when the student's
# "everything else" bin is computed: far below any real log-probability (whose
# floor is about ``_LOGIT_FLOOR / T``), yet finite, so that an empty complement
# (k = V) gives a finite log-mass of ~-1e30 and a finite (zero-weighted) gradient.
_EXCLUDED_LOGPROB = -1e30
# Cached log-probabilities are clamped to this floor (the float16 minimum): a
# probability of exactly 0 then contributes exactly 0, never ``0 * inf``.
_CACHED_LOGPROB_FLOOR = -65504.0


def topk_prediction_kl(
    student_logits: torch.Tensor,
    cached_ids: torch.Tensor,
    cached_logprobs: torch.Tensor,
    cached_rest: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """The forward KL of :func:`prediction_kl` against a top-k teacher cache.

    ``student_logits`` ``[B, T, V]``; ``cached_ids`` ``[B, T, k]`` (the teacher's
    ``k`` most probable tokens, distinct), ``cached_logprobs`` ``[B, T, k]`` their
    teacher log-probabilities ``log p_i`` at temperature ``T``, ``cached_rest``
    ``[B, T]`` the teacher's probability mass outside them,
    ``r = 1 - sum_i p_i`` (stored, not recomputed, so no cancellation), ``mask``
    ``[B, T]``. The cache cannot say how ``r`` is spread over the other ``V - k``
    tokens, so both distributions are compared on ``k + 1`` bins: the ``k`` cached
    tokens, and "everything else". With ``q = softmax(z_S / T)``::

        q_rest = sum_{v not in ids} q_v      (a logsumexp over the complement of the
                                              student's log-probabilities: exact,
                                              no 1 - sum cancellation)
        KL_k   = sum_{i<k} p_i (log p_i - log q_{id_i}) + r (log r - log q_rest)
        loss   = sum_{b,t: mask} T^2 * KL_k / sum(mask)

    The rest term is 0 when ``r = 0``. For ``k = V`` (``r = 0``) this is exactly
    :func:`prediction_kl`. For ``k < V`` it is a lower bound of it (merging bins
    never increases a KL: the log-sum inequality), and its gradient pushes the
    student's mass on the ``k`` tokens towards the teacher's, and its total mass on
    the rest towards ``r``, without shaping the tail inside the rest. The teacher
    entropy term is included, so the value is 0 when the student matches the
    teacher on the bins. Cached values below ``-65504`` are clamped (probability 0
    either way); padding positions may hold anything.
    """
    _check_temperature(temperature)
    if (
        student_logits.dim() != 3
        or cached_ids.shape != cached_logprobs.shape
        or cached_ids.shape[:2] != student_logits.shape[:2]
        or cached_rest.shape != student_logits.shape[:2]
        or mask.shape != student_logits.shape[:2]
    ):
        raise ValueError(
            'topk_prediction_kl: shapes disagree: student logits '
            f'{tuple(student_logits.shape)}, cached ids {tuple(cached_ids.shape)}, '
            f'cached logprobs {tuple(cached_logprobs.shape)}, cached rest '
            f'{tuple(cached_rest.shape)}, mask {tuple(mask.shape)}'
        )
    s = student_logits[mask].float()
    ids = cached_ids[mask].long()
    vocab = s.size(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f'topk_prediction_kl: cached token ids outside [0, {vocab}): the cache '
            "was built with another vocabulary than the student's"
        )
    log_p = cached_logprobs[mask].float().clamp(min=_CACHED_LOGPROB_FLOOR)
    rest = cached_rest[mask].float().clamp(min=0.0)
    log_q = _log_softmax(s, temperature)
    log_q_k = log_q.gather(-1, ids)
    log_q_rest = log_q.scatter(-1, ids, _EXCLUDED_LOGPROB).logsumexp(dim=-1)
    kl_k = _kl_rows(log_p, log_q_k)
    has_rest = rest > 0
    safe_rest = torch.where(has_rest, rest, torch.ones_like(rest))
    kl_rest = torch.where(
        has_rest, rest * (safe_rest.log() - log_q_rest), torch.zeros_like(rest)
    )
    return _per_example((kl_k + kl_rest) * temperature**2, mask)


def cached_agreement(
    student_tokens: torch.Tensor, cached_ids: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """``teacher_acc`` from a cache: the student's ``[B, T]`` argmax tokens against
    the teacher's most probable token (``cached_ids[..., 0]``, ``[B, T, k]`` ids in
    decreasing order of probability). Ties in the teacher's maximum may be broken
    differently from ``argmax``."""
    return token_agreement(student_tokens, cached_ids[..., 0], mask)
