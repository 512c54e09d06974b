"""What a search runs: the settings of one command, and the part a study fixes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import DistillationError, check_at_least_one

QUALITY_METRICS = {'token_acc': 'maximize', 'ppl': 'minimize'}
SPEED_METRICS = {'per_reply': 'speedup', 'per_token': 'speedup_per_token'}
SAMPLERS = ('tpe', 'nsga2')
#: Which front trials get a no-teacher baseline of their shape (``--train-baselines``).
BASELINE_CHOICES = ('chosen', 'front')
DEFAULT_STUDY = 'search'
#: Flags the search sets on every trial itself (the budget and validation).
BUDGET_FLAGS = (
    '--max-train-steps',
    '-vstep',
    '--validation-every-n-steps',
    '-veps',
    '--validation-every-n-epochs',
    '-vtim',
    '--validation-every-n-secs',
    '-mf',
    '--model-file',
    '--num-epochs',
    '-eps',
    '--max-train-time',
    '-ttim',
)


def safe_url(url: str) -> str:
    """``url`` with any password hidden (for messages and files)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@dataclass
class SearchSettings:
    """Every setting of one search command (see ``scripts/search.py`` for each)."""

    teacher: str
    task: str
    out: str
    trials: int
    datapath: str
    storage: str | None = None
    study_name: str = DEFAULT_STUDY
    space_file: str | None = None
    params: list[str] = field(default_factory=list)
    sampler: str = 'tpe'
    sampler_seed: int | None = None
    startup_trials: int = 10
    population: int = 10
    steps: int = 200
    valid_every: int = 50
    valid_examples: int = 200
    quality_examples: int = 500
    timing_examples: int = 50
    eval_batchsize: int = 32
    warmup: int = 2
    quality: str = 'token_acc'
    speed: str = 'per_reply'
    prune: bool = True
    prune_margin: float = 0.05
    prune_min_trials: int = 1
    train_args: list[str] = field(default_factory=list)
    task_args: list[str] = field(default_factory=list)
    threads: int | None = None
    full_steps: int = 10000
    target_speedup: float | None = None
    train_baselines: str | None = None
    keep_models: bool = False
    timeout: float | None = None
    progress: bool = True
    verbose: bool = False

    @property
    def storage_url(self) -> str:
        """``--storage``, or SQLite in ``--out``."""
        if self.storage:
            return self.storage
        return 'sqlite:///' + os.path.abspath(os.path.join(self.out, 'study.db'))

    @property
    def directions(self) -> list[str]:
        """optuna's directions of (quality, speedup)."""
        return [QUALITY_METRICS[self.quality], 'maximize']

    @property
    def speed_metric(self) -> str:
        """The figure the speed objective is: ``speedup`` or ``speedup_per_token``."""
        return SPEED_METRICS[self.speed]


def check_settings(s: SearchSettings) -> None:
    """One line for settings no search can run with (before anything loads)."""
    at_least_one = (
        'trials',
        'steps',
        'valid_examples',
        'quality_examples',
        'timing_examples',
        'eval_batchsize',
        'full_steps',
        'population',
    )
    check_at_least_one(s, at_least_one)
    if s.valid_every < 0:
        raise DistillationError('--valid-every must be >= 0 (0: no validation)')
    if s.warmup < 0 or s.startup_trials < 0 or s.prune_min_trials < 1:
        raise DistillationError(
            '--warmup and --startup-trials must be >= 0, --prune-min-trials >= 1'
        )
    if not 0 <= s.prune_margin < 1:
        raise DistillationError('--prune-margin must be in [0, 1)')
    if s.quality not in QUALITY_METRICS:
        raise DistillationError(
            f'--quality must be one of {", ".join(QUALITY_METRICS)}'
        )
    if s.speed not in SPEED_METRICS:
        raise DistillationError(f'--speed must be one of {", ".join(SPEED_METRICS)}')
    if s.sampler not in SAMPLERS:
        raise DistillationError(f'--sampler must be one of {", ".join(SAMPLERS)}')
    if s.population < 2 and s.sampler == 'nsga2':
        raise DistillationError('--population must be >= 2 for NSGA-II')
    if s.train_baselines is not None and s.train_baselines not in BASELINE_CHOICES:
        raise DistillationError(
            f'--train-baselines must be one of {", ".join(BASELINE_CHOICES)}'
        )
    if s.train_baselines == 'chosen' and s.target_speedup is None:
        raise DistillationError(
            '--train-baselines chosen needs --target-speedup (which chooses the '
            'front trial); or use --train-baselines front'
        )
    budget = [a for a in s.train_args if a.split('=')[0] in BUDGET_FLAGS]
    if budget:
        raise DistillationError(
            f'--train-args must not set {budget[0]}: the search sets the budget and '
            'validation of every trial (--steps, --valid-every) and its model files'
        )
    if os.path.exists(s.out) and not os.path.isdir(s.out):
        raise DistillationError(f'--out {s.out} exists and is not a directory')


def study_fingerprint(
    s: SearchSettings, space: dict[str, Any], train_args: list[str]
) -> dict[str, Any]:
    """What trials of one study must share to be compared (checked on resume)."""
    return {
        'teacher': os.path.abspath(s.teacher),
        'task': s.task,
        'task_args': list(s.task_args),
        'train_args': list(train_args),
        'steps': s.steps,
        'valid_every': s.valid_every,
        'valid_examples': s.valid_examples,
        'quality_examples': s.quality_examples,
        'timing_examples': s.timing_examples,
        'warmup': s.warmup,
        'quality': s.quality,
        'speed': s.speed,
        'space': space,
    }
