"""The report's files: JSON (every figure), Markdown (the table) and a PNG plot.

All three are written atomically, and never over an earlier report unless asked.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import DistillationError
from ..fileio import atomic_path, atomic_write
from .interval_text import fmt as _fmt
from .interval_text import interval_section
from .margins import markdown_lines
from .runtimes import runtime_section

FILES = {'json': 'report.json', 'markdown': 'report.md', 'plot': 'quality_vs_speed.png'}


def output_paths(out_dir: str) -> dict[str, str]:
    """Where the report's files go in ``out_dir``."""
    return {kind: os.path.join(out_dir, name) for kind, name in FILES.items()}


def check_output(out_dir: str, overwrite: bool) -> None:
    """Refuse (one line) to replace an earlier report unless ``overwrite``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DistillationError(f'--out {out_dir} exists and is not a directory')
    existing = [p for p in output_paths(out_dir).values() if os.path.exists(p)]
    if existing and not overwrite:
        raise DistillationError(
            f'{existing[0]} exists: pass --overwrite to replace the earlier report, '
            'or choose another --out'
        )


def _pair(model: dict, key: str, digits: int, decodings: list[str]) -> str:
    return ' / '.join(_fmt(model['generation'][d].get(key), digits) for d in decodings)


def _ms_pair(model: dict, decodings: list[str]) -> str:
    return ' / '.join(
        _fmt(1000 * model['generation'][d]['mean_s_per_token'], 2) for d in decodings
    )


def _int8_note(settings: dict) -> str:
    if not settings.get('quantize'):
        return ''
    return (
        " Rows labelled 'int8' are copies of the model above them with every linear "
        'layer dynamically quantised to int8 (torch), evaluated and timed the same way.'
    )


def markdown(report: dict) -> str:
    """The report as Markdown: the settings in a sentence, then one row per model."""
    s = report['settings']
    decodings = list(s['decodings'])
    names = ' / '.join(
        d if d == 'greedy' else f'beam {s["beam_size"]}' for d in decodings
    )
    lines = [
        '# Distillation report',
        '',
        f"Task `{s['task']}` ({s['datatype']}, {_examples_text(s)}). Teacher "
        "forcing: ParlAI's perplexity and token accuracy; "
        "teacher agreement = share of label tokens where the model's argmax equals "
        "the teacher's. Generation "
        f"({names}; replies of at most {s['max_reply_tokens']} tokens, every "
        f"example in batches of {s['eval_batchsize']}): ParlAI F1 "
        'and sacrebleu corpus BLEU (normalised text) against the references and '
        "against the teacher's replies. Speed: seconds per reply on CPU on the "
        f"first {s.get('timing_examples', s['num_examples'])} examples, batch "
        f"size {s['batchsize']}, {s['threads']} torch thread(s), "
        f"{s['warmup_batches']} warm-up batch(es) excluded; speedup = teacher's "
        "mean / model's mean. Replies differ in length, so the time per generated "
        "token (end token included) and the speedup on it are given too. Pairs "
        'are given as ' + names + '.' + _int8_note(s),
        '',
        '| model | params | ppl | token acc | teacher agr. | F1 | BLEU (ref) '
        '| BLEU (teacher) | tokens/reply | s/reply mean | s/reply p90 | speedup '
        '| ms/token | speedup/token |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for m in report['models']:
        lines.append(
            '| '
            + ' | '.join(
                [
                    m['label'],
                    f"{m['params'] / 1e6:.2f}M",
                    _fmt(m['ppl'], 1),
                    _fmt(m['token_acc'], 4),
                    _fmt(m['teacher_agreement'], 4),
                    _pair(m, 'f1', 4, decodings),
                    _pair(m, 'bleu_ref', 2, decodings),
                    _pair(m, 'bleu_teacher', 2, decodings),
                    _pair(m, 'mean_reply_tokens', 1, decodings),
                    _pair(m, 'mean_s_per_reply', 4, decodings),
                    _pair(m, 'p90_s_per_reply', 4, decodings),
                    _pair(m, 'speedup', 2, decodings),
                    _ms_pair(m, decodings),
                    _pair(m, 'speedup_per_token', 2, decodings),
                ]
            )
            + ' |'
        )
    lines.append('')
    if any(m.get('intervals') for m in report['models']):
        lines += interval_section(report, decodings)
    if report.get('baselines'):
        lines += _baseline_section(report['baselines'], decodings)
    lines += runtime_section(report)
    return '\n'.join(lines)


def _examples_text(s: dict) -> str:
    if s.get('requested_examples') == 'all':
        return f"all {s['num_examples']} examples"
    return f"the first {s['num_examples']} examples"


def _baseline_section(baselines: dict, decodings: list[str]) -> list[str]:
    """Each distilled student against the baseline of its shape."""
    lines = ['## Distilled students against same-shape baselines', '']
    if baselines['pairs']:
        lines += markdown_lines(baselines['pairs'], decodings)
    else:
        lines.append('No distilled student has the shape of a baseline.')
    unpaired = [
        ('Students with no baseline of their shape', baselines['unpaired_students']),
        (
            'Baselines with no distilled student of their shape',
            baselines['unpaired_baselines'],
        ),
    ]
    for title, labels in unpaired:
        if labels:
            lines += ['', f"{title}: {', '.join(labels)}."]
    lines.append('')
    return lines


#: How each role is drawn in the plot, and named in its legend.
MARKERS = {
    'teacher': {'marker': '*', 's': 160, 'facecolors': 'black', 'edgecolors': 'black'},
    'student': {
        'marker': 'o',
        's': 60,
        'facecolors': 'tab:blue',
        'edgecolors': 'tab:blue',
    },
    'baseline': {
        'marker': 'o',
        's': 60,
        'facecolors': 'white',
        'edgecolors': 'tab:gray',
    },
    'int8': {'marker': 'D', 's': 45, 'facecolors': 'white', 'edgecolors': 'tab:red'},
}
ROLE_NAMES = {
    'teacher': 'teacher',
    'student': 'distilled student',
    'baseline': 'baseline (no teacher)',
    'int8': 'int8 copy (dynamic quantisation)',
}
#: Where a point's label may go: offset in points, horizontal and vertical alignment.
LABEL_SPOTS = (
    ((6, 4), 'left', 'bottom'),
    ((6, -4), 'left', 'top'),
    ((-6, 4), 'right', 'bottom'),
    ((-6, -4), 'right', 'top'),
    ((0, 9), 'center', 'bottom'),
    ((0, -9), 'center', 'top'),
)


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two display-space boxes."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def _label_points(ax: Any, points: list[tuple[float, float]], labels: list[str]):
    """Annotate each point at the first spot that covers no other label or point.

    Needs a drawn figure (display coordinates are final). Where every spot
    collides, the one with the least overlap is kept.
    """
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    obstacles = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        obstacles.append(Bbox.from_bounds(px - 5, py - 5, 10, 10))
    for (x, y), label in zip(points, labels):
        best = None
        for offset, ha, va in LABEL_SPOTS:
            text = ax.annotate(
                label,
                (x, y),
                textcoords='offset points',
                xytext=offset,
                ha=ha,
                va=va,
                fontsize=8,
            )
            box = text.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, frame)
            cost = outside + sum(_overlap(box, other) for other in obstacles)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        obstacles.append(best[2])


def plot(report: dict, path: str, decoding: str = 'greedy') -> None:
    """PNG: F1 and perplexity against speedup (``decoding``), one point per model."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    models = report['models']
    speed = [m['generation'][decoding]['speedup'] for m in models]
    panels = [
        ('f1', f'F1 ({decoding}) against the references', 'F1 (higher is better)'),
        ('ppl', 'perplexity (teacher forcing)', 'perplexity (lower is better)'),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    columns = []
    for ax, (key, title, ylabel) in zip(axes, panels):
        values = [
            m['generation'][decoding][key] if key == 'f1' else m[key] for m in models
        ]
        columns.append(values)
        for m, x, y in zip(models, speed, values):
            ax.scatter([x], [y], zorder=3, **MARKERS[m.get('role', 'student')])
        ax.axhline(values[0], color='grey', linestyle=':', linewidth=1, zorder=1)
        ax.set_title(title)
        ax.set_xlabel(f'generation speedup over the teacher ({decoding}, CPU)')
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    s = report['settings']
    fig.suptitle(
        f"{s['task']}: quality against speed ({s['num_examples']} {s['datatype']} "
        f"examples, batch size {s['batchsize']})",
        fontsize=10,
    )
    roles = [r for r in MARKERS if any(m.get('role') == r for m in models)]
    fig.legend(
        handles=[
            plt.Line2D(
                [],
                [],
                linestyle='',
                marker=MARKERS[r]['marker'],
                markersize=9 if r == 'teacher' else 7,
                markerfacecolor=MARKERS[r]['facecolors'],
                markeredgecolor=MARKERS[r]['edgecolors'],
                label=ROLE_NAMES[r],
            )
            for r in roles
        ],
        loc='lower center',
        ncol=len(roles),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.canvas.draw()
    labels = [m['label'] for m in models]
    for ax, values in zip(axes, columns):
        _label_points(ax, list(zip(speed, values)), labels)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: str) -> dict[str, str]:
    """Write the JSON, the Markdown and the plot into ``out_dir``; their paths."""
    paths = output_paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(
        paths['json'],
        lambda fh: (json.dump(report, fh, indent=2, sort_keys=False), fh.write('\n')),
    )
    atomic_write(paths['markdown'], lambda fh: fh.write(markdown(report)))
    plot(report, paths['plot'])
    return paths
