"""Paired bootstrap intervals and verdicts, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from scipy import stats

from anti_scaling.report import intervals as iv
from anti_scaling.report.margins import below_baseline_line
from anti_scaling.report.uncertainty import below_baseline


def test_mean_of_coin_flips_matches_the_normal_approximation():
    """400 fair-coin flips: the 95% interval of the mean is about
    p +- 1.96 sqrt(p (1 - p) / n), i.e. +- 0.049 around the observed share."""
    x = np.random.default_rng(0).binomial(1, 0.5, size=400).astype(float)
    got = iv.paired_intervals(
        {'x': x, 'one': np.ones(400)}, {'mean': iv.ratio_of_sums('x', 'one')}, 2000
    )['mean']
    p = x.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert got.value == pytest.approx(p)
    assert got.low == pytest.approx(p - half, abs=0.006)
    assert got.high == pytest.approx(p + half, abs=0.006)


def test_same_interval_as_scipy_on_the_data_itself():
    """Resampling indices and summing columns is scipy's bootstrap of the data."""
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=60)
    ours = iv.paired_intervals(
        {'x': x, 'one': np.ones(60)},
        {'mean': iv.ratio_of_sums('x', 'one')},
        500,
        seed=7,
        method='percentile',
    )['mean']
    theirs = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=500,
        method='percentile',
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert ours.low == pytest.approx(theirs.low)
    assert ours.high == pytest.approx(theirs.high)


def test_pairing_narrows_a_difference_of_correlated_models():
    """Two models with large per-example spread but a constant difference of 0.1:
    the paired gain is exactly 0.1 on every resample; the share is narrow."""
    rng = np.random.default_rng(2)
    teacher = rng.uniform(0, 1, size=200)
    student = teacher - 0.1
    columns = {'t': teacher, 's': student, 'one': np.ones(200)}
    t, s = iv.ratio_of_sums('t', 'one'), iv.ratio_of_sums('s', 'one')
    got = iv.paired_intervals(
        columns, {'gain': iv.gain_over(s, t), 'alone': s, 'share': iv.share_of(s, t)}
    )
    assert got['gain'].value == pytest.approx(-0.1)
    assert got['gain'].low == pytest.approx(-0.1) and got['gain'].high == (
        pytest.approx(-0.1)
    )
    alone = got['alone'].high - got['alone'].low
    share_width = (got['share'].high - got['share'].low) * teacher.mean()
    assert share_width < alone / 3


def test_perplexity_and_its_share_from_summed_losses():
    loss = np.array([2.0, 4.0, 3.0])
    tokens = np.array([1.0, 2.0, 1.0])
    columns = {
        '0.loss': loss,
        '0.tokens': tokens,
        '1.loss': loss * 2,
        '1.tokens': tokens,
    }
    ppl0 = iv.exp_ratio_of_sums('0.loss', '0.tokens')
    ppl1 = iv.exp_ratio_of_sums('1.loss', '1.tokens')
    got = iv.paired_intervals(
        columns, {'ppl': ppl0, 'share': iv.share_of(ppl1, ppl0, invert=True)}, 200
    )
    assert got['ppl'].value == pytest.approx(math.exp(9 / 4))
    assert got['share'].value == pytest.approx(math.exp(9 / 4) / math.exp(18 / 4))
    assert got['ppl'].low <= got['ppl'].value <= got['ppl'].high


def test_bleu_from_summed_statistics_is_sacrebleu_on_any_resample():
    hyps = ['the cat sat on the mat', 'a dog', 'hello there friend', 'i like it', '']
    refs = ['the cat is on the mat', 'a big dog', 'hello friend', 'i like pizza', 'ok']
    columns = iv.bleu_columns('b', iv.bleu_statistics(hyps, refs))
    measure = iv.bleu_from_sums('b')
    for index in ([0, 1, 2, 3, 4], [0, 0, 2, 3, 3], [1, 4, 4, 2, 0]):
        sums = {k: v[index].sum() for k, v in columns.items()}
        expected = sacrebleu.corpus_bleu(
            [hyps[i] for i in index], [[refs[i] for i in index]]
        ).score
        assert float(measure(sums)) == pytest.approx(expected)


def test_speedup_interval_is_over_paired_replies():
    teacher = np.array([0.30, 0.31, 0.29, 0.32, 0.30] * 20)
    student = teacher / 5
    got = iv.ratio_of_means_interval(teacher, student, 200)
    assert got.value == pytest.approx(5.0)
    assert got.low == pytest.approx(5.0) and got.high == pytest.approx(5.0)


@pytest.mark.parametrize(
    'low, high, expected',
    [
        (0.98, 0.99, 'met'),
        (0.97, 0.99, 'met'),
        (0.90, 0.96, 'missed'),
        (0.95, 0.98, 'undecided'),
    ],
)
def test_verdicts(low, high, expected):
    assert iv.verdict(iv.Interval((low + high) / 2, low, high), 0.97) == expected


def test_too_few_resamples_are_refused():
    with pytest.raises(ValueError, match='>= 100'):
        iv.paired_intervals({'x': np.ones(5)}, {'m': iv.ratio_of_sums('x', 'x')}, 99)


def test_a_student_below_its_baseline_is_named():
    pair = {
        'student': 's',
        'baseline': 'b',
        'intervals': {
            'ppl': {'value': 0.8, 'low': 0.7, 'high': 0.9},
            'token_acc': {'value': -1.0, 'low': -2.0, 'high': 0.5},
            'f1_greedy': {'value': 1.0, 'low': 0.2, 'high': 2.0},
        },
    }
    pair['below_baseline'] = below_baseline(pair)
    assert pair['below_baseline'] == {
        'point': ['ppl', 'token_acc'],
        'significant': ['ppl'],
    }
    line = below_baseline_line(pair)
    assert (
        line.startswith('warning: s ends below b')
        and 'beyond the 95% interval on ppl' in line
    )
    pair['intervals'] = {'ppl': {'value': 1.1, 'low': 1.0, 'high': 1.2}}
    pair['below_baseline'] = below_baseline(pair)
    assert below_baseline_line(pair) is None


def test_a_share_of_zero_is_undefined_without_a_warning():
    import warnings

    columns = {'t': np.zeros(10), 's': np.ones(10), 'one': np.ones(10)}
    share = iv.share_of(iv.ratio_of_sums('s', 'one'), iv.ratio_of_sums('t', 'one'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        got = iv.paired_intervals(columns, {'share': share}, 100)['share']
    assert math.isinf(got.value) or math.isnan(got.value)
    assert got.as_dict()['value'] is None
