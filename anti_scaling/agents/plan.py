"""What a distillation run computes: its terms, their weights, what to capture.

A :class:`DistillPlan` is built once per agent from the command-line
coefficients (:func:`plan_from_options`). It names every tensor to capture in
the student and in the teacher, the projections a narrow student needs, and
whether the teacher has to run at all. Terms with coefficient 0 are not in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .capture import CapturePoint

# Which positions a term is measured on (see anti_scaling.agents.evaluate):
# hidden-state terms on 'encoder' or 'decoder' tokens; attention terms on the
# valid pairs of 'encoder' self-attention, 'decoder' (causal) self-attention or
# 'cross' (encoder-decoder) attention.
POSITIONS = ('encoder', 'decoder', 'cross')
OBJECTIVES = ('mse', 'attention_mse')


@dataclass(frozen=True)
class StatePair:
    """A student tensor, the teacher tensor it learns, and its projection's name."""

    student: CapturePoint
    teacher: CapturePoint
    projection: str | None = None


@dataclass(frozen=True)
class DistillTerm:
    """One reported metric: the mean of ``objective`` over its ``pairs``."""

    metric: str
    objective: str
    positions: str
    pairs: tuple[StatePair, ...]
    coeff: float

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f'unknown objective {self.objective!r}')
        if self.positions not in POSITIONS:
            raise ValueError(f'unknown positions {self.positions!r}')
        if not self.pairs:
            raise ValueError(f'term {self.metric} has no state pairs')


@dataclass
class DistillPlan:
    """Everything the distillation loss needs, decided before training starts.

    ``total = task_coeff * loss + pred_coeff * pred_loss + sum(term.coeff * term)``.
    ``projections`` maps a projection name to ``(student_width, teacher_width)``.
    """

    task_coeff: float = 1.0
    pred_coeff: float = 0.0
    temperature: float = 1.0
    terms: tuple[DistillTerm, ...] = ()
    projections: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def uses_teacher(self) -> bool:
        return self.pred_coeff > 0 or bool(self.terms)

    @property
    def needs_teacher_decoder(self) -> bool:
        """Whether the teacher must run its decoder (else its encoder is enough)."""
        return self.pred_coeff > 0 or any(
            t.positions in ('decoder', 'cross') for t in self.terms
        )

    @property
    def student_points(self) -> list[CapturePoint]:
        return list(dict.fromkeys(p.student for t in self.terms for p in t.pairs))

    @property
    def teacher_points(self) -> list[CapturePoint]:
        return list(dict.fromkeys(p.teacher for t in self.terms for p in t.pairs))


def encoder_output() -> CapturePoint:
    """The encoder's output states (``TransformerEncoder`` returns ``(states, mask)``)."""
    return CapturePoint('encoder', 'output', 0)


def layer_input(stack: str, layer: int) -> CapturePoint:
    """What layer ``layer`` of ``stack`` receives; for layer 0, the embedding output."""
    return CapturePoint(f'{stack}.layers.{layer}', 'input', 0)


def layer_output(stack: str, layer: int) -> CapturePoint:
    """The hidden states a layer returns (decoder layers also return a cache)."""
    return CapturePoint(f'{stack}.layers.{layer}', 'output', None)


def attention_scores(stack: str, layer: int, kind: str) -> CapturePoint:
    """Pre-softmax scores ``[B*H, Q, K]`` of an attention module.

    ``kind`` is ``'self'`` or ``'cross'``; ParlAI names encoder self-attention
    ``attention`` and the decoder's ``self_attention`` / ``encoder_attention``.
    """
    if stack == 'encoder':
        name = 'attention'
    else:
        name = 'self_attention' if kind == 'self' else 'encoder_attention'
    return CapturePoint(f'{stack}.layers.{layer}.{name}', 'output', 2)


_STACK_PREFIX = {'encoder': 'enc', 'decoder': 'dec'}


def plan_from_options(
    opt: dict,
    layer_maps: dict[str, list[int]],
    student_width: int,
    teacher_width: int,
    narrow: bool,
) -> DistillPlan:
    """Build the plan that the command-line coefficients describe (DESIGN.md table).

    ``layer_maps`` gives, per stack (``'encoder'``, ``'decoder'``), the teacher
    layer of each student layer. Narrow students get one projection
    (student width -> teacher width) per projected tensor; wide ones none.
    """

    def coeff(key: str) -> float:
        return float(opt.get(key) or 0.0)

    plan = DistillPlan(
        task_coeff=coeff('task_loss_coeff'),
        pred_coeff=coeff('pred_loss_coeff'),
        temperature=float(opt.get('distill_temperature') or 1.0),
    )
    terms: list[DistillTerm] = []

    def proj(name: str) -> str | None:
        if not narrow:
            return None
        plan.projections[name] = (student_width, teacher_width)
        return name

    if coeff('encoder_loss_coeff') > 0:
        point = encoder_output()
        terms.append(
            DistillTerm(
                'enc_loss',
                'mse',
                'encoder',
                (StatePair(point, point, proj('enc_out')),),
                coeff('encoder_loss_coeff'),
            )
        )
    for stack in ('encoder', 'decoder'):
        prefix = _STACK_PREFIX[stack]
        mapping = layer_maps[stack]
        if coeff('embedding_loss_coeff') > 0:
            pair = StatePair(
                layer_input(stack, 0), layer_input(stack, 0), proj(f'{prefix}_emb')
            )
            terms.append(
                DistillTerm(
                    f'{prefix}_emb_loss',
                    'mse',
                    stack,
                    (pair,),
                    coeff('embedding_loss_coeff'),
                )
            )
        if coeff('hidden_loss_coeff') > 0 and mapping:
            pairs = tuple(
                StatePair(
                    layer_output(stack, i),
                    layer_output(stack, j),
                    proj(f'{prefix}_hid_{i}'),
                )
                for i, j in enumerate(mapping)
            )
            terms.append(
                DistillTerm(
                    f'{prefix}_hid_loss',
                    'mse',
                    stack,
                    pairs,
                    coeff('hidden_loss_coeff'),
                )
            )
        if coeff('self_attn_loss_coeff') > 0 and mapping:
            pairs = tuple(
                StatePair(
                    attention_scores(stack, i, 'self'),
                    attention_scores(stack, j, 'self'),
                )
                for i, j in enumerate(mapping)
            )
            terms.append(
                DistillTerm(
                    f'{prefix}_self_attn_loss',
                    'attention_mse',
                    stack,
                    pairs,
                    coeff('self_attn_loss_coeff'),
                )
            )
    if coeff('enc_dec_attn_loss_coeff') > 0 and layer_maps['decoder']:
        pairs = tuple(
            StatePair(
                attention_scores('decoder', i, 'cross'),
                attention_scores('decoder', j, 'cross'),
            )
            for i, j in enumerate(layer_maps['decoder'])
        )
        terms.append(
            DistillTerm(
                'enc_dec_attn_loss',
                'attention_mse',
                'cross',
                pairs,
                coeff('enc_dec_attn_loss_coeff'),
            )
        )
    plan.terms = tuple(terms)
    return plan
