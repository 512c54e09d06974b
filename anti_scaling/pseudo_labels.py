"""Which teacher replies become pseudo-labels: the score and F1 filters, episode cuts.

Pure functions over lists, used by ``python -m
anti_scaling.scripts.generate_pseudo_labels``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import DistillationError


def select_replies(
    scores: list[float],
    min_score: float | None = None,
    drop_worst_fraction: float = 0.0,
) -> list[bool]:
    """Which replies to keep, in order.

    ``min_score``: keep ``score >= min_score`` (NaN scores are dropped).
    ``drop_worst_fraction`` ``F`` in ``[0, 1)``: drop exactly ``floor(F * N)``
    replies, the lowest scores first (NaN lowest; among equal scores the later
    example is dropped first). At most one of the two may be set.
    """
    if min_score is not None and drop_worst_fraction:
        raise DistillationError(
            'give either --min-teacher-score or --drop-worst-fraction, not both'
        )
    if not 0 <= drop_worst_fraction < 1:
        raise DistillationError(
            f'--drop-worst-fraction is {drop_worst_fraction}: it must be in [0, 1)'
        )
    n = len(scores)
    if min_score is not None:
        return [not math.isnan(s) and s >= min_score for s in scores]
    n_drop = math.floor(drop_worst_fraction * n)
    order = sorted(
        range(n),
        key=lambda i: (-math.inf if math.isnan(scores[i]) else scores[i], -i),
    )
    dropped = set(order[:n_drop])
    return [i not in dropped for i in range(n)]


def reference_f1(reply: str, gold: list[str]) -> float:
    """ParlAI's F1 of ``reply`` against the gold replies (their maximum); NaN
    without any. Tokens: ParlAI's ``normalize_answer`` (lower case, no
    punctuation or articles), then ``F1 = 2 P R / (P + R)`` over common tokens."""
    if not gold:
        return math.nan
    from parlai.core.metrics import F1Metric

    return float(F1Metric.compute(reply, list(gold)).value())


def select_by_f1(f1s: list[float], min_f1: float | None) -> list[bool]:
    """Which replies the F1 filter keeps: ``f1 >= min_f1`` (NaN dropped)."""
    if min_f1 is None:
        return [True] * len(f1s)
    if not 0 <= min_f1 <= 1:
        raise DistillationError(f'--min-reference-f1 is {min_f1}: it must be in [0, 1]')
    return [not math.isnan(f) and f >= min_f1 for f in f1s]


def cut_episodes(
    episodes: list[list[Any]], keep: list[bool]
) -> tuple[list[list[Any]], int]:
    """Cut each episode at its first dropped example; ``keep`` is per example, in
    episode order. Returns the kept episode prefixes (empty ones left out) and
    the number of examples removed."""
    out, removed, i = [], 0, 0
    for episode in episodes:
        flags = keep[i : i + len(episode)]
        i += len(episode)
        n = flags.index(False) if False in flags else len(flags)
        removed += len(episode) - n
        if n:
            out.append(episode[:n])
    return out, removed
