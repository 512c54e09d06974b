"""The search: check everything, open (or resume) the optuna study, run trials.

Studies live in optuna's relational storage: SQLite in ``--out`` by default,
or any database URL SQLAlchemy opens (``--storage``). A study is never
overwritten: the same command resumes it, and a study created with other
settings is refused. Several processes (or machines, with a database server)
work on one study when given the same ``--storage`` and ``--study-name``; each
counts the study's finished trials against ``--trials``. Running trials send a
heartbeat; one whose process died is marked failed after the grace period and
queued once more with the same parameters.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from ..errors import DistillationError, describe_exception
from ..model_files import plain_model_name
from ..report.models import check_model_file
from .baselines import train_missing_baselines, trials_needing_baselines
from .checks import check_space
from .commands import default_train_args
from .measure import TeacherReference, load_teacher, prepare_reference
from .outputs import (
    check_outputs_belong,
    choose,
    pareto_front,
    summary_line,
    write_outputs,
)
from .prune import PruneRule
from .settings import SearchSettings, check_settings, safe_url, study_fingerprint
from .space import (
    ParamSpec,
    build_space,
    parameter_kinds,
    parse_cli_spec,
    read_space_file,
    searchable_flags,
    space_data,
)
from .trial import TrialRunner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
MAX_FAILURES_IN_A_ROW = 3


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """optuna's storage at ``url``, with heartbeats; one line if it cannot open."""
    engine_kwargs = (
        {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                ),
            )
    except Exception as e:
        raise DistillationError(
            f'--storage {safe_url(url)}: cannot open it ({describe_exception(e)})'
        ) from None


def make_sampler(s: SearchSettings) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE (default) or NSGA-II."""
    if s.sampler == 'nsga2':
        return optuna.samplers.NSGAIISampler(
            population_size=s.population, seed=s.sampler_seed
        )
    return optuna.samplers.TPESampler(
        n_startup_trials=s.startup_trials,
        seed=s.sampler_seed,
        constant_liar=True,
    )


def _first_difference(stored: dict, current: dict) -> str:
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            return f'{key}: {stored.get(key)!r} there, {current.get(key)!r} now'
    return ''


def load_or_create_study(
    s: SearchSettings, storage: Any, fingerprint: dict[str, Any]
) -> tuple[optuna.Study, bool]:
    """The study ``--study-name`` in ``storage`` (created if missing); resumed?

    An existing study must have been created with the same settings
    (:func:`~.settings.study_fingerprint`); otherwise one line says which
    setting differs. Nothing is ever deleted.
    """
    sampler = make_sampler(s)
    try:
        study = optuna.load_study(
            study_name=s.study_name, storage=storage, sampler=sampler
        )
        resumed = True
    except KeyError:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            study_name=s.study_name,
            directions=s.directions,
            load_if_exists=True,
        )
        resumed = False
    current = json.loads(json.dumps(fingerprint))
    stored = study.user_attrs.get('settings')
    if stored is None:
        study.set_user_attr('settings', current)
    elif stored != current:
        raise DistillationError(
            f'study {s.study_name!r} in {safe_url(s.storage_url)} was created with '
            f'other settings ({_first_difference(stored, current)}); rerun it with '
            'its own settings, or give a new --study-name (or --out)'
        )
    return study, resumed


def resolve_space(s: SearchSettings, shape: Any, flags: dict) -> dict[str, ParamSpec]:
    """Defaults, then ``--space FILE``, then ``--param``; checked."""
    kinds = parameter_kinds(flags)
    file_specs = read_space_file(s.space_file, kinds) if s.space_file else None
    cli_specs = [parse_cli_spec(text, kinds) for text in s.params]
    space = build_space(shape, flags, file_specs, cli_specs)
    check_space(space, shape, flags)
    return space


def count_finished(study: optuna.Study) -> int:
    """Trials that count against ``--trials``: completed or pruned."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass
class Search:
    """Everything checked and loaded: ready to run trials."""

    settings: SearchSettings
    space: dict[str, ParamSpec]
    reference: TeacherReference
    study: optuna.Study
    resumed: bool
    runner: TrialRunner


def prepare_search(s: SearchSettings) -> Search:
    """Check the settings, teacher, space, task and storage; open the study.

    Every check raises :class:`DistillationError` with one line before any
    trial; the study (and ``--out``) is created only once all passed.
    """
    check_settings(s)
    if not s.verbose:
        # Independent-sampling notes of TPE on conditional parameters, study
        # creation: the search prints its own line per trial.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    teacher_opt = check_model_file(s.teacher, '--teacher')
    family = (
        'bart' if plain_model_name(teacher_opt, s.teacher) == 'bart' else 'transformer'
    )
    flags = searchable_flags(family)
    if s.threads:
        torch.set_num_threads(s.threads)
    teacher = load_teacher(s.teacher, s.datapath)
    space = resolve_space(s, teacher[1], flags)
    train_args = default_train_args(teacher_opt) + list(s.train_args)
    reference = prepare_reference(
        teacher,
        s.teacher,
        s.task,
        s.task_args,
        s.datapath,
        s.quality_examples,
        s.timing_examples,
        s.eval_batchsize,
        s.warmup,
    )
    check_outputs_belong(s.out, s.study_name)
    if not s.storage:
        os.makedirs(s.out, exist_ok=True)
    storage = open_storage(s.storage_url)
    fingerprint = study_fingerprint(s, space_data(space), train_args)
    study, resumed = load_or_create_study(s, storage, fingerprint)
    if 'teacher' not in study.user_attrs:
        study.set_user_attr('teacher', json.loads(json.dumps(reference.figures())))
    os.makedirs(s.out, exist_ok=True)
    rule = (
        PruneRule(
            metric=s.quality,
            higher_is_better=s.quality != 'ppl',
            margin=s.prune_margin,
            min_trials=s.prune_min_trials,
        )
        if s.prune and s.valid_every > 0
        else None
    )
    runner = TrialRunner(s, space, reference, train_args, rule)
    return Search(s, space, reference, study, resumed, runner)


def _objective(runner: TrialRunner) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The runner, recording a failed trial's error (and traceback in its log)."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        try:
            return runner(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr('error', 'interrupted')
            raise
        except Exception as e:
            trial.set_user_attr('error', describe_exception(e))
            log = os.path.join(runner.trial_dir(trial.number), 'train.log')
            os.makedirs(os.path.dirname(log), exist_ok=True)
            with open(log, 'a', encoding='utf-8') as fh:
                fh.write(traceback.format_exc())
            raise

    return objective


def run_search(search: Search, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run trials until the study has ``--trials`` finished ones; write the outputs.

    Prints one line per trial (and a progress bar). Outputs are rewritten
    after every trial, and also when the run is interrupted. Returns the
    output paths.
    """
    s, study = search.settings, search.study
    done = count_finished(study)
    if done >= s.trials:
        echo(
            f'study {s.study_name!r} already has {done} finished trials '
            f'(--trials {s.trials}): no trial to run'
        )
        run_baselines(search, echo)
        return write_outputs(study, s)
    failures = [0]
    bar = tqdm(
        total=s.trials,
        initial=done,
        unit='trial',
        desc='search',
        disable=not s.progress,
    )
    write = tqdm.write if s.progress else echo

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        write(summary_line(trial, study, s))
        bar.n = min(count_finished(study), s.trials)
        bar.refresh()
        failures[0] = failures[0] + 1 if trial.state == TrialState.FAIL else 0
        if failures[0] >= MAX_FAILURES_IN_A_ROW:
            write(
                f'{failures[0]} trials failed in a row: stopping (see the train.log '
                'of each trial under trials/)'
            )
            study.stop()
        write_outputs(study, s)

    try:
        study.optimize(
            _objective(search.runner),
            callbacks=[
                optuna.study.MaxTrialsCallback(s.trials, states=FINISHED),
                after_trial,
            ],
            catch=(Exception,),
            timeout=s.timeout,
            gc_after_trial=True,
        )
    finally:
        bar.close()
        paths = write_outputs(study, s)
    if count_finished(study) >= s.trials:
        run_baselines(search, write)
        paths = write_outputs(study, s)
    return paths


def run_baselines(search: Search, echo: Callable[[str], None]) -> None:
    """``--train-baselines``: the no-teacher baselines of the chosen/front trials."""
    s, study = search.settings, search.study
    if not s.train_baselines:
        return
    front = pareto_front(study)
    maximize = study.user_attrs.get('settings', {}).get('quality', s.quality) != 'ppl'
    chosen = choose(front, s.target_speedup, maximize)
    trials = trials_needing_baselines(front, chosen, s.train_baselines)
    if not trials:
        echo(
            f'--train-baselines {s.train_baselines}: no baseline trained ('
            + (
                f'no front trial is {s.target_speedup:g}x faster'
                if front
                else 'no trial has completed'
            )
            + ')'
        )
        return
    train_missing_baselines(
        study,
        trials,
        s,
        search.reference,
        search.runner.train_args,
        echo,
        lambda: write_outputs(study, s),
    )
