"""The report's intervals, speed spread and verdicts as text (Markdown, console)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{value:.{digits}f}'


def table_head(labels: Sequence[str], names: Sequence[str]) -> list[str]:
    """A Markdown table's two head lines: text columns, then figure columns."""
    return [
        '| ' + ' | '.join([*labels, *names]) + ' |',
        '|' + '---|' * len(labels) + '---:|' * len(names),
    ]


def _span(figure: dict | None, digits: int, scale: float = 1.0) -> str:
    """``value [low, high]``."""
    if not figure or figure.get('value') is None:
        return 'n/a'
    v, lo, hi = (
        None if figure[k] is None else scale * figure[k]
        for k in ('value', 'low', 'high')
    )
    return f'{fmt(v, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]'


def interval_section(report: dict, decodings: list[str]) -> list[str]:
    """Every figure with its 95% interval; speed; verdicts against the targets."""
    s = report['settings']
    rows = report['models']
    names = list(rows[0]['intervals'])
    boot = s.get('bootstrap', {})
    lines = [
        '## 95% intervals',
        '',
        f"Paired bootstrap over the {s['num_examples']} examples "
        f"({boot.get('resamples')} resamples, the same for every model): value "
        "[low, high]; share = model / teacher (perplexity: teacher / model), 1 = "
        "as good as the teacher.",
        '',
        *table_head(['model'], names),
    ]
    for m in rows:
        cells = [_span(m['intervals'][n].get('value'), 4) for n in names]
        lines.append(f"| {m['label']} | " + ' | '.join(cells) + ' |')
    lines += ['', *table_head(['share of the teacher'], names)]
    for m in rows[1:]:
        cells = [_span(m['intervals'][n].get('share'), 1, 100.0) + ' %' for n in names]
        lines.append(f"| {m['label']} | " + ' | '.join(cells) + ' |')
    lines += [
        '',
        f"Speed per decoding ({' / '.join(decodings)}): median seconds per reply "
        f"(interquartile range) at batch size {s['batchsize']}; speed-up over the "
        "teacher with its 95% interval; replies per second at batch size "
        f"{s['eval_batchsize']} and that speed-up; share of the timed replies equal "
        'to the batched ones.',
        '',
        '| model | median s/reply (IQR) | speed-up [95%] | replies/s | '
        'speed-up (replies/s) | same as batched |',
        '|---|---:|---:|---:|---:|---:|',
    ]
    for m in rows:
        g = [m['generation'][d] for d in decodings]
        lines.append(
            f"| {m['label']} | "
            + ' / '.join(
                f"{x['median_s_per_reply']:.4f} ({x['iqr_s_per_reply'][0]:.4f}-"
                f"{x['iqr_s_per_reply'][1]:.4f})"
                for x in g
            )
            + ' | '
            + ' / '.join(_span(x['speedup_interval'], 2) for x in g)
            + ' | '
            + ' / '.join(fmt(x['replies_per_second'], 1) for x in g)
            + ' | '
            + ' / '.join(fmt(x['throughput_speedup'], 2) for x in g)
            + ' | '
            + ' / '.join(f"{x['same_as_batched']:.0%}" for x in g)
            + ' |'
        )
    if s.get('targets'):
        lines += ['', *_verdict_lines(rows, s['targets'])]
    lines.append('')
    return lines


def _verdict_lines(rows: list[dict], targets: dict) -> list[str]:
    names = list(rows[1].get('verdicts', {}))
    wanted = []
    if targets.get('speedup') is not None:
        wanted.append(f"speed-up at least x{targets['speedup']:g}")
    if targets.get('share') is not None:
        wanted.append(f"at least {targets['share']:.0%} of the teacher's figures")
    lines = [
        f"Targets: {' and '.join(wanted)}. met: the 95% interval lies at or above "
        'the target; missed: below it; undecided: it straddles the target.',
        '',
        '| model | ' + ' | '.join(names) + ' |',
        '|---|' + '---|' * len(names),
    ]
    for m in rows[1:]:
        v = m.get('verdicts', {})
        lines.append(
            f"| {m['label']} | " + ' | '.join(v.get(n, '') for n in names) + ' |'
        )
    return lines


def verdict_line(verdicts: dict[str, str]) -> str:
    """``speedup_greedy met, token_acc undecided, ...`` for the console."""
    return ', '.join(f'{name} {v}' for name, v in verdicts.items())


def model_line(m: dict) -> str:
    """One console line per model: its main figures with their 95% intervals."""
    g = m['generation']['greedy']
    intervals = m.get('intervals', {})

    def span(name: str, digits: int) -> str:
        return _span(intervals.get(name, {}).get('value'), digits)

    speedup = _span(g.get('speedup_interval'), 2) if 'speedup_interval' in g else ''
    return (
        f"{m['label']}: ppl {span('ppl', 2)}, token acc {span('token_acc', 4)}, "
        f"F1 {span('f1_greedy', 4)}, greedy {g['mean_s_per_reply']:.4f} s/reply "
        f"(x{g['speedup']:.2f}{', 95% ' + speedup if speedup else ''})"
    )
