"""The report's intervals and verdicts: which differences are real at 95%.

From the per-example statistics of every model (teacher-forced sums, F1 and
BLEU statistics of each reply), :func:`attach_intervals` adds to each row of
the report, for every quality measure, a paired bootstrap interval
(:mod:`.intervals`) of

- its value,
- its share of the teacher's (``model / teacher``; perplexity
  ``teacher / model``, so that 1 = as good as the teacher for every measure),

to each student-baseline pair the interval of the student's gain over the
baseline (points for token accuracy, agreement and F1, BLEU points, and
perplexity as ``baseline / student``), and to each model's speed-up over the
teacher (seconds per reply at the timing batch size) an interval over the
timed replies. With targets (``--target-speedup``, ``--target-share``) each
model gets a verdict per measure: ``met`` (the interval lies at or above the
target), ``missed`` (below) or ``undecided`` (it straddles the target).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import intervals as iv

#: Quality measures of the teacher-forced pass, and whether lower is better.
FORCED = {'ppl': True, 'token_acc': False, 'teacher_agreement': False}


def quality_measures(decodings: Sequence[str]) -> dict[str, bool]:
    """Every quality measure with intervals (name -> lower is better)."""
    generated = {f'{k}_{d}': False for d in decodings for k in ('f1', 'bleu')}
    return {**FORCED, **generated}


def example_columns(
    forced: Sequence[Any],
    agreement: Sequence[Sequence[int]],
    f1: Mapping[str, Sequence[Sequence[float]]],
    bleu: Mapping[str, Sequence[np.ndarray]],
) -> dict[str, np.ndarray]:
    """Per-example columns of every model ``i``: ``i.loss``, ``i.tokens``,
    ``i.correct``, ``i.agree`` (argmax equal to the teacher's), per decoding
    ``i.f1_d`` and ``i.bleu_d0..9``; and ``one``."""
    n = len(forced[0].per_example['tokens'])
    columns: dict[str, np.ndarray] = {'one': np.ones(n)}
    for i, result in enumerate(forced):
        for key in ('loss', 'tokens', 'correct'):
            columns[f'{i}.{key}'] = np.asarray(result.per_example[key], dtype=float)
        columns[f'{i}.agree'] = np.asarray(agreement[i], dtype=float)
    for d, per_model in f1.items():
        for i, values in enumerate(per_model):
            columns[f'{i}.f1_{d}'] = np.asarray(values, dtype=float)
    for d, per_model in bleu.items():
        for i, stats in enumerate(per_model):
            columns.update(iv.bleu_columns(f'{i}.bleu_{d}', stats))
    return columns


def value_measure(i: int, name: str) -> iv.Measure:
    """Model ``i``'s figure ``name`` as a function of column sums."""
    if name == 'ppl':
        return iv.exp_ratio_of_sums(f'{i}.loss', f'{i}.tokens')
    if name == 'token_acc':
        return iv.ratio_of_sums(f'{i}.correct', f'{i}.tokens')
    if name == 'teacher_agreement':
        # The teacher's label tokens: the same labels, the same dictionary.
        return iv.ratio_of_sums(f'{i}.agree', '0.tokens')
    if name.startswith('f1_'):
        return iv.ratio_of_sums(f'{i}.{name}', 'one')
    if name.startswith('bleu_'):
        return iv.bleu_from_sums(f'{i}.{name}')
    raise KeyError(name)


def gain_measure(s: int, b: int, name: str, lower_better: bool) -> iv.Measure:
    """Student ``s``'s gain over baseline ``b``: ``baseline / student`` for
    perplexity, else the difference (x100, in points, except BLEU)."""
    student, baseline = value_measure(s, name), value_measure(b, name)
    if lower_better:
        return iv.gain_over(student, baseline, ratio=True)
    factor = 1.0 if name.startswith('bleu_') else 100.0
    return iv.scaled(iv.gain_over(student, baseline), factor)


def _measures(
    n_models: int, pairs: Sequence[tuple[int, int]], names: Mapping[str, bool]
) -> dict[str, iv.Measure]:
    """Keys ``i|value|name``, ``i|share|name`` (``i`` > 0) and ``s:b|gain|name``."""
    measures: dict[str, iv.Measure] = {}
    for name, lower_better in names.items():
        teacher = value_measure(0, name)
        for i in range(n_models):
            mine = value_measure(i, name)
            measures[f'{i}|value|{name}'] = mine
            if i:
                measures[f'{i}|share|{name}'] = iv.share_of(
                    mine, teacher, invert=lower_better
                )
        for s, b in pairs:
            measures[f'{s}:{b}|gain|{name}'] = gain_measure(s, b, name, lower_better)
    return measures


def _grouped_intervals(
    columns: Mapping[str, np.ndarray],
    n_models: int,
    pairs: Sequence[tuple[int, int]],
    names: Mapping[str, bool],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[list[dict], list[dict]]:
    """Every measure's interval on one set of resamples, grouped: per model
    ``{name: {'value': ..., 'share': ...}}`` and per pair ``{name: gain}``."""
    found = iv.paired_intervals(
        columns, _measures(n_models, pairs, names), n_resamples, confidence, seed
    )
    models: list[dict] = [{} for _ in range(n_models)]
    gains: list[dict] = [{} for _ in pairs]
    for key, interval in found.items():
        who, kind, name = key.split('|')
        if ':' in who:
            pair = tuple(int(x) for x in who.split(':'))
            gains[pairs.index(pair)][name] = interval.as_dict()
        else:
            models[int(who)].setdefault(name, {})[kind] = interval.as_dict()
    return models, gains


def attach_intervals(
    report: dict,
    columns: Mapping[str, np.ndarray],
    reply_seconds: Mapping[str, Sequence[Sequence[float]]],
    n_resamples: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> None:
    """Add ``intervals`` to every row and pair of ``report``, and the speed-up
    intervals to every row's ``generation`` (module docstring).

    ``reply_seconds[d][i]``: model ``i``'s seconds per timed reply, decoding
    ``d`` (the same replies, in the same order, for every model).
    """
    rows = report['models']
    labels = [r['label'] for r in rows]
    pairs = (report.get('baselines') or {}).get('pairs', [])
    index_pairs = [
        (labels.index(p['student']), labels.index(p['baseline'])) for p in pairs
    ]
    models, gains = _grouped_intervals(
        columns,
        len(rows),
        index_pairs,
        quality_measures(list(reply_seconds)),
        n_resamples,
        confidence,
        seed,
    )
    for row, figures in zip(rows, models):
        row['intervals'] = figures
    for pair, gain in zip(pairs, gains):
        pair['intervals'] = gain
    for d, per_model in reply_seconds.items():
        teacher = per_model[0]
        for row, seconds in zip(rows, per_model):
            g = row['generation'][d]
            q1, median, q3 = np.percentile(seconds, [25, 50, 75])
            g['median_s_per_reply'] = float(median)
            g['iqr_s_per_reply'] = [float(q1), float(q3)]
            g['speedup_interval'] = iv.ratio_of_means_interval(
                teacher, seconds, n_resamples, confidence, seed
            ).as_dict()
    for p in pairs:
        p['below_baseline'] = below_baseline(p)
    report['settings']['bootstrap'] = {
        'resamples': n_resamples,
        'confidence': confidence,
        'seed': seed,
        'method': 'paired bootstrap over examples (scipy.stats.bootstrap, BCa)',
    }


def forced_intervals(
    per_example: Sequence[Mapping[str, Sequence[float]]],
    pairs: Sequence[tuple[int, int]] = (),
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[list[dict], list[dict]]:
    """Intervals of perplexity and token accuracy from teacher-forced sums alone.

    ``per_example[i]``: model ``i``'s :attr:`ForcedResult.per_example` on the
    same examples (the teacher first). Returns, per model, ``{name: {'value':
    ..., 'share': ...}}`` (no share for the teacher), and per pair ``(s, b)``
    ``{name: gain}`` (:func:`gain_measure`), as :func:`attach_intervals` does
    for a whole report; the search uses it for its trials and baselines.
    """
    columns: dict[str, np.ndarray] = {}
    for i, sums in enumerate(per_example):
        for key in ('loss', 'tokens', 'correct'):
            columns[f'{i}.{key}'] = np.asarray(sums[key], dtype=float)
    names = {'ppl': True, 'token_acc': False}
    return _grouped_intervals(
        columns, len(per_example), pairs, names, n_resamples, confidence, seed
    )


def below_baseline(pair: Mapping[str, Any]) -> dict[str, list[str]]:
    """The measures where a distilled student ends below its baseline: ``point``
    (its gain is negative) and ``significant`` (the whole interval is)."""
    point, significant = [], []
    for name, gain in pair.get('intervals', {}).items():
        zero = 1.0 if name == 'ppl' else 0.0
        if gain['value'] is not None and gain['value'] < zero:
            point.append(name)
        if gain['high'] is not None and gain['high'] < zero:
            significant.append(name)
    return {'point': point, 'significant': significant}


def attach_verdicts(
    report: dict, target_speedup: float | None, target_share: float | None
) -> None:
    """Each non-teacher row's verdict per measure against the targets.

    Speed: the speed-up interval (per reply, each decoding) against
    ``target_speedup``; quality: the share-of-the-teacher interval of every
    measure against ``target_share``.
    """
    if target_speedup is None and target_share is None:
        return
    report['settings']['targets'] = {
        'speedup': target_speedup,
        'share': target_share,
    }
    for row in report['models'][1:]:
        verdicts = {}
        if target_speedup is not None:
            for d, g in row['generation'].items():
                interval = iv.Interval(
                    *(_nan(g['speedup_interval'][k]) for k in ('value', 'low', 'high'))
                )
                verdicts[f'speedup_{d}'] = iv.verdict(interval, target_speedup)
        if target_share is not None:
            for name, figures in row.get('intervals', {}).items():
                share = figures.get('share')
                if share:
                    interval = iv.Interval(
                        *(_nan(share[k]) for k in ('value', 'low', 'high'))
                    )
                    verdicts[name] = iv.verdict(interval, target_share)
        row['verdicts'] = verdicts


def _nan(value: float | None) -> float:
    return float('nan') if value is None else float(value)
