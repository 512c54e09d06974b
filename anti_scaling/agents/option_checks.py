"""Checks of the distillation options that need no model: one line per fault."""

from __future__ import annotations

from ..errors import DistillationError
from ..loss_terms import COEFFICIENTS
from .fused_prediction import fused_chunk_size
from .plan import taid_steps


def check_required(opt: dict) -> None:
    """Refuse a run without a teacher, or with inconsistent numeric options."""
    if not opt.get('teacher_model'):
        raise DistillationError(
            '--teacher-model is required: the path of the trained ParlAI model to '
            'distil (or a zoo: path)'
        )
    for dest in COEFFICIENTS:
        value = opt.get(dest)
        if value is not None and float(value) < 0:
            raise DistillationError(
                f"--{dest.replace('_', '-')} is {value}: coefficients must be >= 0"
            )
    temperature = float(opt.get('distill_temperature') or 1.0)
    if temperature <= 0:
        raise DistillationError(
            f"--distill-temperature is {opt.get('distill_temperature')}: "
            'it must be > 0'
        )
    t_max = opt.get('distill_temperature_max')
    if t_max is not None and float(t_max) < temperature:
        raise DistillationError(
            f'--distill-temperature-max {t_max} is below --distill-temperature '
            f'{temperature}: annealing goes from the maximum down'
        )
    if t_max is not None and int(opt.get('temperature_anneal_steps') or 0) <= 0:
        raise DistillationError(
            '--distill-temperature-max needs --temperature-anneal-steps > 0'
        )
    beta = float(opt.get('jsd_beta') if opt.get('jsd_beta') is not None else 0.5)
    if not 0 <= beta <= 1:
        raise DistillationError(f'--jsd-beta is {beta}: it must be in [0, 1]')
    alpha = float(opt.get('skew_alpha') if opt.get('skew_alpha') is not None else 0.1)
    if not 0 <= alpha < 1:
        raise DistillationError(f'--skew-alpha is {alpha}: it must be in [0, 1)')
    fused_chunk_size(opt)  # a chunk size that is not a positive integer
    if opt.get('pred_loss_type') == 'taid':
        _check_taid(opt)
    if int(opt.get('handover_steps') or 0) < 0:
        raise DistillationError('--handover-steps must be >= 0')
    if int(opt.get('intermediate_steps') or 0) < 0:
        raise DistillationError('--intermediate-steps must be >= 0')
    fraction = float(opt.get('on_policy_fraction') or 0)
    if not 0 <= fraction <= 1:
        raise DistillationError(
            f'--on-policy-fraction is {fraction}: it must be in [0, 1]'
        )
    if fraction > 0 and float(opt.get('on_policy_temperature') or 1.0) <= 0:
        raise DistillationError('--on-policy-temperature must be > 0')
    if fraction > 0 and int(opt.get('on_policy_max_length') or 0) < 1:
        raise DistillationError('--on-policy-max-length must be >= 1')


def teacher_weights(opt: dict, count: int) -> list[float]:
    """Normalised weights of ``count`` teachers (``--teacher-weights``, default equal)."""
    raw = opt.get('teacher_weights')
    if not raw:
        return [1.0 / count] * count
    try:
        weights = [float(x) for x in str(raw).split(',')]
    except ValueError:
        raise DistillationError(
            f'--teacher-weights {raw!r}: expected comma-separated numbers'
        ) from None
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise DistillationError(
            f'--teacher-weights {raw!r}: give {count} non-negative weights, one per '
            'teacher, not all zero'
        )
    return [w / sum(weights) for w in weights]


def _check_taid(opt: dict) -> None:
    """TAID's schedule: ``0 <= start <= end <= 1`` over a known number of steps."""
    start = float(opt.get('taid_start') if opt.get('taid_start') is not None else 0.4)
    end = float(opt.get('taid_end') if opt.get('taid_end') is not None else 1.0)
    if not 0 <= start <= end <= 1:
        raise DistillationError(
            f'--taid-start {start} and --taid-end {end}: need 0 <= start <= end <= 1'
        )
    if taid_steps(opt) <= 0:
        raise DistillationError(
            '--pred-loss-type taid needs the length of its schedule: set '
            '--taid-steps N (or --max-train-steps N)'
        )
