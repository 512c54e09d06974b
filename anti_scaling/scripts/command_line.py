"""What the package's command lines share: common options, quiet libraries, task
arguments and one-line errors.

Each script is a thin command line: it parses its options, calls the library
and prints what it returns. Bad input raises
:class:`~anti_scaling.errors.DistillationError` before any work starts;
:func:`exit_status` shows it as one line (``anti_scaling: error: ...``) and
turns it into exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import DistillationError, print_error

#: ParlAI's data folder unless ``-dp`` says otherwise.
DEFAULT_DATAPATH = os.path.join(tempfile.gettempdir(), 'anti_scaling_parlai_data')
#: The exit status of a command stopped by bad input.
BAD_INPUT = 2

Settings = TypeVar('Settings')


def script_parser(
    script: str, description: str, task_parser: str | None = None
) -> argparse.ArgumentParser:
    """The parser of ``python -m anti_scaling.scripts.<script>``.

    :param task_parser: for a script that hands every option it does not know
        to the task (:func:`split_task_args`): the ParlAI script whose task
        options it takes (``eval_model``, ``train_model``). Its own options are
        then never abbreviated, so that a task's option is not taken for one.
    """
    task: dict[str, Any] = {}
    if task_parser is not None:
        task['epilog'] = (
            f'Any other option goes to the task, as in parlai {task_parser} '
            '(e.g. -t jsonfile --jsonfile-datapath FILE.jsonl).'
        )
        task['allow_abbrev'] = False
    return argparse.ArgumentParser(
        prog=f'python -m anti_scaling.scripts.{script}', description=description, **task
    )


def command_argv(argv: Sequence[str] | None) -> list[str]:
    """``argv``, or the process's command-line arguments when it is ``None``."""
    return list(sys.argv[1:] if argv is None else argv)


def add_datapath_arg(
    parser: argparse.ArgumentParser,
    default: str | None = DEFAULT_DATAPATH,
    help: str | None = None,
) -> None:
    """``-dp/--datapath``: ParlAI's data folder (by default :data:`DEFAULT_DATAPATH`)."""
    parser.add_argument(
        '-dp',
        '--datapath',
        default=default,
        help=help or f"ParlAI's data folder (default {default})",
    )


def add_verbose_arg(
    parser: argparse.ArgumentParser, help: str = "show ParlAI's logging"
) -> None:
    """``--verbose``: keep the libraries' logging (see :func:`quiet_libraries`)."""
    parser.add_argument('--verbose', action='store_true', help=help)


def quiet_libraries(transformers: bool = False) -> None:
    """Silence ParlAI's info logging; with ``transformers``, also its logging and
    progress bars."""
    import parlai.utils.logging as parlai_logging

    parlai_logging.set_log_level(parlai_logging.ERROR)
    if transformers:
        import transformers as hf

        hf.logging.set_verbosity_error()
        hf.logging.disable_progress_bar()


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The arguments before a ``--`` and those after it (none without one)."""
    argv = list(argv)
    if '--' not in argv:
        return argv, []
    cut = argv.index('--')
    return argv[:cut], argv[cut + 1 :]


def split_task_args(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """The script's own options, and every other argument (the task's), in order.

    Everything after a ``--`` is the task's without being looked at. The task's
    arguments are then parsed by ParlAI's parser
    (:func:`anti_scaling.report.task_options.task_opt`).
    """
    own, tail = split_at_double_dash(argv)
    args, rest = parser.parse_known_args(own)
    return args, rest + tail


def settings_from(
    cls: Callable[..., Settings], args: argparse.Namespace, **others: Any
) -> Settings:
    """The dataclass ``cls`` with each field from the option of the same name,
    but those given in ``others`` (options named otherwise, or computed).

    Raises ``AttributeError`` for a field that neither gives (a programming error).
    """
    names = [f.name for f in dataclasses.fields(cls) if f.name not in others]
    return cls(**{name: getattr(args, name) for name in names}, **others)


def exit_status(run: Callable[[], int | None], bad_input: int = BAD_INPUT) -> int:
    """``run()``'s exit status (``None``: 0); for bad input, one line on stderr
    and ``bad_input``."""
    try:
        status = run()
    except DistillationError as e:
        print_error(e)
        return bad_input
    return 0 if status is None else status
