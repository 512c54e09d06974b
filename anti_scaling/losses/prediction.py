"""Prediction-layer objectives: divergences between output distributions.

All take ``[B, T, V]`` student and teacher logits and a ``[B, T]`` mask of real
label tokens, select the real tokens, and compute in float32. Notation:
``p = softmax(z_T / T)`` (teacher), ``q = softmax(z_S / T)`` (student), ``T`` the
temperature; every value is a token mean over the mask. The ``T^2`` factor
(Hinton et al. 2015) keeps gradient magnitudes comparable across temperatures;
we apply it to every divergence, including those whose papers use no
temperature. Logits of ``-inf``, ParlAI's ``-1e20`` (fp32) or ``-65504`` (fp16)
are safe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .token_mean import TokenMean, as_float32, per_example

# Logits are clamped to this floor before the softmax, so that ``-inf`` (or an
# overflowing ``-1e20 / T``) becomes a large finite number: the probability is
# still exactly 0, but no ``0 * inf`` or ``inf - inf`` can produce a NaN.
LOGIT_FLOOR = -1e20
# Logits at or below this value are "masked" (ParlAI writes ``-1e20`` in fp32 and
# ``-65504`` in fp16 at the start token). Only :func:`logit_mse` needs it: the
# softmax-based objectives already give such entries zero probability.
MASKED_LOGIT = -65504.0


def check_temperature(temperature: float) -> None:
    """Refuse a temperature that is not positive."""
    if temperature <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')


def real_token_logits(
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
    return as_float32(student_logits[mask]), as_float32(teacher_logits[mask])


def has_inf(logits: torch.Tensor) -> bool:
    """Whether any logit is infinite (one reduction: a sum of finite float32
    logits, even ParlAI's ``-1e20``, stays finite)."""
    return not bool(torch.isfinite(as_float32(logits).sum()))


def tempered_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / T`` in float32, with ``-inf`` entries made finite (:data:`LOGIT_FLOOR`)."""
    logits = as_float32(logits)
    if temperature != 1:
        logits = logits / temperature
    if has_inf(logits):
        logits = logits.clamp(min=LOGIT_FLOOR)
    return logits


def tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(z / T)`` over the last dim, float32, finite everywhere."""
    return F.log_softmax(tempered_logits(logits, temperature), dim=-1)


def kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``sum_v a_v (log a_v - log b_v)`` over the last dim, from log-probabilities.

    Both inputs are finite (see :func:`tempered_log_probs`), so entries with
    ``a_v = 0`` contribute exactly ``0`` to the value and to the gradient.
    """
    return F.kl_div(log_b, log_a, reduction='none', log_target=True).sum(dim=-1)


def log_mixture(
    log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float
) -> torch.Tensor:
    """``log(w a + (1 - w) b)`` computed in log space, ``0 < w < 1``."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _log_probs(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q, log p)`` of the real tokens: the preamble of the divergences below."""
    check_temperature(temperature)
    s, t = real_token_logits(name, student_logits, teacher_logits, mask)
    return tempered_log_probs(s, temperature), tempered_log_probs(t, temperature)


def prediction_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Forward KL (Hinton et al. 2015)::

        loss = sum_{b,t: mask} T^2 * sum_v p_v (log p_v - log q_v) / sum(mask)

    Computed as the soft-target cross-entropy ``-sum_v p_v log q_v`` (one fused
    kernel) minus the teacher's entropy, which carries no gradient.
    """
    check_temperature(temperature)
    s, t = real_token_logits('prediction_kl', student_logits, teacher_logits, mask)
    with torch.no_grad():
        log_p = tempered_log_probs(t, temperature)
        p = log_p.exp()
        neg_entropy = torch.einsum('nv,nv->n', p, log_p)
    cross = F.cross_entropy(tempered_logits(s, temperature), p, reduction='none')
    return per_example((cross + neg_entropy) * temperature**2, mask)


def reverse_prediction_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Reverse KL, mode-seeking (MiniLLM, GKD's on-policy setting)::

    loss = sum_{b,t: mask} T^2 * sum_v q_v (log q_v - log p_v) / sum(mask)
    """
    log_q, log_p = _log_probs(
        'reverse_prediction_kl', student_logits, teacher_logits, mask, temperature
    )
    return per_example(kl_rows(log_q, log_p) * temperature**2, mask)


def prediction_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> TokenMean:
    """Generalised Jensen-Shannon divergence ``JSD(beta)`` of GKD (Agarwal et al. 2024)::

        m = beta * p + (1 - beta) * q
        JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)
        loss = sum_{b,t: mask} T^2 * JSD(beta) / sum(mask)

    ``beta = 0.5`` is the symmetric JSD (bounded by ``log 2``). At exactly
    ``beta = 0`` and ``beta = 1``, where the formula is identically zero, the
    value is ``KL(p || q)`` and ``KL(q || p)`` instead, as GKD implementations
    do; hence the loss is not continuous in ``beta`` at the ends.
    """
    if not 0 <= beta <= 1:
        raise ValueError(f'beta must be in [0, 1], got {beta}')
    log_q, log_p = _log_probs(
        'prediction_jsd', student_logits, teacher_logits, mask, temperature
    )
    if beta == 0:
        rows = kl_rows(log_p, log_q)
    elif beta == 1:
        rows = kl_rows(log_q, log_p)
    else:
        log_m = log_mixture(log_p, log_q, beta)
        rows = beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)
    return per_example(rows * temperature**2, mask)


def _skewed(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    alpha: float,
) -> TokenMean:
    """``T^2 KL(a || alpha a + (1 - alpha) b)`` with ``(a, b) = (p, q)`` for
    ``skew_kl`` and ``(q, p)`` for ``skew_reverse_kl``."""
    if not 0 <= alpha < 1:
        raise ValueError(f'skew alpha must be in [0, 1), got {alpha}')
    log_q, log_p = _log_probs(name, student_logits, teacher_logits, mask, temperature)
    log_a, log_b = (log_p, log_q) if name == 'skew_kl' else (log_q, log_p)
    log_m = log_mixture(log_a, log_b, alpha) if alpha > 0 else log_b
    return per_example(kl_rows(log_a, log_m) * temperature**2, mask)


def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.1,
) -> TokenMean:
    """DistiLLM's skew KL (Ko et al. 2024): forward KL against a mixture::

        loss = sum_{b,t: mask} T^2 * KL(p || alpha p + (1 - alpha) q) / sum(mask)

    ``alpha = 0`` is the forward KL. The mixture keeps the second argument away
    from 0 wherever the teacher has mass, which bounds the value by
    ``log(1 / alpha)`` and the gradient's scale (the paper's reason for stabler,
    faster training than KL); the student's gradient flows through ``q`` in it.
    """
    return _skewed('skew_kl', student_logits, teacher_logits, mask, temperature, alpha)


def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.1,
) -> TokenMean:
    """DistiLLM's skew reverse KL: reverse KL against a mixture::

        loss = sum_{b,t: mask} T^2 * KL(q || alpha q + (1 - alpha) p) / sum(mask)

    ``alpha = 0`` is the reverse KL; the value is at most ``log(1 / alpha)``.
    """
    return _skewed(
        'skew_reverse_kl', student_logits, teacher_logits, mask, temperature, alpha
    )


def interpolated_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    interpolation: float = 1.0,
) -> TokenMean:
    """TAID's time-dependent target (Shing et al. 2025), ``t = interpolation``::

        p_t  = softmax(((1 - t) * stopgrad(z_S) + t * z_T) / T)
        loss = sum_{b,t: mask} T^2 * KL(p_t || q) / sum(mask)

    ``t = 1`` is the forward KL; at ``t = 0`` the target is the student itself
    (value and gradient 0). Raising ``t`` over training (see
    ``anti_scaling.agents.schedules``) moves the target from the student's own
    distribution towards the teacher's, which eases a large capacity gap.
    """
    if not 0 <= interpolation <= 1:
        raise ValueError(f'interpolation must be in [0, 1], got {interpolation}')
    check_temperature(temperature)
    s, t = real_token_logits('interpolated_kl', student_logits, teacher_logits, mask)
    with torch.no_grad():
        finite_s, finite_t = tempered_logits(s, 1.0), tempered_logits(t, 1.0)
        mixed = (1 - interpolation) * finite_s + interpolation * finite_t
        log_target = tempered_log_probs(mixed, temperature)
    log_q = tempered_log_probs(s, temperature)
    return per_example(kl_rows(log_target, log_q) * temperature**2, mask)


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Cross-entropy against the teacher's soft targets (Hinton et al. 2015)::

        loss = sum_{b,t: mask} -T^2 * sum_v p_v log q_v / sum(mask)

    The forward KL plus ``T^2 H(p)``: the same gradient, but not zero when the
    student matches the teacher.
    """
    log_q, log_p = _log_probs(
        'soft_cross_entropy', student_logits, teacher_logits, mask, temperature
    )
    return per_example(-(log_p.exp() * log_q).sum(dim=-1) * temperature**2, mask)


def logit_mse(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> TokenMean:
    """Mean squared error between logits (Ba & Caruana 2014), over unmasked entries.

    With ``U_{b,t}`` the vocabulary entries whose logit is above ``-65504`` in both
    models (ParlAI's masked start token and ``-inf`` are left out)::

        loss = sum_{b,t: mask} (1/|U_{b,t}|) sum_{v in U_{b,t}} (z_S - z_T)_v^2 / sum(mask)

    ``temperature`` is accepted and ignored: ``T^2 * mean((z_S/T - z_T/T)^2)`` is
    the same number for every ``T``.
    """
    check_temperature(temperature)
    s, t = real_token_logits('logit_mse', student_logits, teacher_logits, mask)
    masked = (s <= MASKED_LOGIT) | (t <= MASKED_LOGIT)
    diff = s.masked_fill(masked, 0.0) - t.masked_fill(masked, 0.0)
    kept = (~masked).sum(dim=-1).clamp(min=1).to(diff.dtype)
    return per_example(diff.pow(2).sum(dim=-1) / kept, mask)


def token_agreement(
    student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, mask: torch.Tensor
) -> TokenMean:
    """Share of real tokens where two ``[B, T]`` token predictions agree."""
    return per_example((student_tokens == teacher_tokens)[mask].float(), mask)
