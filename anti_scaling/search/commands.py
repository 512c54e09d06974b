"""The ``parlai train_model`` commands of a candidate, and its recipe file data.

A trial runs exactly :func:`trial_argv` (in process, without ``-mf``: the
search saves the model itself). For a chosen student, :func:`full_command`
trains it with a full budget, and :func:`recipe_data` is a recipe file for
``--recipe`` (read by :mod:`anti_scaling.agents.recipe_files`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..option_keys import SHAPE_KEYS
from .candidate import Candidate, flag_args, format_value
from .settings import SearchSettings

#: Optimisation options a search takes from the teacher's ``.opt`` by default.
OPTIMISATION_KEYS = (
    'batchsize',
    'optimizer',
    'learningrate',
    'betas',
    'adam_eps',
    'weight_decay',
    'gradient_clip',
    'lr_scheduler',
    'warmup_updates',
    'update_freq',
)
DEFAULT_SEED = 0


def default_train_args(teacher_opt: Mapping[str, Any]) -> list[str]:
    """The teacher's own optimisation flags, and ``--seed 0`` unless it had one.

    A student of the teacher's size class learns with what trained the
    teacher; ``--train-args`` given to the search come after these and win.
    """
    options: dict[str, Any] = {}
    for key in OPTIMISATION_KEYS:
        value = teacher_opt.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ','.join(format_value(v) for v in value)
        options[key] = value
    seed = teacher_opt.get('seed')
    options['seed'] = DEFAULT_SEED if seed is None else seed
    return flag_args(options)


@dataclass(frozen=True)
class StudyCommand:
    """What every ``parlai train_model`` command of a study shares."""

    teacher: str
    task: str
    datapath: str
    #: The resolved optimisation flags (defaults, then the user's).
    train_args: list[str]
    task_args: list[str]

    def argv(
        self, candidate: Candidate, flags: list[str], extra: list[str]
    ) -> list[str]:
        """The arguments that train ``candidate`` (its options as ``flags``) with
        ``extra`` flags after the study's own."""
        return [
            '-t',
            self.task,
            '--model',
            candidate.agent,
            '--teacher-model',
            self.teacher,
            *flags,
            *self.train_args,
            *extra,
            '-dp',
            self.datapath,
            *self.task_args,
        ]


def trial_argv(
    candidate: Candidate, s: SearchSettings, train_args: list[str]
) -> list[str]:
    """The arguments of ``parlai train_model`` for one flash distillation.

    ``train_args`` are the resolved optimisation flags (defaults, then the
    user's). ``s.steps`` steps; validation every ``s.valid_every`` steps (0:
    none) on ``s.valid_examples`` examples, without generation.
    """
    study = StudyCommand(s.teacher, s.task, s.datapath, train_args, s.task_args)
    budget = [
        '--max-train-steps',
        str(s.steps),
        '--validation-every-n-steps',
        str(s.valid_every if s.valid_every > 0 else -1),
        '--validation-max-exs',
        str(s.valid_examples),
        '--skip-generation',
        'true',
    ]
    return study.argv(candidate, candidate.flags(), budget)


def full_budget(steps: int, valid_examples: int) -> list[str]:
    """A full training budget: validation perplexity 20 times, patience 5."""
    return [
        '--max-train-steps',
        str(steps),
        '--validation-every-n-steps',
        str(max(1, steps // 20)),
        '--validation-metric',
        'ppl',
        '--validation-metric-mode',
        'min',
        '--validation-patience',
        '5',
        '--validation-max-exs',
        str(valid_examples),
        '--skip-generation',
        'true',
    ]


def full_command(
    candidate: Candidate,
    study: StudyCommand,
    model_file: str,
    budget: list[str],
    recipe_file: str | None = None,
) -> str:
    """The ``parlai train_model`` command that trains ``candidate`` in full.

    With ``recipe_file``, the candidate's options come from ``--recipe``
    instead of being written out.
    """
    flags = ['--recipe', recipe_file] if recipe_file else candidate.flags()
    argv = study.argv(candidate, flags, ['-mf', model_file, *budget])
    return 'parlai train_model ' + shlex.join(argv)


def recipe_data(
    candidate: Candidate,
    name: str,
    teacher: str,
    teacher_shape: Mapping[str, Any],
    source: str,
    note: str,
) -> dict[str, Any]:
    """A recipe file's data (``--recipe FILE.json``) for ``candidate``."""
    return {
        'name': name,
        'description': f'{candidate.label()}; {candidate.losses_label()}',
        'agent': candidate.agent,
        'teacher': teacher,
        'options': dict(candidate.options),
        'teacher_shape': {k: int(teacher_shape[k]) for k in SHAPE_KEYS},
        'sources': [source],
        'notes': [note],
    }
