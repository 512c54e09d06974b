"""Evaluate a :class:`DistillPlan` on the tensors captured from student and teacher."""

from __future__ import annotations

import torch
from torch import nn

from .. import losses
from .capture import CapturePoint
from .plan import DistillPlan, DistillTerm, StatePair

_STATE_LOSSES = {
    'mse': losses.masked_mse,
    'cosine': losses.cosine_embedding_loss,
    'pkd': losses.normalized_state_mse,
}
_SCORE_LOSSES = {
    'attention_mse': losses.attention_score_mse,
    'attention_kl': losses.attention_distribution_kl,
}


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


def _state(states: dict[CapturePoint, torch.Tensor], point: CapturePoint, who: str):
    try:
        return states[point]
    except KeyError:
        raise RuntimeError(
            f'{who} module {point.module!r} did not run during the forward pass'
        ) from None


def _token_mask(positions: str, length: int, context_mask, label_mask) -> torch.Tensor:
    if positions == 'encoder':
        return context_mask
    return decoder_positions(label_mask, length)


def _valid_pairs(positions: str, q_len: int, context_mask, label_mask) -> torch.Tensor:
    if positions == 'encoder':
        return losses.self_attention_pairs(context_mask)
    queries = decoder_positions(label_mask, q_len)
    if positions == 'decoder':
        return losses.causal_attention_pairs(queries)
    return losses.cross_attention_pairs(queries, context_mask)


def evaluate_pair(
    pair: StatePair,
    student: torch.Tensor,
    teacher: torch.Tensor,
    context_mask: torch.Tensor,
    label_mask: torch.Tensor,
    projections: nn.ModuleDict | None = None,
) -> losses.TokenMean:
    """One pair's objective, on its positions' tokens or valid pairs."""
    projection = projections[pair.projection] if pair.projection else None
    if projection is not None and pair.project_teacher:
        teacher, projection = projection(teacher), None
    if pair.objective in _STATE_LOSSES:
        mask = _token_mask(pair.positions, student.size(1), context_mask, label_mask)
        return _STATE_LOSSES[pair.objective](student, teacher, mask, projection)
    if projection is not None:
        student = projection(student)
    valid = _valid_pairs(pair.positions, student.size(1), context_mask, label_mask)
    if pair.objective in _SCORE_LOSSES:
        return _SCORE_LOSSES[pair.objective](student, teacher, valid)
    if pair.objective == 'value_relation':
        return losses.value_relation_kl(student, teacher, valid, pair.heads)
    return losses.relation_kl(student, teacher, valid, pair.relation_heads)


def evaluate_term(
    term: DistillTerm,
    student_states: dict[CapturePoint, torch.Tensor],
    teacher_states: dict[CapturePoint, torch.Tensor],
    context_mask: torch.Tensor,
    label_mask: torch.Tensor,
    projections: nn.ModuleDict | None = None,
) -> losses.TokenMean:
    """The term's value: the sum of its pairs' objectives over its ``groups`` (layers).

    Pairs of different objectives may count different tokens; each contributes
    its own token mean, spread over the batch's examples in proportion to their
    token counts, so the batch value is exact.
    """
    values = [
        evaluate_pair(
            pair,
            _state(student_states, pair.student, 'student'),
            _state(teacher_states, pair.teacher, 'teacher'),
            context_mask,
            label_mask,
            projections,
        )
        for pair in term.pairs
    ]
    counts = values[0].count
    if all(torch.equal(v.count, counts) for v in values):
        total = torch.stack([v.total for v in values]).sum(0) / term.groups
        return losses.TokenMean(total, counts)
    # different denominators: spread the sum of batch means over the examples
    mean = sum(v.mean() for v in values) / term.groups
    return losses.TokenMean(mean * counts, counts)


def evaluate_plan(
    plan: DistillPlan,
    student_states: dict[CapturePoint, torch.Tensor],
    teacher_states: dict[CapturePoint, torch.Tensor],
    context_mask: torch.Tensor,
    label_mask: torch.Tensor,
    projections: nn.ModuleDict | None = None,
) -> dict[str, losses.TokenMean]:
    """Every intermediate term of the plan, by metric name."""
    return {
        term.metric: evaluate_term(
            term,
            student_states,
            teacher_states,
            context_mask,
            label_mask,
            projections,
        )
        for term in plan.terms
    }
