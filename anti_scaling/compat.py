"""Make ParlAI 1.7.2 work with the pinned torch (2.13).

torch >= 2.7 removed ``verbose`` from its LR schedulers, but ParlAI's default
``--lr-scheduler reduceonplateau`` still passes ``verbose=True`` and crashes
with ``TypeError``. :func:`compatible_lr_schedulers` swaps in a subclass that
builds the same scheduler without that argument, for the duration of a
``with`` block only: ParlAI itself is left untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from parlai.nn import lr_scheduler as parlai_lr_scheduler
from torch import optim


def _torch_accepts_verbose() -> bool:
    params = inspect.signature(optim.lr_scheduler.ReduceLROnPlateau).parameters
    return 'verbose' in params


class ReduceOnPlateauLRScheduler(parlai_lr_scheduler.ReduceOnPlateauLRScheduler):
    """ParlAI's reduce-on-plateau scheduler, built without the removed ``verbose``."""

    def __init__(
        self, optimizer, patience, decay, warmup_updates, warmup_rate
    ):  # noqa: ANN001
        parlai_lr_scheduler.ParlAILRScheduler.__init__(
            self, warmup_updates, warmup_rate
        )
        self.scheduler = optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, 'min', factor=decay, patience=patience
        )


@contextmanager
def compatible_lr_schedulers() -> Iterator[None]:
    """Within the block, ParlAI's scheduler factory builds torch-2.13-safe schedulers."""
    if _torch_accepts_verbose():
        yield
        return
    original = parlai_lr_scheduler.ReduceOnPlateauLRScheduler
    parlai_lr_scheduler.ReduceOnPlateauLRScheduler = ReduceOnPlateauLRScheduler
    try:
        yield
    finally:
        parlai_lr_scheduler.ReduceOnPlateauLRScheduler = original
