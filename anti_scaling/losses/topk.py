"""The forward KL against a top-k teacher-output cache (``--teacher-cache``)."""

from __future__ import annotations

import torch

from .prediction import check_temperature, kl_rows, tempered_log_probs, token_agreement
from .token_mean import TokenMean, per_example

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
    check_temperature(temperature)
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
    log_q = tempered_log_probs(s, temperature)
    log_q_k = log_q.gather(-1, ids)
    log_q_rest = log_q.scatter(-1, ids, _EXCLUDED_LOGPROB).logsumexp(dim=-1)
    kl_k = kl_rows(log_p, log_q_k)
    has_rest = rest > 0
    safe_rest = torch.where(has_rest, rest, torch.ones_like(rest))
    kl_rest = torch.where(
        has_rest, rest * (safe_rest.log() - log_q_rest), torch.zeros_like(rest)
    )
    return per_example((kl_k + kl_rest) * temperature**2, mask)


def cached_agreement(
    student_tokens: torch.Tensor, cached_ids: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """``teacher_acc`` from a cache: the student's ``[B, T]`` argmax tokens against
    the teacher's most probable token (``cached_ids[..., 0]``, ``[B, T, k]`` ids in
    decreasing order of probability). Ties in the teacher's maximum may be broken
    differently from ``argmax``."""
    return token_agreement(student_tokens, cached_ids[..., 0], mask)
