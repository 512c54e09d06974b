"""A task's options on our command lines, parsed as ParlAI's own scripts parse them.

``distill_report`` and ``search`` take ``-t TASK`` and, like ``parlai eval_model``,
any option of that task (``-t jsonfile --jsonfile-datapath FILE``,
``-t fromfile:parlaiformat --fromfile-datapath FILE``,
``--chitchat-max-turns 8``...): whatever the script's own parser does not know
is handed to ParlAI's parser (the split:
:func:`anti_scaling.scripts.command_line.split_task_args`), which knows ParlAI's
main options and, through ``add_task_args``, the options each task declares in
its ``add_cmdline_args``. What neither knows is refused with one line naming it,
before anything loads. Arguments after a ``--`` go to the task too (the older form).
"""

from __future__ import annotations

from collections.abc import Sequence

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from ..errors import DistillationError, describe_exception


class _TaskOptionError(Exception):
    """What ParlAI's parser would have printed before exiting."""


class _TaskParser(ParlaiParser):
    """ParlAI's parser, raising instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # noqa: D102 (argparse's hook)
        raise _TaskOptionError(message)


def _unknown(task: str, extra: list[str]) -> str:
    """One line naming what ParlAI's parser did not take."""
    options = [a.split('=')[0] for a in extra if a.startswith('-')]
    if not options:
        return f'-t {task}: unexpected argument(s) {" ".join(extra)}'
    many = len(options) > 1
    return (
        f'-t {task}: unknown option{"s" if many else ""} {" ".join(options)} '
        f'(neither ParlAI nor the task declares {"them" if many else "it"}; the '
        f"task's options: parlai display_data -t {task} --help)"
    )


def task_opt(task: str, datatype: str, datapath: str, task_args: Sequence[str]) -> Opt:
    """ParlAI's options of ``-t task``, with ``task_args`` parsed as its scripts do.

    ParlAI's main options and the task's own (its ``add_cmdline_args``) are
    known. Raises :class:`DistillationError` with one line for an option that
    neither declares (naming it), a bad value, or a task ParlAI cannot find.
    """
    argv = ['--task', task, '--datatype', datatype, '--datapath', datapath]
    argv += list(task_args)
    parser = _TaskParser(True, False)
    try:
        parser.add_extra_args(argv)
    except _TaskOptionError as e:
        raise DistillationError(f'-t {task}: {e}') from None
    except Exception as e:
        raise DistillationError(
            f'unknown or unusable task -t {task}: {describe_exception(e)}'
        ) from None
    try:
        _, extra = parser.parse_known_args(argv)
        if extra:
            raise DistillationError(_unknown(task, extra))
        return parser.parse_args(argv)
    except _TaskOptionError as e:
        raise DistillationError(f'-t {task}: {e}') from None
