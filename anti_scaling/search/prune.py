"""Pruning hopeless trials of a two-objective search, and the cost proxy it uses.

optuna 5 does not support ``Trial.report`` and ``Trial.should_prune`` in
studies with several objectives (both raise ``NotImplementedError``), and its
pruners read exactly those reports. So each trial keeps its validation curve
in its user attributes and the decision is made here; a pruned trial raises
``optuna.TrialPruned`` and is stored as pruned like any other.

The rule: at a validation step ``s``, a running trial is pruned when a
completed trial that is at least as cheap (by :func:`reply_cost`) was clearly
better at the same step: better by more than ``margin`` (relative). Being as
fast or faster and better, such a trial is likely to dominate it at the end,
so it cannot reach the front. A plain quality rule (optuna's median pruner,
say) would prune the small, fast students that make the fast end of the front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def reply_cost(
    shape: Mapping[str, int], vocab: int, context_tokens: float, reply_tokens: float
) -> float:
    """Multiply-adds to encode a context and generate a reply (the speed proxy).

    With width ``d``, FFN size ``f``, ``E`` encoder and ``D`` decoder layers,
    vocabulary ``V``, ``Lc`` context and ``Ly`` reply tokens::

        E (4 d^2 + 2 d f) Lc            encoder layers
        + D 2 d^2 Lc                    keys and values of the encoder states
        + Ly (D (6 d^2 + 2 d f) + d V)  per reply token: self- and cross-
                                        attention projections, FFN, output layer

    Attention scores (quadratic in the lengths) are left out: a proxy for
    ranking students of one teacher, not a prediction of their speed.
    """
    d, f = shape['embedding_size'], shape['ffn_size']
    n_enc, n_dec = shape['n_encoder_layers'], shape['n_decoder_layers']
    encoder = n_enc * (4 * d * d + 2 * d * f) * context_tokens
    cross_keys = n_dec * 2 * d * d * context_tokens
    per_token = n_dec * (6 * d * d + 2 * d * f) + d * vocab
    return float(encoder + cross_keys + reply_tokens * per_token)


@dataclass(frozen=True)
class PruneRule:
    """Which validation metric is compared, which way is better, and by how much.

    ``margin`` is relative: with higher-is-better metrics a trial is pruned
    below ``(1 - margin)`` times the reference, with lower-is-better ones above
    ``(1 + margin)`` times it. ``min_trials`` as-cheap completed trials must
    have a value at the step before anything is pruned.
    """

    metric: str = 'token_acc'
    higher_is_better: bool = True
    margin: float = 0.05
    min_trials: int = 1


@dataclass(frozen=True)
class Reference:
    """A completed trial as pruning sees it: its number, cost and curve."""

    number: int
    cost: float
    curve: Mapping[int, float]


def prune_reason(
    step: int,
    value: float,
    cost: float,
    completed: Sequence[Reference],
    rule: PruneRule,
) -> str | None:
    """Why the trial should stop at ``step`` (``value`` of ``rule.metric``), or None.

    Compared with the best value at ``step`` among the ``completed`` trials
    whose cost is at most ``cost``. A value that is not finite (a diverged
    trial) is pruned as soon as one reference exists.
    """
    refs = [
        (r.number, r.curve[step])
        for r in completed
        if r.cost <= cost and step in r.curve
    ]
    refs = [(n, v) for n, v in refs if math.isfinite(v)]
    if len(refs) < rule.min_trials or not refs:
        return None
    pick = max if rule.higher_is_better else min
    number, best = pick(refs, key=lambda nv: nv[1])
    if not math.isfinite(value):
        return f'{rule.metric} is {value} at step {step}'
    if rule.higher_is_better:
        factor = 1 - rule.margin
        hopeless = value < factor * best
        word = '<'
    else:
        factor = 1 + rule.margin
        hopeless = value > factor * best
        word = '>'
    if not hopeless:
        return None
    return (
        f'{rule.metric} {value:.4g} at step {step} {word} {factor:g} x {best:.4g} '
        f'of trial {number} (as cheap or cheaper)'
    )
