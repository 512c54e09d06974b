"""What a distillation run computes: its terms, their weights, what to capture.

A :class:`DistillPlan` is built once per agent, from the command-line
coefficients (:func:`plan_from_options`) or from a ``--distill-config`` file
(:mod:`.config`): both describe the same structure and one code path
(:mod:`.evaluate`) computes it. Each term is a reported metric; it averages,
over its layers, the sum of its state pairs' objectives. Terms with weight 0
are not in the plan, so nothing is captured or computed for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .capture import CapturePoint

# Objectives on hidden states ([B, T, D], masked by tokens); on attention scores
# ([B*H, Q, K], masked by valid pairs); on relations between states ([B, T, D],
# masked by valid pairs).
STATE_OBJECTIVES = ('mse', 'cosine', 'pkd')
SCORE_OBJECTIVES = ('attention_mse', 'attention_kl')
RELATION_OBJECTIVES = ('value_relation', 'relation_kl')
OBJECTIVES = STATE_OBJECTIVES + SCORE_OBJECTIVES + RELATION_OBJECTIVES
# Which tokens or pairs a pair is measured on: hidden states of 'encoder' or
# 'decoder' tokens; scores/relations of 'encoder' self-attention, 'decoder'
# (causal) self-attention or 'cross' (decoder queries, encoder keys).
POSITIONS = ('encoder', 'decoder', 'cross')
PREDICTION_KINDS = ('kl', 'reverse_kl', 'jsd', 'logit_mse', 'soft_ce')
HIDDEN_KINDS = STATE_OBJECTIVES
ATTENTION_KINDS = (
    'score_mse',
    'distribution_kl',
    'value_relation',
    'minilm',
    'minilmv2',
)
# Attention objectives that compare heads one to one (equal head counts needed).
HEADWISE_ATTENTION_KINDS = ('score_mse', 'distribution_kl', 'value_relation', 'minilm')


@dataclass(frozen=True)
class StatePair:
    """A student tensor, the teacher tensor it learns, and how they are compared.

    ``projection`` names a trained linear map (in the student model's
    ``distill_projections``) applied to the student's tensor, or to the
    teacher's when ``project_teacher``. ``heads`` (value relations) and
    ``relation_heads`` (MiniLMv2 relations) parametrise relation objectives.
    """

    student: CapturePoint
    teacher: CapturePoint
    objective: str = 'mse'
    positions: str = 'encoder'
    projection: str | None = None
    project_teacher: bool = False
    heads: int | None = None
    relation_heads: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f'unknown objective {self.objective!r} (known: {", ".join(OBJECTIVES)})'
            )
        if self.positions not in POSITIONS:
            raise ValueError(f'unknown positions {self.positions!r}')


@dataclass(frozen=True)
class DistillTerm:
    """One reported metric: ``sum(pair objectives) / groups``, weighted by ``coeff``.

    ``groups`` is the number of layers the pairs cover (one pair per layer for a
    single objective; several per layer for composite ones such as MiniLMv2's
    query, key and value relations, which are summed). ``schedule`` makes the
    weight a piecewise-linear function of the training step: ``((step, weight),
    ...)``, constant before the first and after the last point.
    """

    metric: str
    pairs: tuple[StatePair, ...]
    coeff: float
    groups: int = 0
    schedule: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError(f'term {self.metric} has no state pairs')
        if self.groups <= 0:
            object.__setattr__(self, 'groups', len(self.pairs))

    def weight(self, step: int) -> float:
        return scheduled(self.schedule, step, self.coeff)


def scheduled(
    schedule: tuple[tuple[int, float], ...] | None, step: int, default: float
) -> float:
    """Piecewise-linear interpolation of ``schedule`` at ``step`` (``default`` if none)."""
    if not schedule:
        return default
    points = sorted(schedule)
    if step <= points[0][0]:
        return points[0][1]
    for (s0, w0), (s1, w1) in zip(points, points[1:]):
        if step <= s1:
            return w0 + (w1 - w0) * (step - s0) / max(1, s1 - s0)
    return points[-1][1]


@dataclass
class DistillPlan:
    """Everything the distillation loss needs, decided before training starts.

    ``total = task_weight * loss + pred_weight * pred_loss + sum(term weights * term)``,
    weights taken at the current training step. ``projections`` maps a
    projection name to ``(in_width, out_width)``; ``intermediate_steps`` (two-step
    distillation) keeps only intermediate terms before that step and only the
    task and prediction terms from it on (0: off).
    """

    task_coeff: float = 1.0
    pred_coeff: float = 0.0
    pred_kind: str = 'kl'
    jsd_beta: float = 0.5
    temperature: float = 1.0
    temperature_max: float | None = None
    temperature_anneal_steps: int = 0
    intermediate_steps: int = 0
    task_schedule: tuple[tuple[int, float], ...] | None = None
    pred_schedule: tuple[tuple[int, float], ...] | None = None
    terms: tuple[DistillTerm, ...] = ()
    projections: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def uses_teacher(self) -> bool:
        return self.uses_prediction or bool(self.terms)

    @property
    def needs_teacher_decoder(self) -> bool:
        """Whether the teacher must run its decoder (else its encoder is enough)."""
        return self.uses_prediction or any(
            not pair.teacher.module.startswith('encoder') or pair.positions != 'encoder'
            for term in self.terms
            for pair in term.pairs
        )

    @property
    def uses_prediction(self) -> bool:
        return self.pred_coeff > 0 or bool(self.pred_schedule)

    @property
    def student_points(self) -> list[CapturePoint]:
        return list(dict.fromkeys(p.student for t in self.terms for p in t.pairs))

    @property
    def teacher_points(self) -> list[CapturePoint]:
        return list(dict.fromkeys(p.teacher for t in self.terms for p in t.pairs))

    def weights(self, step: int) -> dict[str, float]:
        """Weight of every term (and of ``loss``/``pred_loss``) at training ``step``."""
        intermediate_phase = (
            self.intermediate_steps > 0 and step < self.intermediate_steps
        )
        after = self.intermediate_steps > 0 and not intermediate_phase
        out = {
            'loss': (
                0.0
                if intermediate_phase
                else scheduled(self.task_schedule, step, self.task_coeff)
            ),
            'pred_loss': (
                0.0
                if intermediate_phase
                else scheduled(self.pred_schedule, step, self.pred_coeff)
            ),
        }
        for term in self.terms:
            out[term.metric] = 0.0 if after else term.weight(step)
        return out

    def temperature_at(self, step: int) -> float:
        """Annealing-KD: linear from ``temperature_max`` down to ``temperature``."""
        if not self.temperature_max or self.temperature_anneal_steps <= 0:
            return self.temperature
        progress = min(1.0, step / self.temperature_anneal_steps)
        return (
            self.temperature_max + (self.temperature - self.temperature_max) * progress
        )


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


def _attention_pairs(
    kind: str,
    stack: str,
    student_layer: int,
    teacher_layer: int,
    attention: str,
    heads: tuple[int, int],
    relation_heads: int,
) -> list[StatePair]:
    """The state pairs of one mapped attention module for attention objective ``kind``."""
    cross = attention == 'cross'
    positions = 'cross' if cross else stack

    def scores(objective):
        return StatePair(
            attention_scores(stack, student_layer, attention),
            attention_scores(stack, teacher_layer, attention),
            objective,
            positions,
        )

    def states(which, objective, **params):
        # queries live on the decoder's tokens; cross keys/values on the encoder's
        where = stack if which == 'q' or not cross else 'encoder'
        return StatePair(
            attention_projection(stack, student_layer, attention, which),
            attention_projection(stack, teacher_layer, attention, which),
            objective,
            where,
            **params,
        )

    if kind == 'score_mse':
        return [scores('attention_mse')]
    if kind == 'distribution_kl':
        return [scores('attention_kl')]
    value = states('v', 'value_relation', heads=heads[0])
    if kind == 'value_relation':
        return [value]
    if kind == 'minilm':
        return [scores('attention_kl'), value]
    return [
        states(which, 'relation_kl', relation_heads=relation_heads) for which in 'qkv'
    ]


def plan_from_options(
    opt: dict,
    layer_maps: dict[str, list[int]],
    student_width: int,
    teacher_width: int,
    narrow: bool,
    heads: tuple[int, int] = (1, 1),
) -> DistillPlan:
    """Build the plan that the command-line options describe (DESIGN.md table).

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
        pred_coeff=coeff('pred_loss_coeff'),
        pred_kind=opt.get('pred_loss_type') or 'kl',
        jsd_beta=float(
            opt.get('jsd_beta', 0.5) if opt.get('jsd_beta') is not None else 0.5
        ),
        temperature=float(opt.get('distill_temperature') or 1.0),
        temperature_max=float(temperature_max) if temperature_max else None,
        temperature_anneal_steps=int(opt.get('temperature_anneal_steps') or 0),
        intermediate_steps=int(opt.get('intermediate_steps') or 0),
    )
    hidden_kind = opt.get('hidden_loss_type') or 'mse'
    attention_kind = opt.get('attn_loss_type') or 'score_mse'
    relation_heads = int(opt.get('relation_heads') or heads[1])
    terms: list[DistillTerm] = []

    def proj(name: str) -> str | None:
        if not narrow:
            return None
        plan.projections[name] = (student_width, teacher_width)
        return name

    # A shared (identical, reused) encoder has nothing to learn from the teacher.
    stacks = (
        ('decoder',) if opt.get('share_teacher_encoder') else ('encoder', 'decoder')
    )
    if coeff('encoder_loss_coeff') > 0 and 'encoder' in stacks:
        point = encoder_output()
        pair = StatePair(point, point, 'mse', 'encoder', proj('enc_out'))
        terms.append(DistillTerm('enc_loss', (pair,), coeff('encoder_loss_coeff')))
    for stack in stacks:
        prefix = _STACK_PREFIX[stack]
        mapping = layer_maps[stack]
        if coeff('embedding_loss_coeff') > 0:
            point = layer_input(stack, 0)
            pair = StatePair(point, point, 'mse', stack, proj(f'{prefix}_emb'))
            terms.append(
                DistillTerm(
                    f'{prefix}_emb_loss', (pair,), coeff('embedding_loss_coeff')
                )
            )
        if coeff('hidden_loss_coeff') > 0 and mapping:
            pairs = tuple(
                StatePair(
                    layer_output(stack, i),
                    layer_output(stack, j),
                    hidden_kind,
                    stack,
                    proj(f'{prefix}_hid_{i}'),
                )
                for i, j in enumerate(mapping)
            )
            terms.append(
                DistillTerm(f'{prefix}_hid_loss', pairs, coeff('hidden_loss_coeff'))
            )
        if coeff('self_attn_loss_coeff') > 0 and mapping:
            pairs = tuple(
                pair
                for i, j in enumerate(mapping)
                for pair in _attention_pairs(
                    attention_kind, stack, i, j, 'self', heads, relation_heads
                )
            )
            terms.append(
                DistillTerm(
                    f'{prefix}_self_attn_loss',
                    pairs,
                    coeff('self_attn_loss_coeff'),
                    groups=len(mapping),
                )
            )
    if coeff('enc_dec_attn_loss_coeff') > 0 and layer_maps['decoder']:
        mapping = layer_maps['decoder']
        pairs = tuple(
            pair
            for i, j in enumerate(mapping)
            for pair in _attention_pairs(
                attention_kind, 'decoder', i, j, 'cross', heads, relation_heads
            )
        )
        terms.append(
            DistillTerm(
                'enc_dec_attn_loss',
                pairs,
                coeff('enc_dec_attn_loss_coeff'),
                groups=len(mapping),
            )
        )
    plan.terms = tuple(terms)
    return plan
