"""Every objective a state pair can use, by name, and what it compares.

The names are those of ``--distill-config`` files (``loss:``) and of
``--pred-loss-type``; the formulas are in the functions' docstrings
(:mod:`anti_scaling.losses`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import losses
from ..loss_terms import PREDICTION_KINDS


@dataclass(frozen=True)
class Objective:
    """A named objective.

    ``compares`` says what its inputs are: ``'states'`` (``[B, T, D]``, masked by
    tokens), ``'scores'`` (attention scores ``[B*H, Q, K]``, masked by valid
    pairs), ``'relations'`` (``[B, T, D]`` states whose relations are compared,
    masked by valid pairs) or ``'logits'`` (``[B, T, V]``, masked by label
    tokens). ``params`` are the keyword parameters it takes beyond the tensors
    and masks. Prediction objectives on ``probabilities`` compare distributions,
    so several teachers are mixed as probabilities; the others see the teachers'
    averaged raw logits.
    """

    name: str
    compares: str
    function: Callable[..., losses.TokenMean]
    params: tuple[str, ...] = ()
    probabilities: bool = True


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective('mse', 'states', losses.masked_mse),
        Objective('cosine', 'states', losses.cosine_embedding_loss),
        Objective('pkd', 'states', losses.normalized_state_mse),
        Objective('attention_mse', 'scores', losses.attention_score_mse),
        Objective('attention_kl', 'scores', losses.attention_distribution_kl),
        Objective('value_relation', 'relations', losses.value_relation_kl, ('heads',)),
        Objective('relation_kl', 'relations', losses.relation_kl, ('relation_heads',)),
        Objective('kl', 'logits', losses.prediction_kl, ('temperature',)),
        Objective(
            'reverse_kl', 'logits', losses.reverse_prediction_kl, ('temperature',)
        ),
        Objective('jsd', 'logits', losses.prediction_jsd, ('temperature', 'beta')),
        Objective('skew_kl', 'logits', losses.skew_kl, ('temperature', 'alpha')),
        Objective(
            'skew_reverse_kl',
            'logits',
            losses.skew_reverse_kl,
            ('temperature', 'alpha'),
        ),
        Objective(
            'taid',
            'logits',
            losses.interpolated_kl,
            ('temperature', 'interpolation'),
        ),
        Objective('soft_ce', 'logits', losses.soft_cross_entropy, ('temperature',)),
        Objective(
            'logit_mse',
            'logits',
            losses.logit_mse,
            ('temperature',),
            probabilities=False,
        ),
    )
}
#: Objectives a ``--distill-config`` term may name (they compare module tensors).
MODULE_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.compares != 'logits')
#: Objectives of ``--pred-loss-type``.
PREDICTION_OBJECTIVES = PREDICTION_KINDS.names
if set(PREDICTION_OBJECTIVES) != {
    n for n, o in OBJECTIVES.items() if o.compares == 'logits'
}:  # pragma: no cover - a declaration error, caught by the test suite on import
    raise AssertionError('--pred-loss-type kinds and logit objectives differ')


def objective(name: str) -> Objective:
    """The objective called ``name`` (``ValueError`` naming the known ones)."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f'unknown objective {name!r} (known: {", ".join(OBJECTIVES)})'
        ) from None
