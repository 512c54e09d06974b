"""The teacher's margin over a same-shape baseline, computed by hand."""

from __future__ import annotations

import math

import pytest

from anti_scaling.report.margins import (
    compare,
    markdown_lines,
    pair,
    quality,
    report_pairs,
)

TEACHER = quality(0.50, 10.0, {'greedy': 0.30, 'beam': 0.32})
BASELINE = quality(0.40, 20.0, {'greedy': 0.20, 'beam': 0.28})
# Perplexity 20 / sqrt(2): half the baseline's cross-entropy gap to the teacher.
STUDENT = quality(0.45, 20.0 / math.sqrt(2.0), {'greedy': 0.25, 'beam': 0.30})


def test_margin_gain_and_gap_closed():
    c = compare(TEACHER, STUDENT, BASELINE)
    m, g, closed = c['teacher_margin'], c['student_gain'], c['gap_closed']
    assert m['token_acc_points'] == pytest.approx(10.0)
    assert m['ppl_ratio'] == pytest.approx(2.0)
    assert m['f1_points'] == pytest.approx({'greedy': 10.0, 'beam': 4.0})
    assert g['token_acc_points'] == pytest.approx(5.0)
    assert g['ppl_ratio'] == pytest.approx(math.sqrt(2.0))
    assert g['f1_points'] == pytest.approx({'greedy': 5.0, 'beam': 2.0})
    # ln(20 / 14.14) / ln(20 / 10) = (ln 2 / 2) / ln 2
    assert closed['token_acc'] == pytest.approx(0.5)
    assert closed['ppl'] == pytest.approx(0.5)
    assert closed['f1'] == pytest.approx({'greedy': 0.5, 'beam': 0.5})
    assert c['small_margin'] is False
    assert c['figures']['baseline'] == BASELINE


def test_f1_on_the_decodings_all_three_have():
    greedy_only = quality(0.40, 20.0, {'greedy': 0.20})
    c = compare(TEACHER, STUDENT, greedy_only)
    assert c['teacher_margin']['f1_points'] == pytest.approx({'greedy': 10.0})
    assert list(c['gap_closed']['f1']) == ['greedy']


B20 = quality(0.40, 20.0, {'greedy': 0.2})


@pytest.mark.parametrize(
    'teacher, baseline, small',
    [
        # The second corpus: 19.2 against 19.6 (x1.021), 0.6 points.
        (quality(0.406, 19.2, {'greedy': 0.2}), quality(0.40, 19.6, {}), True),
        # Only the perplexity is close (x1.04), accuracy 5 points better.
        (quality(0.45, 20.0 / 1.04, {'greedy': 0.2}), B20, True),
        # Only the accuracy is close (0.5 points), perplexity x1.5.
        (quality(0.405, 20.0 / 1.5, {'greedy': 0.2}), B20, True),
        # At both thresholds (1 point, 21 / 20 = x1.05): not small, they are strict.
        (quality(0.75, 20.0, {'greedy': 0.2}), quality(0.74, 21.0, {}), False),
        # The teacher worse than the baseline.
        (quality(0.30, 25.0, {'greedy': 0.1}), B20, True),
    ],
)
def test_small_margin_thresholds(teacher, baseline, small):
    c = compare(teacher, STUDENT, baseline)
    assert c['small_margin'] is small
    p = pair('S', 'B', '1+1', teacher, STUDENT, baseline)
    assert (p['warning'] is not None) is small
    if small:
        margin = c['teacher_margin']
        assert p['warning'] == (
            f"warning: the teacher is only {margin['token_acc_points']:+.2f} "
            f"token-accuracy points and x{margin['ppl_ratio']:.3f} in perplexity "
            'better than B, trained without a teacher in the shape of S (small: '
            'under 1 point or x1.05); distillation cannot be expected to help '
            'much there'
        )


def test_no_gap_to_close_when_the_teacher_is_not_better():
    worse = quality(0.30, 25.0, {'greedy': 0.20})
    closed = compare(worse, STUDENT, BASELINE)['gap_closed']
    assert closed == {'token_acc': None, 'ppl': None, 'f1': {'greedy': None}}


def _row(label, role, shape, q, variant='prelayernorm'):
    arch = dict(
        family='transformer',
        n_encoder_layers=shape[0],
        n_decoder_layers=shape[1],
        embedding_size=shape[2],
        ffn_size=4 * shape[2],
        n_heads=4,
        variant=variant,
    )
    return {
        'label': label,
        'role': role,
        'architecture': arch,
        'token_acc': q['token_acc'],
        'ppl': q['ppl'],
        'generation': {d: {'f1': v} for d, v in q['f1'].items()},
    }


def test_report_rows_are_paired_by_shape():
    rows = [
        _row('T', 'teacher', (2, 6, 256), TEACHER),
        _row('A', 'student', (2, 2, 256), STUDENT),
        _row('A int8', 'int8', (2, 2, 256), STUDENT),
        _row('A-base', 'baseline', (2, 2, 256), BASELINE),
        _row('A-base2', 'baseline', (2, 2, 256), TEACHER),
        _row('A-xlm', 'baseline', (2, 2, 256), BASELINE, variant='xlm'),
        _row('C', 'student', (1, 1, 128), STUDENT),
        _row('D-base', 'baseline', (1, 2, 128), BASELINE),
    ]
    result = report_pairs(rows)
    assert [(p['student'], p['baseline']) for p in result['pairs']] == [
        ('A', 'A-base'),
        ('A', 'A-base2'),
    ]
    assert result['unpaired_students'] == ['C']
    assert result['unpaired_baselines'] == ['A-xlm', 'D-base']
    first, second = result['pairs']
    assert first['shape'] == '2+2 d256 f1024 h4 prelayernorm'
    assert first['teacher_margin']['token_acc_points'] == pytest.approx(10.0)
    assert first['gap_closed']['f1']['beam'] == pytest.approx(0.5)
    # A baseline as good as the teacher: no margin, a warning.
    assert second['teacher_margin']['token_acc_points'] == 0.0
    assert second['gap_closed']['token_acc'] is None
    assert second['warning'].startswith('warning: the teacher is only +0.00 token')

    lines = markdown_lines(result['pairs'], ['greedy', 'beam'])
    assert (
        '| A | A-base | 2+2 d256 f1024 h4 prelayernorm | +10.00 / x2.000 / +10.00 '
        '/ +4.00 | +5.00 / x1.414 / +5.00 / +2.00 | 50% / 50% / 50% / 50% |'
    ) in lines
    assert (
        '| A | A-base2 | 2+2 d256 f1024 h4 prelayernorm | +0.00 / x1.000 / +0.00 '
        '/ +0.00 (small) | -5.00 / x0.707 / -5.00 / -2.00 | n/a / n/a / n/a / n/a |'
        in lines
    )
    assert (
        lines[-1]
        == '- **' + second['warning'][:1].upper() + second['warning'][1:] + '.**'
    )
