"""Check a plan against the real models before training: module names and shapes.

One dry forward pass of a two-example batch through teacher and student
captures every tensor the plan names. Unknown modules, tensors that differ in
shape without a projection, and head counts that an objective cannot compare
are refused here, and ``projection: auto`` pairs get their projection (or none).
"""

from __future__ import annotations

import dataclasses
import difflib

import torch
from torch import nn

from ..errors import DistillationError
from .capture import CapturePoint, capture_states
from .plan import RELATION_OBJECTIVES, SCORE_OBJECTIVES, DistillPlan, StatePair


def check_modules(model: nn.Module, points: list[CapturePoint], who: str) -> None:
    """Every named module exists; otherwise name the closest real ones."""
    names = [name for name, _ in model.named_modules() if name]
    known = set(names)
    for point in points:
        if point.module not in known:
            close = difflib.get_close_matches(point.module, names, n=3, cutoff=0.5)
            hint = f'; closest: {", ".join(close)}' if close else ''
            raise DistillationError(f'the {who} has no module {point.module!r}{hint}')


def dry_run_batch(null: int, start: int, end: int, other: int) -> tuple:
    """Two examples (one padded) of context and label ids for a shape check."""
    text = torch.tensor(
        [[other, other, other, other, end], [other, other, end, null, null]]
    )
    label = torch.tensor([[other, other, other, end], [other, end, null, null]])
    return text, label


@torch.no_grad()
def capture_once(
    model: nn.Module,
    points: list[CapturePoint],
    text: torch.Tensor,
    label: torch.Tensor,
) -> dict[CapturePoint, torch.Tensor]:
    """Run ``model`` once in eval mode (inputs moved to its device); the captured tensors."""
    device = next(model.parameters()).device  # a GPU teacher beside a CPU student
    was_training = model.training
    model.eval()
    try:
        with capture_states(model, points) as states:
            model(text.to(device), ys=label.to(device))
        return dict(states)
    finally:
        model.train(was_training)


def _projection_mode(pair: StatePair) -> tuple[str | None, str | None]:
    """``(config index, mode)`` for config pairs (``'cfg3:auto'``), else ``(None, None)``."""
    if pair.projection and ':' in pair.projection:
        name, mode = pair.projection.split(':', 1)
        return name, mode
    return None, None


def resolve_plan(
    plan: DistillPlan,
    student: dict[CapturePoint, torch.Tensor],
    teacher: dict[CapturePoint, torch.Tensor],
) -> DistillPlan:
    """Validate every pair on captured tensors and settle config projections."""
    projections = dict(plan.projections)
    terms = []
    for term in plan.terms:
        pairs = []
        for pair in term.pairs:
            s, t = student[pair.student], teacher[pair.teacher]
            where = (
                f'{term.metric}: student {pair.student.module} {tuple(s.shape)} vs '
                f'teacher {pair.teacher.module} {tuple(t.shape)}'
            )
            pair = _resolve_pair(pair, s, t, where, projections)
            pairs.append(pair)
        terms.append(dataclasses.replace(term, pairs=tuple(pairs)))
    return dataclasses.replace(plan, terms=tuple(terms), projections=projections)


def _resolve_pair(
    pair: StatePair,
    s: torch.Tensor,
    t: torch.Tensor,
    where: str,
    projections: dict[str, tuple[int, int]],
) -> StatePair:
    if not (torch.is_tensor(s) and torch.is_tensor(t)):
        raise DistillationError(
            f'{where}: the captured value is not a tensor (set index)'
        )
    if s.shape[:-1] != t.shape[:-1] and pair.objective not in RELATION_OBJECTIVES:
        raise DistillationError(
            f'{where}: the tensors cover different positions or heads; for attention '
            'with different head counts use loss relation_kl (MiniLMv2)'
        )
    if pair.objective in SCORE_OBJECTIVES:
        if s.shape != t.shape:
            raise DistillationError(
                f'{where}: attention scores must have the same shape (equal head '
                'counts); use relation_kl for different head counts'
            )
        return pair
    d_s, d_t = s.size(-1), t.size(-1)
    name, mode = _projection_mode(pair)
    if name is not None:
        if mode == 'none' or (mode == 'auto' and d_s == d_t):
            pair = dataclasses.replace(pair, projection=None, project_teacher=False)
        elif mode == 'teacher':
            projections[name] = (d_t, d_s)
            pair = dataclasses.replace(pair, projection=name, project_teacher=True)
        else:
            projections[name] = (d_s, d_t)
            pair = dataclasses.replace(pair, projection=name, project_teacher=False)
    elif pair.projection:
        expected = projections[pair.projection]
        wanted = (d_t, d_s) if pair.project_teacher else (d_s, d_t)
        if tuple(expected) != wanted:
            raise DistillationError(
                f'{where}: projection {pair.projection} is {expected}'
            )
    if pair.objective in RELATION_OBJECTIVES:
        heads = pair.relation_heads if pair.objective == 'relation_kl' else pair.heads
        for width, who in ((d_s, 'student'), (d_t, 'teacher')):
            if not heads or width % heads:
                raise DistillationError(
                    f'{where}: the {who} width {width} is not divisible by '
                    f'{heads} (relation) heads'
                )
        return pair
    out_s = d_t if pair.projection and not pair.project_teacher else d_s
    out_t = d_s if pair.projection and pair.project_teacher else d_t
    if out_s != out_t:
        raise DistillationError(
            f'{where}: widths differ ({d_s} vs {d_t}) and there is no projection; '
            "set projection: auto (or student/teacher) in the config"
        )
    return pair
