"""The front in Markdown, and the plot of every trial: quality against speedup.

Both read the data of :func:`~.outputs.search_data` (what ``trials.json`` holds).
"""

from __future__ import annotations

from typing import Any

from ..report.margins import markdown_lines
from .candidate import candidate_from_data


def _fmt(value: Any, digits: int) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def _settings_text(data: dict) -> list[str]:
    s, t = data['settings'], data['teacher']
    shape = t.get('shape', {})
    quality, speed = data['objectives'][0]['name'], data['objectives'][1]['name']
    speed_text = 'per reply' if speed == 'speedup' else 'per generated token'
    return [
        f"Teacher `{t.get('path')}` ({shape.get('n_encoder_layers')} + "
        f"{shape.get('n_decoder_layers')} layers, width {shape.get('embedding_size')}, "
        f"FFN {shape.get('ffn_size')}, {shape.get('n_heads')} heads, "
        f"{_fmt((t.get('params') or 0) / 1e6, 2)}M parameters): token accuracy "
        f"{_fmt(t.get('token_acc'), 4)}, perplexity {_fmt(t.get('ppl'), 2)} on the "
        f"first {t.get('quality_examples')} examples of the valid split of "
        f"`{s.get('task')}`.",
        '',
        f"Each trial distils one student for {s.get('steps')} steps with "
        f"`{' '.join(s.get('train_args', []))}`, validating every "
        f"{s.get('valid_every')} steps on {s.get('valid_examples')} examples (hopeless "
        'trials are pruned there: see docs/search.md), then measures it: token '
        'accuracy and perplexity under teacher forcing on the same valid examples '
        "as the teacher, and greedy generation of the first "
        f"{t.get('timing_examples')} of them, batch size 1, "
        f"{s.get('warmup')} warm-up batches excluded, teacher and student taking "
        'turns in the same process; speedup = the teacher\'s mean seconds per reply '
        '/ the student\'s (per token: the same per generated token). Objectives: '
        f"{quality} ({data['objectives'][0]['direction']}) and speedup {speed_text} "
        f"(maximize); sampler {data['sampler']}.",
    ]


def _front_rows(data: dict) -> list[str]:
    by_number = {t['number']: t for t in data['trials']}
    rows = [
        '| trial | student | losses | token acc (of teacher) | ppl | teacher agr. '
        '| speedup/reply | speedup/token | params |',
        '|---:|---|---|---:|---:|---:|---:|---:|---:|',
    ]
    for number in data['front']:
        t = by_number[number]
        m, student = t['metrics'], candidate_from_data(t['student'])
        mark = ' (chosen)' if number == data['chosen'] else ''
        rows.append(
            f"| {number}{mark} | {student.label()} | {student.losses_label()} | "
            f"{m['token_acc']:.4f} ({100 * m['retained_token_acc']:.1f}%) | "
            f"{m['ppl']:.2f} | {m['teacher_agreement']:.4f} | {m['speedup']:.2f}x | "
            f"{m['speedup_per_token']:.2f}x | {m['params'] / 1e6:.2f}M |"
        )
    return rows


def markdown(data: dict) -> str:
    """``pareto.md``: settings, counts, the front, and each front trial's commands."""
    c = data['counts']
    lines = [
        f"# Student search `{data['study']}`",
        '',
        *_settings_text(data),
        '',
        f"Trials: {c.get('complete', 0)} completed, {c.get('pruned', 0)} pruned, "
        f"{c.get('fail', 0)} failed, {c.get('running', 0) + c.get('waiting', 0)} "
        f"running or queued. Storage: `{data['storage']}`.",
        '',
        '## Pareto front',
        '',
    ]
    if not data['front']:
        lines += ['No trial has completed yet.', '']
        return '\n'.join(lines)
    lines += _front_rows(data)
    lines.append('')
    if data['target_speedup'] is not None:
        lines.append(
            f"Chosen (best quality at least {data['target_speedup']:g}x faster): "
            + (
                f"trial {data['chosen']}."
                if data['chosen'] is not None
                else 'none yet.'
            )
        )
        lines.append('')
    lines += _baseline_section(data)
    lines += [
        '## Training the front students in full',
        '',
        'Each command trains the student with a full budget (validation perplexity, '
        'patience 5); the recipe file holds its shape and losses for `--recipe`.',
        '',
    ]
    for number in data['front']:
        commands, recipe = data['commands'][str(number)], data['recipes'][str(number)]
        lines += [
            f'### Trial {number}',
            '',
            f'Recipe file: `{recipe}`',
            '',
            '```',
            commands['with_recipe'],
            '```',
            '',
            'Written out:',
            '',
            '```',
            commands['written_out'],
            '```',
            '',
            'Its no-teacher baseline (same shape and budget, every distillation '
            'coefficient 0, trained from scratch), to compare at the end:',
            '',
            '```',
            commands['baseline'],
            '```',
            '',
        ]
    return '\n'.join(lines)


def _baseline_section(data: dict) -> list[str]:
    """The front trials against a no-teacher student of their shape (if trained)."""
    by_number = {t['number']: t for t in data['trials']}
    pairs = [
        by_number[n]['baseline'] for n in data['front'] if 'baseline' in by_number[n]
    ]
    if not pairs:
        return []
    s = data['settings']
    return [
        '## Against a no-teacher baseline of the same shape',
        '',
        f"Each baseline is a student of the trial's shape trained without a teacher "
        f"(from scratch, every distillation coefficient 0) for the same {s.get('steps')} "
        'steps, with the same flags and seed, and measured the same way. Token accuracy '
        'and perplexity on the quality examples, F1 of greedy replies on the timed ones.',
        '',
        *markdown_lines(pairs, ['greedy']),
        '',
    ]


def staircase(front: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The outline of what a front of (speedup, quality) points attains, both
    maximised: from the slowest point, for each faster one, down to its quality
    at the previous speedup, then across to its speedup.

    ``[(x1, y1), (x2, y2)]`` with ``x1 < x2``, ``y1 > y2`` gives
    ``[(x1, y1), (x1, y2), (x2, y2)]``.
    """
    points = sorted(front)
    line = points[:1]
    for (x_prev, _), (x, y) in zip(points, points[1:]):
        line += [(x_prev, y), (x, y)]
    return line


def plot(data: dict, path: str) -> None:
    """``pareto.png``: every completed trial, the front and the teacher."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    quality = data['objectives'][0]['name']
    done = [t for t in data['trials'] if t['state'] == 'complete' and t['values']]
    front = [t for t in done if t['number'] in set(data['front'])]
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {
        'wide': {'marker': 'o', 'color': 'tab:blue'},
        'narrow': {'marker': 's', 'color': 'tab:orange'},
    }
    for kind, style in styles.items():
        points = [t['values'] for t in done if (t['student'] or {}).get('kind') == kind]
        if points:
            ax.scatter(
                [p[1] for p in points],
                [p[0] for p in points],
                alpha=0.6,
                s=36,
                label=f'{kind} students',
                **style,
            )
    if front:
        xs = [t['values'][1] for t in front]
        ys = [t['values'][0] for t in front]
        line = staircase(list(zip(xs, ys)))
        ax.plot(*zip(*line), color='black', linewidth=1, zorder=2)
        ax.scatter(xs, ys, facecolors='none', edgecolors='black', s=110, label='front')
        for t, x, y in zip(front, xs, ys):
            ax.annotate(
                str(t['number']),
                (x, y),
                textcoords='offset points',
                xytext=(6, 4),
                fontsize=8,
            )
    teacher_q = data['teacher'].get(quality)
    if teacher_q is not None:
        ax.scatter(
            [1.0], [teacher_q], marker='*', s=180, color='black', label='teacher'
        )
    speeds = [t['values'][1] for t in done] + [1.0]
    if min(speeds) > 0 and max(speeds) / min(speeds) > 8:
        ax.set_xscale('log')
    if data['target_speedup'] is not None:
        ax.axvline(data['target_speedup'], color='grey', linestyle=':', linewidth=1)
    c = data['counts']
    ax.set_title(
        f"{data['study']}: {c.get('complete', 0)} completed, {c.get('pruned', 0)} "
        'pruned trials',
        fontsize=10,
    )
    ax.set_xlabel(f"{data['objectives'][1]['name'].replace('_', ' ')} over the teacher")
    better = 'higher' if quality != 'ppl' else 'lower'
    ax.set_ylabel(f'{quality} on the valid examples ({better} is better)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc='best')
    fig.tight_layout()
    fig.savefig(path, format='png', dpi=120)
    plt.close(fig)
