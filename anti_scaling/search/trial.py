"""One trial: a flash distillation through ParlAI, pruning checks, the measurement.

The student trains in this process with ParlAI's own training loop
(:class:`FlashTrainLoop`) on exactly the arguments of
:func:`~.commands.trial_argv`; ParlAI's log goes to ``TRIAL_DIR/train.log``.
After the step budget the model is saved, stripped into a plain ParlAI model
(:func:`~anti_scaling.export.strip.remove_projection_matrices`) and measured
against the teacher (:func:`~.measure.measure_student`).
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from parlai.scripts.train_model import TrainLoop, load_eval_worlds, set_seed

from ..export.strip import remove_projection_matrices
from .candidate import sample_candidate
from .commands import trial_argv
from .measure import TeacherReference, measure_student
from .prune import PruneRule, Reference, prune_reason, reply_cost
from .settings import SearchSettings
from .space import ParamSpec

#: Figures kept from each validation report (the curve pruning compares).
CURVE_METRICS = ('token_acc', 'ppl', 'loss')


def curve_point(step: int, report: dict) -> dict[str, float]:
    """One point of a training curve: the step and the report's :data:`CURVE_METRICS`."""
    point = {'step': step}
    point.update({k: float(report[k]) for k in CURVE_METRICS if k in report})
    return point


class FlashTrainLoop(TrainLoop):
    """ParlAI's training loop; each validation report goes to ``on_validation``.

    ``on_validation(step, report)`` may raise (``optuna.TrialPruned``) to stop
    training. No best checkpoint is chosen: the model at the end of the step
    budget is the result, kept in memory (no ``-mf``).
    """

    def __init__(self, opt: Any, on_validation: Callable[[int, dict], None]) -> None:
        super().__init__(opt)
        self.on_validation = on_validation

    def validate(self) -> bool:
        from parlai.core.metrics import dict_report

        if self.valid_worlds is None:
            self.valid_worlds = load_eval_worlds(self.agent, self.opt, 'valid')
        report = self._run_eval(
            self.valid_worlds, self.opt, 'valid', self.opt['validation_max_exs']
        )
        if hasattr(self.agent, 'receive_metrics'):
            self.agent.receive_metrics(report)
        self.validate_time.reset()
        self.on_validation(int(self._train_steps), dict_report(report))
        return False

    def close(self) -> None:
        """Shut the validation worlds down."""
        for world in self.valid_worlds or []:
            world.shutdown()
        self.valid_worlds = None


@contextmanager
def parlai_log_to(path: str, console: bool = False) -> Iterator[None]:
    """Send ParlAI's log (INFO and up) to ``path``; on the console only errors."""
    from parlai.utils.logging import logger

    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding='utf-8')
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s | %(message)s'))
    level, stream_level = logger.level, logger.streamHandler.level
    _set_level(logger, logging.INFO)
    if not console:
        logger.streamHandler.setLevel(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        _set_level(logger, level)
        logger.streamHandler.setLevel(stream_level)


def _set_level(logger: logging.Logger, level: int) -> None:
    logger.setLevel(level)
    # ParlAI builds its logger outside logging's registry, so setLevel does not
    # clear the logger's cache of enabled levels: an INFO call made while the
    # level was ERROR would stay disabled.
    getattr(logger, '_cache', {}).clear()


def train_student(argv: list[str], on_validation: Callable[[int, dict], None]) -> Any:
    """Run ``parlai train_model argv`` in this process; the trained agent.

    Seeded before the student is built (narrow students start from random
    weights) and again before training, as ``parlai train_model`` does.
    """
    from parlai.scripts.train_model import setup_args

    opt = setup_args().parse_args(argv)
    if opt.get('seed') is not None:
        set_seed(opt['seed'])
    loop = FlashTrainLoop(opt, on_validation)
    try:
        if opt.get('seed') is not None:
            set_seed(opt['seed'])
        for _ in loop.train_steps():
            pass
        return loop.agent
    finally:
        loop.close()
        del loop
        gc.collect()


def save_plain(agent: Any, trial_dir: str) -> str:
    """Save the trained student and strip it into ``TRIAL_DIR/plain/model``."""
    model_file = os.path.join(trial_dir, 'model')
    agent.save(model_file)
    plain = os.path.join(trial_dir, 'plain', 'model')
    os.makedirs(os.path.dirname(plain), exist_ok=True)
    remove_projection_matrices(model_file, output=plain, backup=False, opt_only=True)
    return plain


def remove_models(trial_dir: str) -> None:
    """Delete a trial's model files, keeping its log."""
    for name in os.listdir(trial_dir):
        path = os.path.join(trial_dir, name)
        if name == 'plain':
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith('model'):
            os.unlink(path)


def completed_references(study: optuna.Study, metric: str) -> list[Reference]:
    """The completed trials' costs and validation curves (of ``metric``)."""
    refs = []
    for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    ):
        if 'cost' not in t.user_attrs:
            continue
        curve = {
            int(p['step']): float(p[metric]) for p in t.user_attrs.get('curve', [])
        }
        refs.append(Reference(t.number, float(t.user_attrs['cost']), curve))
    return refs


def repeat_of(
    study: optuna.Study, params: dict[str, Any], number: int
) -> optuna.trial.FrozenTrial | None:
    """The first finished (completed or pruned) trial other than ``number`` with
    exactly ``params``: every trial trains with the same seed and flags, so the
    sampler drawing a finished point again needs no second training."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=finished):
        if t.number != number and t.params == params:
            return t
    return None


@dataclass
class TrialRunner:
    """The objective optuna calls: one trial, returning (quality, speed)."""

    settings: SearchSettings
    space: dict[str, ParamSpec]
    reference: TeacherReference
    train_args: list[str]
    rule: PruneRule | None

    def trial_dir(self, number: int) -> str:
        """Where trial ``number`` keeps its log (and models with --keep-models)."""
        return os.path.join(self.settings.out, 'trials', f'{number:04d}')

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        s, ref = self.settings, self.reference
        # Enqueued and retried trials get their params back from suggest().
        candidate = sample_candidate(trial, self.space, ref.shape)
        trial.set_user_attr('candidate', candidate.as_data())
        trial.set_user_attr('curve', [])
        cost = reply_cost(
            candidate.shape, ref.shape.vocab, ref.context_tokens, ref.reply_tokens
        )
        trial.set_user_attr('cost', cost)
        trial_dir = self.trial_dir(trial.number)
        argv = trial_argv(candidate, s, self.train_args)
        trial.set_user_attr('command', 'parlai train_model ' + shlex.join(argv))
        trial.set_user_attr('worker', {'host': os.uname().nodename, 'pid': os.getpid()})
        earlier = repeat_of(trial.study, trial.params, trial.number)
        if earlier is not None:
            return self.repeat(trial, earlier)
        curve: list[dict[str, float]] = []

        def on_validation(step: int, report: dict) -> None:
            point = curve_point(step, report)
            curve.append(point)
            trial.set_user_attr('curve', curve)
            if self.rule is None or self.rule.metric not in point:
                return
            refs = completed_references(trial.study, self.rule.metric)
            reason = prune_reason(step, point[self.rule.metric], cost, refs, self.rule)
            if reason:
                trial.set_user_attr('pruned', {'step': step, 'reason': reason})
                raise optuna.TrialPruned(reason)

        figures = train_and_measure(argv, trial_dir, ref, on_validation, s)
        trial.set_user_attr('metrics', figures)
        return float(figures[s.quality]), float(figures[s.speed_metric])

    @staticmethod
    def repeat(
        trial: optuna.Trial, earlier: optuna.trial.FrozenTrial
    ) -> tuple[float, float]:
        """Give ``trial`` the outcome of ``earlier`` (same params), untrained."""
        trial.set_user_attr('repeat_of', earlier.number)
        trial.set_user_attr('curve', earlier.user_attrs.get('curve', []))
        if earlier.state == optuna.trial.TrialState.PRUNED:
            pruned = earlier.user_attrs.get('pruned', {})
            reason = f"repeats trial {earlier.number}: {pruned.get('reason', 'pruned')}"
            trial.set_user_attr(
                'pruned', {'step': pruned.get('step'), 'reason': reason}
            )
            raise optuna.TrialPruned(reason)
        trial.set_user_attr('metrics', earlier.user_attrs.get('metrics', {}))
        quality, speed = earlier.values
        return float(quality), float(speed)


def train_and_measure(
    argv: list[str],
    folder: str,
    ref: TeacherReference,
    on_validation: Callable[[int, dict], None],
    s: SearchSettings,
) -> dict[str, Any]:
    """Train ``parlai train_model argv`` here, measure the result against the teacher.

    ``folder`` starts empty (an earlier attempt's files are removed); ParlAI's
    log goes to ``folder/train.log``; the models are deleted afterwards unless
    ``--keep-models``. Returns :func:`~.measure.measure_student`'s figures,
    with the training and measuring seconds.
    """
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    start = time.perf_counter()
    with parlai_log_to(os.path.join(folder, 'train.log'), s.verbose):
        agent = train_student(argv, on_validation)
        plain = save_plain(agent, folder)
        del agent
        gc.collect()
        trained = time.perf_counter()
        figures = measure_student(plain, ref)
    figures['train_seconds'] = trained - start
    figures['measure_seconds'] = time.perf_counter() - trained
    if not s.keep_models:
        remove_models(folder)
    return figures
