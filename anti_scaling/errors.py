"""The one error type users see, and how it is shown.

Every check on user input raises :class:`DistillationError` with a one-line
message that names what is wrong and how to fix it. Uncaught, it is printed as
``anti_scaling: error: <message>`` without a traceback (set
``ANTI_SCALING_TRACEBACK=1`` to see one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


class DistillationError(ValueError):
    """Bad input for a distillation run or script, found before any work started."""


def check_at_least_one(settings: object, names: Iterable[str]) -> None:
    """One line for the first of ``names`` whose value in ``settings`` is below 1,
    naming its flag (``eval_batchsize``: ``--eval-batchsize must be >= 1``)."""
    for name in names:
        if getattr(settings, name) < 1:
            raise DistillationError(f"--{name.replace('_', '-')} must be >= 1")


def describe_exception(exc: BaseException) -> str:
    """``'TypeName: first line of the message'``, for one-line error messages."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ''
    return f'{type(exc).__name__}: {first}' if first else type(exc).__name__


def print_error(exc: BaseException) -> None:
    """Show an error to the user: ``anti_scaling: error: <message>`` on stderr."""
    print(f'anti_scaling: error: {exc}', file=sys.stderr)


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):  # noqa: ANN001
    if issubclass(exc_type, DistillationError) and not os.environ.get(
        'ANTI_SCALING_TRACEBACK'
    ):
        print_error(exc)
        return
    _previous(exc_type, exc, tb)


def install_excepthook() -> None:
    """Show uncaught :class:`DistillationError` as one line (idempotent)."""
    if getattr(sys.excepthook, '__name__', '') != '_excepthook':
        sys.excepthook = _excepthook
