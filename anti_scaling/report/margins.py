"""The teacher's margin over a same-shape baseline, and what distillation gained.

A distilled student can at best close the gap between a student of its shape
trained without a teacher (the *baseline*, B) and the teacher (T). With S the
distilled student, per figure:

- token accuracy, in points: margin ``100 (acc_T - acc_B)``, gain
  ``100 (acc_S - acc_B)``; F1 (per decoding) the same way;
- perplexity, as a ratio: margin ``ppl_B / ppl_T``, gain ``ppl_B / ppl_S``
  (above 1: better than the baseline);
- share of the gap closed: ``gain / margin`` for token accuracy and F1; for
  perplexity on its logarithm, the cross-entropy:
  ``ln(ppl_B / ppl_S) / ln(ppl_B / ppl_T)``. 1 means as good as the teacher,
  0 no better than the baseline; ``None`` where the teacher is not better
  than the baseline (no gap to close).

The margin is *small* when the teacher is less than
:data:`SMALL_TOKEN_ACC_POINTS` token-accuracy points, or less than
:data:`SMALL_PPL_RATIO` in perplexity, better than the baseline: a teacher
barely better than a student trained alone has little to teach a student of
that shape, and distillation cannot be expected to help much there (it may even
copy the teacher's errors). Each such pair gets a one-line warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .interval_text import table_head

#: A teacher less than this many token-accuracy points better is "barely better".
SMALL_TOKEN_ACC_POINTS = 1.0
#: ... or whose perplexity is less than 5% below the baseline's (ppl_B / ppl_T).
SMALL_PPL_RATIO = 1.05
#: What must be equal for a baseline to be a student's: the model family and
#: the architecture options (layer counts, width, FFN size, heads, variant).
SHAPE_KEYS = (
    'family',
    'n_encoder_layers',
    'n_decoder_layers',
    'embedding_size',
    'ffn_size',
    'n_heads',
    'variant',
)


def quality(token_acc: float, ppl: float, f1: Mapping[str, float]) -> dict[str, Any]:
    """The figures a comparison reads: token accuracy, perplexity, F1 per decoding."""
    return {'token_acc': token_acc, 'ppl': ppl, 'f1': dict(f1)}


def shape_key(architecture: Mapping[str, Any]) -> tuple:
    """The part of an architecture a student and its baseline must share."""
    return tuple(architecture.get(k) for k in SHAPE_KEYS)


def shape_text(architecture: Mapping[str, Any]) -> str:
    """E.g. ``2+1 d256 f1024 h4 prelayernorm``."""
    a = architecture
    return (
        f"{a.get('n_encoder_layers')}+{a.get('n_decoder_layers')} "
        f"d{a.get('embedding_size')} f{a.get('ffn_size')} h{a.get('n_heads')} "
        f"{a.get('variant')}"
    )


def _points(a: float, b: float) -> float:
    return 100.0 * (a - b)


def _share(gain: float, margin: float) -> float | None:
    return gain / margin if margin > 0 else None


def compare(
    teacher: Mapping[str, Any], student: Mapping[str, Any], baseline: Mapping[str, Any]
) -> dict[str, Any]:
    """Margin, gain and gap closed (module docstring) from three :func:`quality` dicts.

    F1 is compared on the decodings all three have.
    """
    decodings = [d for d in teacher['f1'] if d in student['f1'] and d in baseline['f1']]
    t_ppl, s_ppl, b_ppl = teacher['ppl'], student['ppl'], baseline['ppl']
    margin = {
        'token_acc_points': _points(teacher['token_acc'], baseline['token_acc']),
        'ppl_ratio': b_ppl / t_ppl,
        'f1_points': {
            d: _points(teacher['f1'][d], baseline['f1'][d]) for d in decodings
        },
    }
    gain = {
        'token_acc_points': _points(student['token_acc'], baseline['token_acc']),
        'ppl_ratio': b_ppl / s_ppl,
        'f1_points': {
            d: _points(student['f1'][d], baseline['f1'][d]) for d in decodings
        },
    }
    closed = {
        'token_acc': _share(gain['token_acc_points'], margin['token_acc_points']),
        'ppl': _share(math.log(b_ppl / s_ppl), math.log(b_ppl / t_ppl)),
        'f1': {
            d: _share(gain['f1_points'][d], margin['f1_points'][d]) for d in decodings
        },
    }
    return {
        'figures': {'teacher': teacher, 'student': student, 'baseline': baseline},
        'teacher_margin': margin,
        'student_gain': gain,
        'gap_closed': closed,
        'small_margin': is_small(margin),
    }


def is_small(margin: Mapping[str, Any]) -> bool:
    """Whether the teacher's margin is under either threshold (module docstring)."""
    return (
        margin['token_acc_points'] < SMALL_TOKEN_ACC_POINTS
        or margin['ppl_ratio'] < SMALL_PPL_RATIO
    )


def warning(student: str, baseline: str, comparison: Mapping[str, Any]) -> str | None:
    """One line for a pair whose teacher margin is small; None otherwise."""
    if not comparison['small_margin']:
        return None
    m = comparison['teacher_margin']
    return (
        f"warning: the teacher is only {m['token_acc_points']:+.2f} token-accuracy "
        f"points and x{m['ppl_ratio']:.3f} in perplexity better than {baseline}, "
        f'trained without a teacher in the shape of {student} (small: under '
        f'{SMALL_TOKEN_ACC_POINTS:g} point or x{SMALL_PPL_RATIO:g}); distillation '
        'cannot be expected to help much there'
    )


def pair(
    student: str,
    baseline: str,
    shape: str,
    teacher_q: Mapping[str, Any],
    student_q: Mapping[str, Any],
    baseline_q: Mapping[str, Any],
) -> dict[str, Any]:
    """A labelled comparison with its warning (what the JSON files hold)."""
    comparison = compare(teacher_q, student_q, baseline_q)
    return {
        'student': student,
        'baseline': baseline,
        'shape': shape,
        **comparison,
        'warning': warning(student, baseline, comparison),
    }


def _num(value: float | None, fmt: str) -> str:
    return 'n/a' if value is None else format(value, fmt)


def _figures(values: Mapping[str, Any], decodings: Sequence[str], share: bool) -> str:
    if share:
        parts = [_num(values['token_acc'], '.0%'), _num(values['ppl'], '.0%')]
        parts += [_num(values['f1'].get(d), '.0%') for d in decodings]
    else:
        parts = [f"{values['token_acc_points']:+.2f}", f"x{values['ppl_ratio']:.3f}"]
        parts += [_num(values['f1_points'].get(d), '+.2f') for d in decodings]
    return ' / '.join(parts)


def markdown_lines(
    pairs: Sequence[Mapping[str, Any]], decodings: Sequence[str]
) -> list[str]:
    """A table of the pairs (one row each) and their warnings, as Markdown lines."""
    what = ' / '.join(['token acc', 'ppl', *(f'F1 {d}' for d in decodings)])
    lines = [
        f"Token accuracy and F1 in points, perplexity as the baseline's over the "
        f"model's; gap closed = student's gain / teacher's margin (perplexity: on "
        f'its logarithm). A margin under {SMALL_TOKEN_ACC_POINTS:g} token-accuracy '
        f'point or x{SMALL_PPL_RATIO:g} in perplexity is small.',
        '',
        f"| student | baseline (no teacher) | shape | teacher's margin ({what}) "
        f'| student\'s gain | gap closed |',
        '|---|---|---|---:|---:|---:|',
    ]
    for p in pairs:
        mark = ' (small)' if p['small_margin'] else ''
        lines.append(
            f"| {p['student']} | {p['baseline']} | {p['shape']} | "
            f"{_figures(p['teacher_margin'], decodings, False)}{mark} | "
            f"{_figures(p['student_gain'], decodings, False)} | "
            f"{_figures(p['gap_closed'], decodings, True)} |"
        )
    if any(p.get('intervals') for p in pairs):
        lines += ['', *gain_interval_lines(pairs)]
    warnings = [p['warning'] for p in pairs if p['warning']]
    warnings += [line for p in pairs if (line := below_baseline_line(p))]
    if warnings:
        lines.append('')
        lines += [f'- **{w[:1].upper()}{w[1:]}.**' for w in warnings]
    return lines


def _row_quality(row: Mapping[str, Any]) -> dict[str, Any]:
    return quality(
        row['token_acc'],
        row['ppl'],
        {d: g['f1'] for d, g in row['generation'].items()},
    )


def report_pairs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every distilled student of a report paired with each baseline of its shape.

    ``rows`` are the report's (the teacher first; ``role`` ``student`` or
    ``baseline``; quantised copies are left out). Returns the pairs, and the
    labels of students and baselines that found no partner.
    """
    teacher = _row_quality(rows[0])
    students = [r for r in rows if r.get('role') == 'student']
    baselines = [r for r in rows if r.get('role') == 'baseline']
    pairs, used = [], set()
    for s in students:
        for b in baselines:
            if shape_key(s['architecture']) != shape_key(b['architecture']):
                continue
            used.add(b['label'])
            pairs.append(
                pair(
                    s['label'],
                    b['label'],
                    shape_text(s['architecture']),
                    teacher,
                    _row_quality(s),
                    _row_quality(b),
                )
            )
    paired = {p['student'] for p in pairs}
    return {
        'pairs': pairs,
        'unpaired_students': [s['label'] for s in students if s['label'] not in paired],
        'unpaired_baselines': [b['label'] for b in baselines if b['label'] not in used],
    }


def summary_line(p: Mapping[str, Any]) -> str:
    """One console line for a pair: the teacher's margin and the student's gain."""
    m, g = p['teacher_margin'], p['student_gain']
    closed = p['gap_closed']['token_acc']
    return (
        f"{p['student']} against {p['baseline']}: teacher margin "
        f"{m['token_acc_points']:+.2f} token-acc points (ppl x{m['ppl_ratio']:.3f}), "
        f"student gain {g['token_acc_points']:+.2f} (ppl x{g['ppl_ratio']:.3f})"
        + (f', {closed:.0%} of the gap closed' if closed is not None else '')
    )


def _interval_text(name: str, gain: Mapping[str, Any]) -> str:
    if gain['value'] is None:
        return 'n/a'
    if name == 'ppl':
        return f"x{gain['value']:.3f} [{_num(gain['low'], '.3f')}, {_num(gain['high'], '.3f')}]"
    return f"{gain['value']:+.2f} [{_num(gain['low'], '+.2f')}, {_num(gain['high'], '+.2f')}]"


def gain_interval_lines(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """A table of each student's gain over its baseline with 95% intervals
    (the pairs that have them)."""
    pairs = [p for p in pairs if p.get('intervals')]
    names = list(pairs[0]['intervals'])
    lines = [
        "Student's gain over its baseline with its 95% interval (paired bootstrap "
        'over the examples): points for token accuracy, agreement and F1, BLEU '
        "points, perplexity as the baseline's over the student's (above x1: "
        'better).',
        '',
        *table_head(['student', 'baseline'], names),
    ]
    for p in pairs:
        cells = [_interval_text(n, p['intervals'][n]) for n in names]
        lines.append(
            f"| {p['student']} | {p['baseline']} | " + ' | '.join(cells) + ' |'
        )
    return lines


def below_baseline_line(p: Mapping[str, Any]) -> str | None:
    """One line when a distilled student ends below its same-shape baseline."""
    below = p.get('below_baseline') or {}
    point, significant = below.get('point', []), below.get('significant', [])
    if not point:
        return None
    text = (
        f"warning: {p['student']} ends below {p['baseline']}, the same shape trained "
        f"without a teacher, on {', '.join(point)}"
    )
    if significant:
        text += f" (beyond the 95% interval on {', '.join(significant)})"
    else:
        text += ' (within the 95% interval: not a significant difference)'
    return text
