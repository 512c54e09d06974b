"""Compute a :class:`DistillPlan`'s terms from captured student and teacher tensors.

A term is ``sum over its pairs of (token mean of the pair's objective) / groups``.
Pairs of one term may count different tokens (MiniLM's attention distributions
count queries, its value relations keys), so a term's value keeps one
:class:`~anti_scaling.losses.TokenMean` per distinct count: the loss uses the
batch's means, and :class:`TermMetric` aggregates each part's sums and counts
over batches, so that a reported metric is the same formula with token means
taken over the whole epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from parlai.core.metrics import AverageMetric, Metric
from torch import nn

from .. import losses
from .capture import CapturePoint
from .objectives import Objective, objective
from .plan import DistillPlan, DistillTerm, StatePair


@dataclass
class StepInputs:
    """What every pair of one step shares: masks, temperature, TAID's ``t``,
    the student's projections."""

    context_mask: torch.Tensor
    label_mask: torch.Tensor
    temperature: float = 1.0
    interpolation: float = 1.0
    projections: nn.ModuleDict | None = None


class TermValue(NamedTuple):
    """A term's value: ``sum(part means) / groups``, one part per distinct count."""

    parts: tuple[losses.TokenMean, ...]
    groups: int

    def mean(self) -> torch.Tensor:
        return sum(part.mean() for part in self.parts) / self.groups

    def metrics(self) -> list[TermMetric]:
        """One metric per example, aggregating exactly over examples and batches."""
        columns = [
            list(zip(p.total.tolist(), p.count.tolist(), strict=True))
            for p in self.parts
        ]
        return [TermMetric(parts, self.groups) for parts in zip(*columns)]


class TermMetric(Metric):
    """``sum_p (sum of totals_p / sum of counts_p) / groups``, summed exactly.

    With one part it is ParlAI's ``AverageMetric`` divided by ``groups``.
    """

    __slots__ = ('_parts', '_groups')

    def __init__(self, parts: tuple[tuple[float, float], ...], groups: int = 1):
        self._parts = tuple((float(t), float(c)) for t, c in parts)
        self._groups = groups

    @property
    def macro_average(self) -> bool:
        return True

    def __add__(self, other: TermMetric | None) -> TermMetric:
        if other is None:
            return self
        parts = tuple(
            (t1 + t2, c1 + c2)
            for (t1, c1), (t2, c2) in zip(self._parts, other._parts, strict=True)
        )
        return TermMetric(parts, self._groups)

    def value(self) -> float:
        return sum(t / c for t, c in self._parts if c > 0) / self._groups


def decoder_positions(label_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Mask over the decoder's ``length`` input positions, from the label mask ``[B, T]``.

    Decoder position ``t`` predicts label token ``t``, so it is real when that label
    token is. Models that seed the decoder with extra leading tokens (BART feeds
    ``EOS BOS``, one position more than the labels) have those seed positions
    counted as real.
    """
    extra = length - label_mask.size(1)
    if extra < 0:
        raise ValueError(
            f'decoder length {length} is shorter than the labels ({label_mask.size(1)})'
        )
    if extra == 0:
        return label_mask
    seed = label_mask.new_ones(label_mask.size(0), extra)
    return torch.cat([seed, label_mask], dim=1)


def _token_mask(positions: str, length: int, inputs: StepInputs) -> torch.Tensor:
    if positions == 'encoder':
        return inputs.context_mask
    return decoder_positions(inputs.label_mask, length)


def _valid_pairs(positions: str, q_len: int, inputs: StepInputs) -> torch.Tensor:
    if positions == 'encoder':
        return losses.self_attention_pairs(inputs.context_mask)
    queries = decoder_positions(inputs.label_mask, q_len)
    if positions == 'decoder':
        return losses.causal_attention_pairs(queries)
    return losses.cross_attention_pairs(queries, inputs.context_mask)


def objective_params(pair: StatePair, inputs: StepInputs) -> tuple[Objective, dict]:
    """The pair's objective and its keyword parameters at this step (the pair's
    own, plus the step's temperature and TAID's ``t`` where the objective takes them).
    """
    spec = objective(pair.objective)
    params = dict(pair.params)
    if 'temperature' in spec.params:
        params['temperature'] = inputs.temperature
    if 'interpolation' in spec.params:
        params['interpolation'] = inputs.interpolation
    return spec, params


def evaluate_pair(
    pair: StatePair, student: Any, teacher: Any, inputs: StepInputs
) -> losses.TokenMean:
    """One pair's objective, on its positions' tokens or valid pairs.

    For the logits, ``teacher`` may be a top-k cache lookup (an object with
    ``ids``, ``logprobs``, ``rest`` and ``found``): the forward KL is then taken
    against the cached distribution.
    """
    spec, params = objective_params(pair, inputs)
    if spec.compares == 'logits':
        if hasattr(teacher, 'logprobs'):
            found = inputs.label_mask & teacher.found[:, None]
            return losses.topk_prediction_kl(
                student,
                teacher.ids,
                teacher.logprobs,
                teacher.rest,
                found,
                inputs.temperature,
            )
        return spec.function(student, teacher, inputs.label_mask, **params)
    projections = inputs.projections
    projection = projections[pair.projection] if pair.projection else None
    if projection is not None and pair.project_teacher:
        teacher, projection = projection(teacher), None
    if spec.compares == 'states':
        mask = _token_mask(pair.positions, student.size(1), inputs)
        return spec.function(student, teacher, mask, projection)
    if projection is not None:
        student = projection(student)
    valid = _valid_pairs(pair.positions, student.size(1), inputs)
    return spec.function(student, teacher, valid, **params)


def _state(states: dict[CapturePoint, Any], point: CapturePoint, who: str) -> Any:
    try:
        return states[point]
    except KeyError:
        raise RuntimeError(
            f'{who} module {point.module!r} did not run during the forward pass'
        ) from None


def evaluate_term(
    term: DistillTerm,
    student_states: dict[CapturePoint, Any],
    teacher_states: dict[CapturePoint, Any],
    inputs: StepInputs,
) -> TermValue:
    """The term's value; pairs that count the same tokens share one part."""
    parts: list[losses.TokenMean] = []
    for pair in term.pairs:
        value = evaluate_pair(
            pair,
            _state(student_states, pair.student, 'student'),
            _state(teacher_states, pair.teacher, 'teacher'),
            inputs,
        )
        for i, part in enumerate(parts):
            if torch.equal(part.count, value.count):
                parts[i] = losses.TokenMean(part.total + value.total, part.count)
                break
        else:
            parts.append(value)
    return TermValue(tuple(parts), term.groups)


def evaluate_plan(
    plan: DistillPlan,
    student_states: dict[CapturePoint, Any],
    teacher_states: dict[CapturePoint, Any],
    inputs: StepInputs,
    terms: tuple[DistillTerm, ...] | None = None,
) -> dict[str, TermValue]:
    """Every term of the plan (or only ``terms``), by metric name.

    Each teacher tensor leaves ``teacher_states`` as soon as the last term that
    reads it is computed, so that it is freed then (the loss terms keep what
    their backward pass needs, never a teacher target itself) instead of living
    until the step's end.
    """
    terms = plan.terms if terms is None else terms
    last_use = {pair.teacher: i for i, term in enumerate(terms) for pair in term.pairs}
    values = {}
    for i, term in enumerate(terms):
        values[term.metric] = evaluate_term(
            term, student_states, teacher_states, inputs
        )
        for point in [p for p, last in last_use.items() if last == i]:
            teacher_states.pop(point, None)
    return values


def token_mean_metrics(value: losses.TokenMean) -> list[AverageMetric]:
    """One ``AverageMetric`` per example: its token sum over its token count."""
    return AverageMetric.many(value.total.tolist(), value.count.tolist())


def step_metrics(
    student_tokens: torch.Tensor,
    teacher_tokens: torch.Tensor | None,
    cached: Any,
    inputs: StepInputs,
    total: torch.Tensor,
) -> dict[str, list[Metric]]:
    """``teacher_acc`` (from the live teacher's argmax, or the cache's top token),
    ``cache_hits`` and ``distill_loss`` (the batch's weighted total, per example)."""
    label_mask = inputs.label_mask
    out: dict[str, list[Metric]] = {}
    if teacher_tokens is not None:
        out['teacher_acc'] = token_mean_metrics(
            losses.token_agreement(student_tokens, teacher_tokens, label_mask)
        )
    elif cached is not None:
        found = label_mask & cached.found[:, None]
        out['teacher_acc'] = token_mean_metrics(
            losses.cached_agreement(student_tokens, cached.ids, found)
        )
        out['cache_hits'] = AverageMetric.many(cached.found.float().tolist())
    out['distill_loss'] = AverageMetric.many([total.item()] * label_mask.size(0))
    return out
