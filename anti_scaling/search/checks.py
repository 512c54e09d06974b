"""Refuse a search space that is empty or contradictory, before any trial.

Each check raises :class:`DistillationError` with one line naming the
parameters that clash and a way out.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import DistillationError
from ..loss_terms import ATTENTION_KINDS
from .space import KINDS, NARROW_ONLY, Flag, ParamSpec, TeacherShape

ATTENTION_COEFFS = ('self_attn_loss_coeff', 'enc_dec_attn_loss_coeff')
LOSS_COEFFS = (
    'task_loss_coeff',
    'pred_loss_coeff',
    'hidden_loss_coeff',
    'encoder_loss_coeff',
    'embedding_loss_coeff',
    'self_attn_loss_coeff',
    'enc_dec_attn_loss_coeff',
)


def _choices_in_flag(space: Mapping[str, ParamSpec], flags: Mapping[str, Flag]) -> None:
    for name, spec in space.items():
        flag = flags.get(name)
        if flag is None or flag.choices is None or spec.choices is None:
            continue
        bad = [c for c in spec.choices if c not in flag.choices]
        if bad:
            flag_name = '--' + name.replace('_', '-')
            raise DistillationError(
                f'search space: {name} = {bad[0]!r} is not one of {flag_name}\'s '
                f'choices ({", ".join(str(c) for c in flag.choices)})'
            )


def _kinds(space: Mapping[str, ParamSpec]) -> tuple[str, ...]:
    spec = space['kind']
    bad = [k for k in spec.values() if k not in KINDS]
    if spec.choices is None or bad:
        raise DistillationError(
            f'search space: kind must be chosen from wide, narrow (got {spec.describe()})'
        )
    return tuple(spec.choices)


def _layers(space: Mapping[str, ParamSpec], teacher: TeacherShape, kinds) -> None:
    for stack in ('encoder', 'decoder'):
        name = f'n_{stack}_layers'
        spec = space[name]
        if spec.can_be(lambda n: n < 1):
            raise DistillationError(
                f'search space: {name} must be at least 1 (got {spec.describe()})'
            )
        most = getattr(teacher, name)
        if 'wide' in kinds and max(spec.values()) > most:
            raise DistillationError(
                f'search space: {name} reaches {max(spec.values())} but a wide '
                f'student keeps at most the teacher\'s {most} {stack} layers: lower '
                'it, or search narrow students only (kind=narrow)'
            )


def _narrow_shape(space: Mapping[str, ParamSpec], teacher: TeacherShape, kinds) -> None:
    given = [name for name in NARROW_ONLY if name in space]
    if 'narrow' not in kinds:
        varied = [n for n in given if not space[n].fixed]
        if varied:
            raise DistillationError(
                f'search space: {varied[0]} varies but kind is wide only (wide '
                'students keep the teacher\'s width, FFN size and heads): add '
                'kind=wide,narrow or fix it'
            )
        return
    if 'ffn_size' in space and 'ffn_ratio' in space:
        raise DistillationError(
            'search space: give either ffn_size or ffn_ratio, not both'
        )
    for name in ('embedding_size', 'n_heads'):
        if name not in space:
            raise DistillationError(f'search space: {name} is missing')
        spec = space[name]
        if spec.choices is None:
            raise DistillationError(
                f'search space: {name} must be a list of choices (widths and head '
                'counts must divide each other)'
            )
        if spec.can_be(lambda v: v < 1):
            raise DistillationError(f'search space: {name} must be at least 1')
    for width in space['embedding_size'].choices:
        for heads in space['n_heads'].choices:
            if width % heads:
                raise DistillationError(
                    f'search space: embedding_size {width} is not a multiple of '
                    f'n_heads {heads} (every width must divide by every head count)'
                )
    ffn = space.get('ffn_size') or space.get('ffn_ratio')
    if ffn is None:
        raise DistillationError('search space: ffn_size or ffn_ratio is missing')
    if ffn.can_be(lambda v: v <= 0):
        raise DistillationError(f'search space: {ffn.name} must be positive')
    _heads_for_attention(space, teacher)


def _heads_for_attention(space: Mapping[str, ParamSpec], teacher: TeacherShape) -> None:
    """Head-wise attention terms need the teacher's head count (the agents'
    own check, which would otherwise stop the trial)."""
    other = [h for h in space['n_heads'].choices if h != teacher.n_heads]
    attention_on = [
        n for n in ATTENTION_COEFFS if n in space and space[n].can_be(lambda v: v > 0)
    ]
    kind = space.get('attn_loss_type')
    kinds = kind.choices if kind is not None else ('score_mse',)
    headwise = [k for k in kinds if ATTENTION_KINDS.kind(k).headwise]
    if other and attention_on and headwise:
        raise DistillationError(
            f'search space: n_heads may be {other[0]} (teacher: {teacher.n_heads}) '
            f'while {attention_on[0]} may be on with attn_loss_type {headwise[0]}, '
            'which compares heads one to one: fix n_heads to the teacher\'s, set '
            f'{attention_on[0]}=0, or use attn_loss_type=minilmv2'
        )


def _something_to_learn(space: Mapping[str, ParamSpec]) -> None:
    present = [space[n] for n in LOSS_COEFFS if n in space]
    if present and not any(s.can_be(lambda v: v > 0) for s in present):
        raise DistillationError(
            'search space: every loss coefficient is 0, so students learn nothing: '
            'let task_loss_coeff or pred_loss_coeff be positive'
        )
    for name in LOSS_COEFFS:
        if name in space and space[name].can_be(lambda v: v < 0):
            raise DistillationError(f'search space: {name} must not be negative')


def check_space(
    space: Mapping[str, ParamSpec], teacher: TeacherShape, flags: Mapping[str, Flag]
) -> None:
    """Raise :class:`DistillationError` if no valid student can come out of ``space``."""
    for name in ('kind', 'n_encoder_layers', 'n_decoder_layers'):
        if name not in space:
            raise DistillationError(f'search space: {name} is missing')
    _choices_in_flag(space, flags)
    kinds = _kinds(space)
    _layers(space, teacher, kinds)
    _narrow_shape(space, teacher, kinds)
    _something_to_learn(space)
    if 'distill_temperature' in space and space['distill_temperature'].can_be(
        lambda t: t <= 0
    ):
        raise DistillationError('search space: distill_temperature must be positive')
