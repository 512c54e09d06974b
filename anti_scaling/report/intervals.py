"""Paired bootstrap intervals: every model's figures on the same resampled examples.

Every quality figure of the report is a function of *sums over examples* of
per-example statistics (a column per model and statistic):

- perplexity ``exp(sum loss / sum tokens)``, token accuracy
  ``sum correct / sum tokens``, teacher agreement ``sum agree / sum tokens``
  (ParlAI aggregates its metrics the same way: sums of numerators over sums of
  denominators);
- F1 ``sum f1 / n`` (ParlAI averages F1 over examples);
- corpus BLEU from the summed sentence statistics (sacrebleu's own sufficient
  statistics: lengths, n-gram matches and totals), as sacrebleu's paired
  significance test recomputes it.

A bootstrap resample draws ``n`` of the ``n`` examples with replacement, once
for all models, and evaluates every measure on it: the teacher, the students
and the baselines are compared on the *same* examples (paired resampling), so
that "% of the teacher" and "gain over the baseline" get the narrow intervals
that per-example pairing gives. The resampling and the interval method (BCa by
default, percentile where BCa is undefined) are :func:`scipy.stats.bootstrap`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Fewer resamples than this give intervals too coarse to report.
MIN_RESAMPLES = 100
#: Sums of every column, by name; each array has the resamples' batch shape.
Sums = Mapping[str, np.ndarray]
Measure = Callable[[Sums], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at ``confidence``."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON form (``None`` for undefined values)."""
        return {k: _finite(getattr(self, k)) for k in ('value', 'low', 'high')}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def ratio_of_sums(numerator: str, denominator: str) -> Measure:
    """``sum numerator / sum denominator`` (token accuracy, agreement, mean F1)."""
    return lambda s: s[numerator] / s[denominator]


def exp_ratio_of_sums(numerator: str, denominator: str) -> Measure:
    """``exp(sum numerator / sum denominator)`` (perplexity from summed NLL)."""
    return lambda s: np.exp(s[numerator] / s[denominator])


def share_of(measure: Measure, reference: Measure, invert: bool = False) -> Measure:
    """``measure / reference`` (or ``reference / measure`` where lower is better,
    as for perplexity): the share of a reference model's figure, 1 = as good."""
    if invert:
        return lambda s: reference(s) / measure(s)
    return lambda s: measure(s) / reference(s)


def gain_over(measure: Measure, baseline: Measure, ratio: bool = False) -> Measure:
    """``measure - baseline`` (``baseline / measure`` with ``ratio``: perplexity)."""
    if ratio:
        return lambda s: baseline(s) / measure(s)
    return lambda s: measure(s) - baseline(s)


def scaled(measure: Measure, factor: float) -> Measure:
    """``factor * measure`` (shares and gains in points)."""
    return lambda s: factor * measure(s)


# BLEU: sacrebleu's sentence statistics are [sys_len, ref_len, correct_1..4,
# total_1..4]; a corpus score is computed from their column sums.
BLEU_ORDER = 4
BLEU_COLUMNS = 2 + 2 * BLEU_ORDER


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's per-sentence BLEU statistics, ``[n, 10]`` (module docstring).

    Their column sums give exactly ``sacrebleu.corpus_bleu(hypotheses,
    [references])`` through :func:`bleu_from_sums`.
    """
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    rows = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(rows, dtype=np.float64).reshape(len(hypotheses), BLEU_COLUMNS)


def bleu_from_sums(prefix: str) -> Measure:
    """Corpus BLEU (0-100) from the sums of columns ``prefix0`` .. ``prefix9``."""
    from sacrebleu.metrics import BLEU

    def measure(s: Sums) -> np.ndarray:
        cols = np.stack(
            [np.asarray(s[f'{prefix}{i}'], dtype=np.float64) for i in range(10)], -1
        )
        flat = cols.reshape(-1, BLEU_COLUMNS)
        scores = [
            BLEU.compute_bleu(
                correct=row[2 : 2 + BLEU_ORDER].tolist(),
                total=row[2 + BLEU_ORDER :].tolist(),
                sys_len=int(row[0]),
                ref_len=int(row[1]),
                smooth_method='exp',
            ).score
            for row in flat
        ]
        return np.asarray(scores).reshape(cols.shape[:-1])

    return measure


def bleu_columns(prefix: str, statistics: np.ndarray) -> dict[str, np.ndarray]:
    """The columns :func:`bleu_from_sums` reads, from :func:`bleu_statistics`."""
    return {f'{prefix}{i}': statistics[:, i] for i in range(BLEU_COLUMNS)}


def _column_sums(
    names: Sequence[str], matrix: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """Sums of every column of ``matrix`` ``[n, len(names)]`` over the resampled
    examples ``index`` ``[..., m]``.

    Counts of each example per resample times the column matrix: the same
    sums as indexing, without a ``resamples x examples x columns`` array.
    """
    n = matrix.shape[0]
    flat = index.reshape(-1, index.shape[-1]).astype(np.int64)
    counts = np.zeros((flat.shape[0], n))
    for row, sample in zip(counts, flat):
        row += np.bincount(sample, minlength=n)
    sums = (counts @ matrix).reshape(*index.shape[:-1], len(names))
    return {k: sums[..., i] for i, k in enumerate(names)}


def paired_intervals(
    columns: Mapping[str, np.ndarray],
    measures: Mapping[str, Measure],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = 'BCa',
) -> dict[str, Interval]:
    """Every measure's value and ``confidence`` interval on the same resamples.

    ``columns`` are per-example statistics (equal lengths); each measure maps
    column sums to a figure. One :func:`scipy.stats.bootstrap` call resamples
    example indices and evaluates all measures on each resample. BCa intervals
    that come out undefined (e.g. a measure constant over resamples) are
    replaced by percentile intervals of the same resamples.
    """
    if n_resamples < MIN_RESAMPLES:
        raise ValueError(f'n_resamples must be >= {MIN_RESAMPLES}, got {n_resamples}')
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f'columns of different lengths: {sorted(lengths)}')
    n = lengths.pop()
    names = list(measures)
    keys = list(columns)
    matrix = np.stack([np.asarray(columns[k], dtype=np.float64) for k in keys], 1)
    full = dict(zip(keys, matrix.sum(0)))
    with np.errstate(divide='ignore', invalid='ignore'):
        # A share of a zero figure (a teacher F1 of 0) is undefined: NaN, no warning.
        points = {k: float(measures[k](full)) for k in names}
    if n < 2:
        return {k: Interval(points[k], math.nan, math.nan) for k in names}

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        sums = _column_sums(keys, matrix, np.moveaxis(index, axis, -1))
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.stack([np.asarray(measures[k](sums)) for k in names])

    def run(how: str):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with np.errstate(divide='ignore', invalid='ignore'):
                return stats.bootstrap(
                    (np.arange(n),),
                    statistic,
                    n_resamples=n_resamples,
                    confidence_level=confidence,
                    method=how,
                    vectorized=True,
                    batch=50,
                    rng=np.random.default_rng(seed),
                )

    result = run(method)
    low = np.array(result.confidence_interval.low, dtype=np.float64, ndmin=1)
    high = np.array(result.confidence_interval.high, dtype=np.float64, ndmin=1)
    undefined = ~(np.isfinite(low) & np.isfinite(high))
    if method != 'percentile' and undefined.any():
        fallback = run('percentile')
        low[undefined] = np.array(fallback.confidence_interval.low, ndmin=1)[undefined]
        high[undefined] = np.array(fallback.confidence_interval.high, ndmin=1)[
            undefined
        ]
    return {
        k: Interval(points[k], float(low[i]), float(high[i]))
        for i, k in enumerate(names)
    }


def ratio_of_means_interval(
    numerator: Sequence[float],
    denominator: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``mean(numerator) / mean(denominator)`` over paired items, with its interval.

    The speed-up over the teacher: the teacher's seconds per reply over the
    model's, the two timed on the same replies (the same resampled items).
    """
    columns = {'a': np.asarray(numerator), 'b': np.asarray(denominator)}
    return paired_intervals(
        columns, {'r': ratio_of_sums('a', 'b')}, n_resamples, confidence, seed
    )['r']


def verdict(interval: Interval, target: float) -> str:
    """``'met'`` if the interval lies at or above ``target``, ``'missed'`` if it
    lies below, else ``'undecided'`` (the interval straddles the target)."""
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return 'undecided'
    if interval.low >= target:
        return 'met'
    if interval.high < target:
        return 'missed'
    return 'undecided'
