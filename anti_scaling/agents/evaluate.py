"""Evaluate a :class:`DistillPlan` on the tensors captured from student and teacher."""

from __future__ import annotations

import torch
from torch import nn

from .. import losses
from .capture import CapturePoint
from .plan import DistillPlan, DistillTerm


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


def evaluate_term(
    term: DistillTerm,
    student_states: dict[CapturePoint, torch.Tensor],
    teacher_states: dict[CapturePoint, torch.Tensor],
    context_mask: torch.Tensor,
    label_mask: torch.Tensor,
    projections: nn.ModuleDict | None = None,
) -> losses.TokenMean:
    """The term's value: its objective averaged over its state pairs."""
    values = []
    for pair in term.pairs:
        s = _state(student_states, pair.student, 'student')
        t = _state(teacher_states, pair.teacher, 'teacher')
        if term.objective == 'mse':
            if term.positions == 'encoder':
                mask = context_mask
            else:
                mask = decoder_positions(label_mask, s.size(1))
            projection = projections[pair.projection] if pair.projection else None
            values.append(losses.masked_mse(s, t, mask, projection))
        else:
            q_len = s.size(1)
            if term.positions == 'encoder':
                valid = losses.self_attention_pairs(context_mask)
            elif term.positions == 'decoder':
                valid = losses.causal_attention_pairs(
                    decoder_positions(label_mask, q_len)
                )
            else:
                valid = losses.cross_attention_pairs(
                    decoder_positions(label_mask, q_len), context_mask
                )
            values.append(losses.attention_score_mse(s, t, valid))
    return values[0] if len(values) == 1 else losses.average_terms(values)


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
