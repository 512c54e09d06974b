"""No-teacher baselines of the searched students: what the teacher adds at that shape.

With ``--train-baselines chosen|front``, after its trials the search trains,
for the chosen trial (``--target-speedup``) or every front trial, a student of
the same shape *without a teacher*: the narrow agent (trained from scratch,
also for wide students, whose initialisation from the teacher's layers is
teacher knowledge too), every distillation coefficient 0 and
``--task-loss-coeff 1`` (the teacher does not run), with the trials' budget,
validation, optimiser flags and seed. It is measured as a trial is. Its
figures give the teacher's margin over that shape, the student's gain and the
share of the gap it closed (:mod:`anti_scaling.report.margins`), with a warning
when the margin is too small for distillation to help much.

A baseline depends only on the shape (and the study's fixed settings), so one
serves every trial of that shape; baselines are kept in the study's user
attributes (``baseline:<shape>``), never trained twice by one worker, and a
finished study gets its baselines by running the same command with
``--train-baselines``.
"""

from __future__ import annotations

import os
import shlex
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from ..errors import describe_exception
from ..loss_terms import COEFFICIENTS
from ..option_keys import SHAPE_KEYS
from ..report.margins import below_baseline_line, pair, quality, summary_line
from ..report.uncertainty import below_baseline, forced_intervals
from .candidate import AGENTS, Candidate, candidate_from_data
from .commands import trial_argv
from .measure import TeacherReference
from .settings import SearchSettings
from .trial import curve_point, train_and_measure

ATTR_PREFIX = 'baseline:'
BASELINES_DIR = 'baselines'


def shape_name(shape: Mapping[str, int]) -> str:
    """E.g. ``1+2 d128 f512 h4``: what a baseline is kept under."""
    return (
        f"{shape['n_encoder_layers']}+{shape['n_decoder_layers']} "
        f"d{shape['embedding_size']} f{shape['ffn_size']} h{shape['n_heads']}"
    )


def baseline_dir(out: str, name: str) -> str:
    """Where the baseline of shape ``name`` keeps its log (and models if kept)."""
    return os.path.join(out, BASELINES_DIR, name.replace(' ', '_'))


def family_of(candidate: Candidate) -> str:
    """``bart`` or ``transformer``: the family of the candidate's agent."""
    return next(f for (f, _), agent in AGENTS.items() if agent == candidate.agent)


def baseline_candidate(candidate: Candidate, family: str) -> Candidate:
    """The no-teacher student of ``candidate``'s shape (module docstring)."""
    options: dict[str, Any] = {k: int(candidate.shape[k]) for k in SHAPE_KEYS}
    options.update({dest: 0.0 for dest in COEFFICIENTS})
    options['task_loss_coeff'] = 1.0
    return Candidate(
        'baseline', AGENTS[(family, 'narrow')], dict(candidate.shape), options
    )


def stored_baselines(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every baseline the study holds, by shape name."""
    return {
        key[len(ATTR_PREFIX) :]: value
        for key, value in study.user_attrs.items()
        if key.startswith(ATTR_PREFIX)
    }


def comparison(
    trial_number: int,
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any],
    teacher: Mapping[str, Any],
) -> dict[str, Any]:
    """The teacher's margin over ``baseline``, the trial's gain, and the warning.

    Where both were measured with per-example sums (on the same examples), the
    gain carries its paired 95% interval (``intervals``) and ``below_baseline``
    names the measures where the trial ends below the baseline.

    Token accuracy and perplexity on the quality examples; F1 of greedy replies
    on the timed examples (the teacher's, measured with the baseline).
    """
    b = baseline['metrics']
    p = pair(
        f'trial {trial_number}',
        f"baseline {baseline['shape']}",
        baseline['shape'],
        quality(
            teacher['token_acc'], teacher['ppl'], {'greedy': b['teacher_f1_greedy']}
        ),
        quality(metrics['token_acc'], metrics['ppl'], {'greedy': metrics['f1_greedy']}),
        quality(b['token_acc'], b['ppl'], {'greedy': b['f1_greedy']}),
    )
    if metrics.get('per_example') and b.get('per_example'):
        # Both measured on the same valid examples: the gain's paired interval.
        p['intervals'] = forced_intervals(
            [b['per_example'], metrics['per_example']], [(1, 0)]
        )[1][0]
        p['below_baseline'] = below_baseline(p)
    return p


def train_baseline(
    candidate: Candidate,
    s: SearchSettings,
    ref: TeacherReference,
    train_args: list[str],
) -> dict[str, Any]:
    """Train and measure the baseline of ``candidate``'s shape; its record."""
    baseline = baseline_candidate(candidate, ref.shape.family)
    name = shape_name(candidate.shape)
    folder = baseline_dir(s.out, name)
    argv = trial_argv(baseline, s, train_args)
    curve: list[dict[str, float]] = []

    def on_validation(step: int, report: dict) -> None:
        curve.append(curve_point(step, report))

    figures = train_and_measure(argv, folder, ref, on_validation, s)
    return {
        'shape': name,
        'student': baseline.as_data(),
        'metrics': figures,
        'curve': curve,
        'command': 'parlai train_model ' + shlex.join(argv),
    }


def trials_needing_baselines(
    front: list[optuna.trial.FrozenTrial], chosen: Any, which: str | None
) -> list[optuna.trial.FrozenTrial]:
    """The front trials ``--train-baselines`` asks for."""
    if which == 'front':
        return list(front)
    if which == 'chosen' and chosen is not None:
        return [chosen]
    return []


def train_missing_baselines(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    s: SearchSettings,
    ref: TeacherReference,
    train_args: list[str],
    echo: Callable[[str], None],
    after_each: Callable[[], Any],
) -> None:
    """Train the baselines of ``trials``' shapes that the study does not hold yet.

    Prints, per trial, its figures against the baseline (and the warning).
    """
    teacher = study.user_attrs.get('teacher', {})
    for t in trials:
        candidate = candidate_from_data(t.user_attrs['candidate'])
        name = shape_name(candidate.shape)
        record = stored_baselines(study).get(name)
        if record is None:
            echo(
                f'baseline {name}: training without a teacher for trial {t.number} '
                f'({s.steps} steps, the same flags and seed)'
            )
            try:
                record = train_baseline(candidate, s, ref, train_args)
            except Exception as e:
                folder = baseline_dir(s.out, name)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, 'train.log'), 'a') as fh:
                    fh.write(traceback.format_exc())
                echo(f'baseline {name} failed: {describe_exception(e)} (see {folder})')
                continue
            study.set_user_attr(ATTR_PREFIX + name, record)
            after_each()
        p = comparison(t.number, t.user_attrs['metrics'], record, teacher)
        echo(summary_line(p))
        for line in (p['warning'], below_baseline_line(p)):
            if line:
                echo(line)
