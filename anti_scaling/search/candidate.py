"""One point of the space: the student a trial trains, sampled through optuna."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..option_keys import SHAPE_KEYS
from .space import SHAPE_PARAMS, ParamSpec, TeacherShape

AGENT_PREFIX = 'anti_scaling.distillation:'
AGENTS = {
    ('transformer', 'wide'): AGENT_PREFIX + 'DistillTransformerAgent',
    ('transformer', 'narrow'): AGENT_PREFIX + 'DistillNarrowTransformerAgent',
    ('bart', 'wide'): AGENT_PREFIX + 'DistillBartAgent',
    ('bart', 'narrow'): AGENT_PREFIX + 'DistillNarrowBartAgent',
}


def format_value(value: Any) -> str:
    """A value as ParlAI's command line takes it (``true``, ``64``, ``0.25``)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _short(value: Any) -> str:
    """A value for display: floats to 4 significant digits."""
    if isinstance(value, float) and not value.is_integer():
        return f'{value:.4g}'
    return format_value(value)


def flag_args(options: Mapping[str, Any]) -> list[str]:
    """``--dashed-name value`` for every option (dest -> value)."""
    args: list[str] = []
    for dest, value in options.items():
        args += ['--' + dest.replace('_', '-'), format_value(value)]
    return args


@dataclass(frozen=True)
class Candidate:
    """A student to distil: its kind, agent, full shape and the agent options set.

    ``options`` are the flags a trial passes (by dest): the layer counts, the
    width, FFN size and heads of narrow students (wide ones inherit them),
    and every loss option of the space.
    """

    kind: str
    agent: str
    shape: dict[str, int]
    options: dict[str, Any] = field(default_factory=dict)

    def flags(self) -> list[str]:
        """The options as command-line flags."""
        return flag_args(self.options)

    def label(self) -> str:
        """Short shape text, e.g. ``narrow 1+2 d128 f512 h4``."""
        s = self.shape
        return (
            f"{self.kind} {s['n_encoder_layers']}+{s['n_decoder_layers']} "
            f"d{s['embedding_size']} f{s['ffn_size']} h{s['n_heads']}"
        )

    def losses_label(self) -> str:
        """Short loss text: the non-zero weights, then the other options.

        E.g. ``task=1, pred=16, hidden=0.25, T=2, pred_loss_type=kl``.
        """
        weights, others = [], []
        for dest, value in self.options.items():
            if dest in SHAPE_KEYS:
                continue
            if dest.endswith('_loss_coeff'):
                if value != 0:
                    weights.append(f'{dest[: -len("_loss_coeff")]}={_short(value)}')
                continue
            name = 'T' if dest == 'distill_temperature' else dest
            others.append(f'{name}={_short(value)}')
        return ', '.join(weights + others)

    def as_data(self) -> dict[str, Any]:
        """JSON-ready data (what :func:`candidate_from_data` reads back)."""
        return {
            'kind': self.kind,
            'agent': self.agent,
            'shape': dict(self.shape),
            'options': dict(self.options),
        }


def candidate_from_data(data: Mapping[str, Any]) -> Candidate:
    """The :class:`Candidate` of :meth:`Candidate.as_data`."""
    return Candidate(
        data['kind'], data['agent'], dict(data['shape']), dict(data['options'])
    )


def suggest(trial: Any, spec: ParamSpec) -> Any:
    """Sample ``spec`` in an optuna trial (a fixed value is not recorded as a param)."""
    if spec.fixed:
        return spec.choices[0]
    if spec.choices is not None:
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.optional and not trial.suggest_categorical(
        'use_' + spec.name, [True, False]
    ):
        return 0 if spec.kind == 'int' else 0.0
    if spec.kind == 'int':
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log)


def sample_candidate(
    trial: Any, space: Mapping[str, ParamSpec], teacher: TeacherShape
) -> Candidate:
    """The student of one trial: the kind, then its shape, then the loss options.

    Narrow-only parameters are sampled for narrow students only; a wide
    student has the teacher's width, FFN size and heads. The FFN size is
    ``ffn_size`` or ``round(ffn_ratio * width)``.
    """
    kind = suggest(trial, space['kind'])
    shape = {
        'n_encoder_layers': int(suggest(trial, space['n_encoder_layers'])),
        'n_decoder_layers': int(suggest(trial, space['n_decoder_layers'])),
        'embedding_size': teacher.embedding_size,
        'ffn_size': teacher.ffn_size,
        'n_heads': teacher.n_heads,
    }
    options: dict[str, Any] = {
        'n_encoder_layers': shape['n_encoder_layers'],
        'n_decoder_layers': shape['n_decoder_layers'],
    }
    if kind == 'narrow':
        width = int(suggest(trial, space['embedding_size']))
        if 'ffn_size' in space:
            ffn = int(suggest(trial, space['ffn_size']))
        else:
            ffn = max(1, round(float(suggest(trial, space['ffn_ratio'])) * width))
        heads = int(suggest(trial, space['n_heads']))
        shape.update(embedding_size=width, ffn_size=ffn, n_heads=heads)
        options.update(embedding_size=width, ffn_size=ffn, n_heads=heads)
    for name in sorted(n for n in space if n not in SHAPE_PARAMS):
        options[name] = suggest(trial, space[name])
    return Candidate(kind, AGENTS[(teacher.family, kind)], shape, options)
