"""What a distillation run computes: its terms, their weights, what to capture.

A :class:`DistillPlan` is built once per run, from the command-line
coefficients (:func:`plan_from_options`, following the table of
:mod:`anti_scaling.loss_terms`) and from a ``--distill-config`` file
(:mod:`.config`); both describe the same structure and one code path
(:mod:`.term_values`) computes it. Each term is a reported metric; it averages,
over its layers, the sum of its state pairs' objectives. The prediction loss is
a term like the others: its pair compares the two models' logits. Terms with
weight 0 are not in the plan, so nothing is captured or computed for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..loss_terms import (
    ATTENTION_KINDS,
    COEFFICIENTS,
    HIDDEN_KINDS,
    PREDICTION_KINDS,
    PREDICTION_TERM,
)
from .capture import LOGITS, CapturePoint
from .objectives import objective
from .schedules import (
    InterpolationSchedule,
    Schedule,
    annealed_temperature,
    handed_over_share,
    scheduled,
)

# Which tokens or pairs a pair is measured on: hidden states of 'encoder' or
# 'decoder' tokens; scores/relations of 'encoder' self-attention, 'decoder'
# (causal) self-attention or 'cross' (decoder queries, encoder keys).
POSITIONS = ('encoder', 'decoder', 'cross')
STAGES = ('intermediate', 'final')


@dataclass(frozen=True)
class StatePair:
    """A student tensor, the teacher tensor it learns, and how they are compared.

    ``projection`` names a trained linear map (in the student model's
    ``distill_projections``) applied to the student's tensor, or to the
    teacher's when ``project_teacher``. ``params`` are the objective's fixed
    parameters (``heads``, ``relation_heads``, ``beta``, ``alpha``), as pairs.
    """

    student: CapturePoint
    teacher: CapturePoint
    objective: str = 'mse'
    positions: str = 'encoder'
    projection: str | None = None
    project_teacher: bool = False
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        objective(self.objective)  # raises for an unknown name
        if self.positions not in POSITIONS:
            raise ValueError(f'unknown positions {self.positions!r}')

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class DistillTerm:
    """One reported metric: ``sum(pair objectives) / groups``, weighted by ``coeff``.

    ``groups`` is the number of layers the pairs cover (one pair per layer for a
    single objective; several per layer for composite ones such as MiniLMv2's
    query, key and value relations, which are summed). ``schedule`` makes the
    weight a piecewise-linear function of the training step. ``stage``: see
    :class:`anti_scaling.loss_terms.LossTerm`.
    """

    metric: str
    pairs: tuple[StatePair, ...]
    coeff: float
    groups: int = 0
    schedule: Schedule | None = None
    stage: str = 'intermediate'

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError(f'term {self.metric} has no state pairs')
        if self.stage not in STAGES:
            raise ValueError(f'unknown stage {self.stage!r}')
        if self.groups <= 0:
            object.__setattr__(self, 'groups', len(self.pairs))

    def weight(self, step: int) -> float:
        return scheduled(self.schedule, step, self.coeff)

    @property
    def on_logits(self) -> bool:
        return any(p.student == LOGITS for p in self.pairs)


def needs_decoder(terms: tuple[DistillTerm, ...]) -> bool:
    """Whether computing ``terms`` needs the teacher's decoder (or only its encoder)."""
    return any(
        not pair.teacher.is_module
        or not pair.teacher.module.startswith('encoder')
        or pair.positions != 'encoder'
        for term in terms
        for pair in term.pairs
    )


@dataclass
class DistillPlan:
    """Everything the distillation loss needs, decided before training starts.

    ``total = task_weight * loss + sum(term weights * term)``, weights taken at the
    current training step. ``projections`` maps a projection name to
    ``(in_width, out_width)``; ``intermediate_steps`` (two-step distillation)
    keeps only intermediate terms before that step and only the task and final
    terms from it on (0: off); ``handover_steps`` hands over from the teacher to
    the labels: every term's weight is multiplied by
    ``max(0, 1 - step / handover_steps)`` (0: off). ``cloned`` lists, per model (``'student'``,
    ``'teacher'``), the points captured as copies (see :mod:`.capture`).
    """

    task_coeff: float = 1.0
    task_schedule: Schedule | None = None
    temperature: float = 1.0
    temperature_max: float | None = None
    temperature_anneal_steps: int = 0
    intermediate_steps: int = 0
    handover_steps: int = 0
    terms: tuple[DistillTerm, ...] = ()
    projections: dict[str, tuple[int, int]] = field(default_factory=dict)
    interpolation: InterpolationSchedule | None = None
    cloned: dict[str, frozenset[CapturePoint]] = field(default_factory=dict)

    @property
    def uses_teacher(self) -> bool:
        return bool(self.terms)

    @property
    def prediction(self) -> DistillTerm | None:
        """The term on the logits (``pred_loss``), if any."""
        return next((t for t in self.terms if t.on_logits), None)

    @property
    def module_terms(self) -> tuple[DistillTerm, ...]:
        """The terms on captured module tensors (the intermediate terms)."""
        return tuple(t for t in self.terms if not t.on_logits)

    @property
    def needs_teacher_decoder(self) -> bool:
        """Whether the teacher must run its decoder (else its encoder is enough)."""
        return needs_decoder(self.terms)

    @property
    def student_points(self) -> list[CapturePoint]:
        return list(
            dict.fromkeys(
                p.student for t in self.terms for p in t.pairs if p.student.is_module
            )
        )

    @property
    def teacher_points(self) -> list[CapturePoint]:
        return list(
            dict.fromkeys(
                p.teacher for t in self.terms for p in t.pairs if p.teacher.is_module
            )
        )

    def weights(self, step: int) -> dict[str, float]:
        """Weight of every term (and of ``loss``) at training ``step``."""
        stage = None
        if self.intermediate_steps > 0:
            stage = 'intermediate' if step < self.intermediate_steps else 'final'
        out = {
            'loss': (
                0.0
                if stage == 'intermediate'
                else scheduled(self.task_schedule, step, self.task_coeff)
            )
        }
        handover = handed_over_share(step, self.handover_steps)
        for term in self.terms:
            out[term.metric] = (
                0.0
                if stage not in (None, term.stage)
                else term.weight(step) * (1.0 - handover)
            )
        return out

    def temperature_at(self, step: int) -> float:
        return annealed_temperature(
            step,
            self.temperature,
            self.temperature_max,
            self.temperature_anneal_steps,
        )

    def interpolation_at(self, step: int) -> float:
        """TAID's ``t`` at ``step`` (1: the teacher's own distribution)."""
        return 1.0 if self.interpolation is None else self.interpolation.value(step)


def encoder_output() -> CapturePoint:
    """The encoder's output states (``TransformerEncoder`` returns ``(states, mask)``)."""
    return CapturePoint('encoder', 'output', 0)


def layer_input(stack: str, layer: int) -> CapturePoint:
    """What layer ``layer`` of ``stack`` receives; for layer 0, the embedding output."""
    return CapturePoint(f'{stack}.layers.{layer}', 'input', 0)


def layer_output(stack: str, layer: int) -> CapturePoint:
    """The hidden states a layer returns (decoder layers also return a cache)."""
    return CapturePoint(f'{stack}.layers.{layer}', 'output', None)


def attention_module(stack: str, layer: int, kind: str) -> str:
    """Name of an attention module: ParlAI calls encoder self-attention
    ``attention`` and the decoder's ``self_attention`` / ``encoder_attention``."""
    if stack == 'encoder':
        return f'encoder.layers.{layer}.attention'
    name = 'self_attention' if kind == 'self' else 'encoder_attention'
    return f'decoder.layers.{layer}.{name}'


def attention_scores(stack: str, layer: int, kind: str) -> CapturePoint:
    """Pre-softmax scores ``[B*H, Q, K]`` of an attention module."""
    return CapturePoint(attention_module(stack, layer, kind), 'output', 2)


def attention_projection(stack: str, layer: int, kind: str, which: str) -> CapturePoint:
    """Query, key or value states (``which`` in q/k/v) of an attention module."""
    return CapturePoint(f'{attention_module(stack, layer, kind)}.{which}_lin', 'output')


_STACK_PREFIX = {'encoder': 'enc', 'decoder': 'dec'}


def attention_pairs(
    kind: str,
    stack: str,
    student_layer: int,
    teacher_layer: int,
    attention: str,
    heads: int,
    relation_heads: int,
) -> list[StatePair]:
    """The state pairs of one mapped attention module for ``--attn-loss-type kind``.

    ``attention`` is ``'self'`` or ``'cross'``; ``heads`` the (equal) head count of
    head-by-head kinds; ``relation_heads`` MiniLMv2's relation heads.
    """
    cross = attention == 'cross'
    positions = 'cross' if cross else stack

    def scores(name: str) -> StatePair:
        return StatePair(
            attention_scores(stack, student_layer, attention),
            attention_scores(stack, teacher_layer, attention),
            name,
            positions,
        )

    def states(which: str, name: str, **params: int) -> StatePair:
        # queries live on the decoder's tokens; cross keys/values on the encoder's
        where = stack if which == 'q' or not cross else 'encoder'
        return StatePair(
            attention_projection(stack, student_layer, attention, which),
            attention_projection(stack, teacher_layer, attention, which),
            name,
            where,
            params=tuple(params.items()),
        )

    value = states('v', 'value_relation', heads=heads)
    pairs = {
        'score_mse': lambda: [scores('attention_mse')],
        'distribution_kl': lambda: [scores('attention_kl')],
        'value_relation': lambda: [value],
        'minilm': lambda: [scores('attention_kl'), value],
        'minilmv2': lambda: [
            states(which, 'relation_kl', relation_heads=relation_heads)
            for which in 'qkv'
        ],
    }
    return pairs[kind]()


def prediction_term(opt: dict) -> DistillTerm | None:
    """``pred_loss``: the logits compared by ``--pred-loss-type`` (None if weight 0)."""
    coeff = float(opt.get(PREDICTION_TERM.dest) or 0.0)
    if coeff <= 0:
        return None
    kind = opt.get(PREDICTION_KINDS.dest) or PREDICTION_KINDS.default
    params = {
        'jsd': {'beta': _float(opt, 'jsd_beta', 0.5)},
        'skew_kl': {'alpha': _float(opt, 'skew_alpha', 0.1)},
        'skew_reverse_kl': {'alpha': _float(opt, 'skew_alpha', 0.1)},
    }.get(kind, {})
    pair = StatePair(LOGITS, LOGITS, kind, 'decoder', params=tuple(params.items()))
    return DistillTerm('pred_loss', (pair,), coeff, stage=PREDICTION_TERM.stage)


def taid_steps(opt: dict) -> int:
    """Steps of TAID's linear schedule: ``--taid-steps``, else ``--max-train-steps``."""
    for key in ('taid_steps', 'max_train_steps'):
        value = int(opt.get(key) or 0)
        if value > 0:
            return value
    return 0


def _float(opt: dict, key: str, default: float) -> float:
    value = opt.get(key)
    return float(default if value is None else value)


def plan_from_options(
    opt: dict,
    layer_maps: dict[str, list[int]],
    student_width: int,
    teacher_width: int,
    narrow: bool,
    heads: tuple[int, int] = (1, 1),
) -> DistillPlan:
    """Build the plan that the command-line options describe.

    ``layer_maps`` gives, per stack (``'encoder'``, ``'decoder'``), the teacher
    layer of each student layer. Narrow students get one projection
    (student width -> teacher width) per projected tensor; wide ones none.
    ``heads`` is (student, teacher) attention head counts.
    """

    def coeff(key: str) -> float:
        return float(opt.get(key) or 0.0)

    temperature_max = opt.get('distill_temperature_max')
    plan = DistillPlan(
        task_coeff=coeff('task_loss_coeff'),
        temperature=float(opt.get('distill_temperature') or 1.0),
        temperature_max=float(temperature_max) if temperature_max else None,
        temperature_anneal_steps=int(opt.get('temperature_anneal_steps') or 0),
        intermediate_steps=int(opt.get('intermediate_steps') or 0),
        handover_steps=int(opt.get('handover_steps') or 0),
    )
    hidden_kind = opt.get(HIDDEN_KINDS.dest) or HIDDEN_KINDS.default
    attention_kind = opt.get(ATTENTION_KINDS.dest) or ATTENTION_KINDS.default
    relation_heads = int(opt.get('relation_heads') or heads[1])
    terms: list[DistillTerm] = []

    def proj(name: str) -> str | None:
        if not narrow:
            return None
        plan.projections[name] = (student_width, teacher_width)
        return name

    def add(dest: str, metric: str, pairs: list[StatePair], groups: int = 0) -> None:
        if pairs:
            terms.append(
                DistillTerm(
                    metric,
                    tuple(pairs),
                    coeff(dest),
                    groups=groups,
                    stage=COEFFICIENTS[dest].stage,
                )
            )

    # A shared (identical, reused) encoder has nothing to learn from the teacher.
    stacks = (
        ('decoder',) if opt.get('share_teacher_encoder') else ('encoder', 'decoder')
    )
    if coeff('encoder_loss_coeff') > 0 and 'encoder' in stacks:
        point = encoder_output()
        add(
            'encoder_loss_coeff',
            'enc_loss',
            [StatePair(point, point, 'mse', 'encoder', proj('enc_out'))],
        )
    for stack in stacks:
        prefix = _STACK_PREFIX[stack]
        mapping = layer_maps[stack]
        if coeff('embedding_loss_coeff') > 0:
            point = layer_input(stack, 0)
            pair = StatePair(point, point, 'mse', stack, proj(f'{prefix}_emb'))
            add('embedding_loss_coeff', f'{prefix}_emb_loss', [pair])
        if coeff('hidden_loss_coeff') > 0:
            pairs = [
                StatePair(
                    layer_output(stack, i),
                    layer_output(stack, j),
                    hidden_kind,
                    stack,
                    proj(f'{prefix}_hid_{i}'),
                )
                for i, j in enumerate(mapping)
            ]
            add('hidden_loss_coeff', f'{prefix}_hid_loss', pairs)
        if coeff('self_attn_loss_coeff') > 0:
            pairs = [
                pair
                for i, j in enumerate(mapping)
                for pair in attention_pairs(
                    attention_kind, stack, i, j, 'self', heads[0], relation_heads
                )
            ]
            add(
                'self_attn_loss_coeff',
                f'{prefix}_self_attn_loss',
                pairs,
                groups=len(mapping),
            )
    if coeff('enc_dec_attn_loss_coeff') > 0:
        mapping = layer_maps['decoder']
        pairs = [
            pair
            for i, j in enumerate(mapping)
            for pair in attention_pairs(
                attention_kind, 'decoder', i, j, 'cross', heads[0], relation_heads
            )
        ]
        add('enc_dec_attn_loss_coeff', 'enc_dec_attn_loss', pairs, len(mapping))
    pred = prediction_term(opt)
    if pred is not None:
        terms.append(pred)
        if pred.pairs[0].objective == 'taid':
            plan.interpolation = InterpolationSchedule(
                start=_float(opt, 'taid_start', 0.4),
                end=_float(opt, 'taid_end', 1.0),
                steps=taid_steps(opt),
                adaptive=bool(opt.get('taid_adaptive', True)),
            )
    plan.terms = tuple(terms)
    return plan
