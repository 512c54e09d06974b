"""What a search writes in ``--out``, all derived from the study's storage.

- ``trials.json``: the settings, the teacher's figures, every trial (state,
  parameters, student, figures, validation curve, pruning reason or error,
  the exact training command) and the Pareto front;
- ``pareto.md``: the front as a table, and for each front trial its recipe
  file and the full ``parlai train_model`` command;
- ``pareto.png``: every completed trial and the front, quality against speedup;
- ``recipes/trial-NNNN.json``: a ``--recipe`` file per front trial.

Every file is written atomically; several workers may rewrite them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import DistillationError
from ..fileio import atomic_path, atomic_write
from .baselines import (
    baseline_candidate,
    comparison,
    family_of,
    shape_name,
    stored_baselines,
)
from .candidate import candidate_from_data
from .commands import StudyCommand, full_budget, full_command, recipe_data
from .pareto import markdown, plot
from .settings import SearchSettings, safe_url

FILES = {'json': 'trials.json', 'markdown': 'pareto.md', 'plot': 'pareto.png'}
RECIPES_DIR = 'recipes'


def check_outputs_belong(out: str, study_name: str) -> None:
    """Refuse an ``--out`` that holds the outputs of another study (one line)."""
    path = os.path.join(out, FILES['json'])
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding='utf-8') as fh:
            other = json.load(fh).get('study')
    except (OSError, ValueError, AttributeError):
        other = None
    if other != study_name:
        raise DistillationError(
            f'--out {out} holds the outputs of another study ({other!r}): give each '
            'study its own --out'
        )


def recipe_path(out: str, number: int) -> str:
    """Where the recipe file of trial ``number`` goes."""
    return os.path.join(out, RECIPES_DIR, f'trial-{number:04d}.json')


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def trial_data(t: FrozenTrial) -> dict[str, Any]:
    """One trial as JSON-ready data."""
    attrs = t.user_attrs
    duration = t.duration.total_seconds() if t.duration else None
    return {
        'number': t.number,
        'state': t.state.name.lower(),
        'values': list(t.values) if t.values else None,
        'params': dict(t.params),
        'student': attrs.get('candidate'),
        'metrics': attrs.get('metrics'),
        'curve': attrs.get('curve', []),
        'cost': attrs.get('cost'),
        'pruned': attrs.get('pruned'),
        'repeat_of': attrs.get('repeat_of'),
        'error': attrs.get('error'),
        'command': attrs.get('command'),
        'worker': attrs.get('worker'),
        'start': t.datetime_start.isoformat() if t.datetime_start else None,
        'seconds': duration,
    }


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The completed trials no other completed trial dominates, slowest first
    (a trial that repeats an earlier one's point appears once, as the earlier)."""
    trials = [
        t
        for t in study.best_trials
        if t.state == TrialState.COMPLETE and 'repeat_of' not in t.user_attrs
    ]
    return sorted(trials, key=lambda t: (t.values[1], t.number))


def choose(front: list[FrozenTrial], target: float | None, maximize: bool) -> Any:
    """The best-quality front trial at least ``target`` times faster (or None)."""
    if target is None:
        return None
    fast = [t for t in front if t.values[1] >= target]
    if not fast:
        return None
    pick = max if maximize else min
    return pick(fast, key=lambda t: t.values[0])


def search_data(study: optuna.Study, s: SearchSettings) -> dict[str, Any]:
    """Everything ``trials.json`` holds."""
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(study)
    stored = study.user_attrs.get('settings', {})
    maximize = stored.get('quality', s.quality) != 'ppl'
    chosen = choose(front, s.target_speedup, maximize)
    counts = {state.name.lower(): 0 for state in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    recipes, commands = {}, {}
    teacher = study.user_attrs.get('teacher', {})
    baselines = stored_baselines(study)
    for t in front:
        student = candidate_from_data(t.user_attrs['candidate'])
        key = str(t.number)
        recipes[key] = recipe_path(s.out, t.number)
        study_command = StudyCommand(
            stored.get('teacher', s.teacher),
            stored.get('task', s.task),
            s.datapath,
            stored.get('train_args', []),
            stored.get('task_args', []),
        )
        budget = full_budget(s.full_steps, s.quality_examples)
        students = os.path.join(s.out, 'students')
        model = os.path.join(students, f'trial-{t.number:04d}', 'model')
        baseline = baseline_candidate(student, family_of(student))
        commands[key] = {
            'with_recipe': full_command(
                student, study_command, model, budget, recipe_file=recipes[key]
            ),
            'written_out': full_command(student, study_command, model, budget),
            # The no-teacher student of the same shape, on the same budget.
            'baseline': full_command(
                baseline,
                study_command,
                os.path.join(students, f'baseline-{t.number:04d}', 'model'),
                budget,
            ),
        }
    return _clean(
        {
            'study': study.study_name,
            'storage': safe_url(s.storage_url),
            'objectives': [
                {
                    'name': stored.get('quality', s.quality),
                    'direction': study.directions[0].name.lower(),
                },
                {'name': s.speed_metric, 'direction': study.directions[1].name.lower()},
            ],
            'settings': stored,
            'sampler': s.sampler,
            'teacher': teacher,
            'counts': counts,
            'front': [t.number for t in front],
            'chosen': chosen.number if chosen else None,
            'target_speedup': s.target_speedup,
            'recipes': recipes,
            'commands': commands,
            'baselines': baselines,
            'trials': [
                _with_baseline(trial_data(t), baselines, teacher) for t in trials
            ],
        }
    )


def _with_baseline(data: dict, baselines: dict, teacher: dict) -> dict:
    """A completed trial's record, with its figures against a baseline of its shape."""
    if data['state'] != 'complete' or not data['student']:
        return data
    record = baselines.get(shape_name(data['student']['shape']))
    if record is not None:
        data['baseline'] = {
            'shape': record['shape'],
            **comparison(data['number'], data['metrics'], record, teacher),
        }
    return data


def write_recipes(s: SearchSettings, data: dict) -> None:
    """A recipe file for every trial of the front; those of former front trials go."""
    folder = os.path.join(s.out, RECIPES_DIR)
    if os.path.isdir(folder):
        current = {os.path.basename(p) for p in data['recipes'].values()}
        for name in os.listdir(folder):
            if (
                name.startswith('trial-')
                and name.endswith('.json')
                and name not in current
            ):
                os.unlink(os.path.join(folder, name))
    teacher = data['teacher']
    by_number = {t['number']: t for t in data['trials']}
    for number, path in data['recipes'].items():
        t = by_number[int(number)]
        m = t['metrics']
        student = candidate_from_data(t['student'])
        source = (
            f'python -m anti_scaling.scripts.search: study {data["study"]} trial '
            f'{number}: token accuracy {m["token_acc"]:.4f} ({100 * m["retained_token_acc"]:.1f}% '
            f'of the teacher\'s), perplexity {m["ppl"]:.2f}, {m["speedup"]:.2f}x faster per '
            f'reply ({m["speedup_per_token"]:.2f}x per token) after '
            f'{data["settings"].get("steps")} steps'
        )
        note = (
            'Measured after a flash distillation (the step budget above); train the '
            'student with a full budget before relying on it.'
        )
        recipe = recipe_data(
            student,
            f'{data["study"]}_trial_{number}',
            teacher.get('path', s.teacher),
            teacher.get('shape', {}),
            source,
            note,
        )
        atomic_write(
            path, lambda fh, r=recipe: (json.dump(r, fh, indent=2), fh.write('\n'))
        )


def write_outputs(study: optuna.Study, s: SearchSettings) -> dict[str, str]:
    """Write every output file into ``--out``; their paths."""
    os.makedirs(s.out, exist_ok=True)
    data = search_data(study, s)
    paths = {kind: os.path.join(s.out, name) for kind, name in FILES.items()}
    atomic_write(
        paths['json'], lambda fh: (json.dump(data, fh, indent=2), fh.write('\n'))
    )
    write_recipes(s, data)
    atomic_write(paths['markdown'], lambda fh: fh.write(markdown(data)))
    with atomic_path(paths['plot']) as tmp:
        plot(data, tmp)
    return paths


def summary_line(t: FrozenTrial, study: optuna.Study, s: SearchSettings) -> str:
    """One line for a finished trial: student, losses, figures or why it stopped."""
    data = trial_data(t)
    head = f'trial {t.number}'
    if data['student']:
        student = candidate_from_data(data['student'])
        head += f' | {student.label()} | {student.losses_label()}'
    seconds = f'{data["seconds"]:.0f} s' if data['seconds'] is not None else ''
    if t.state == TrialState.COMPLETE:
        m = data['metrics']
        body = (
            f'token acc {m["token_acc"]:.4f} ({100 * m["retained_token_acc"]:.1f}% of '
            f'teacher), ppl {m["ppl"]:.2f} | {m["speedup"]:.2f}x per reply, '
            f'{m["speedup_per_token"]:.2f}x per token'
        )
        if 'repeat_of' in t.user_attrs:
            body += f' (repeats trial {t.user_attrs["repeat_of"]}: not trained again)'
    elif t.state == TrialState.PRUNED:
        body = 'pruned: ' + (
            (data['pruned'] or {}).get('reason') or 'no reason recorded'
        )
    else:
        body = f'{t.state.name.lower()}: {data["error"] or "see its train.log"}'
    return ' | '.join(part for part in (head, body, seconds) if part)
