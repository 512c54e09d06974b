"""Work around two faults of ParlAI 1.7.2, each for the duration of a ``with`` block.

- torch >= 2.7 removed ``verbose`` from its LR schedulers, but ParlAI's default
  ``--lr-scheduler reduceonplateau`` still passes ``verbose=True`` and crashes
  with ``TypeError``. :func:`compatible_lr_schedulers` swaps in a subclass that
  builds the same scheduler without that argument.
- ParlAI's ``bytelevelbpe`` dictionary (BlenderBot's) encodes text with a space
  in front and, when decoding, asserts that the text starts with a space before
  removing it; a reply whose first token starts mid-word (as an undertrained
  model's may) fails with a bare ``AssertionError``.
  :func:`tolerant_byte_level_decoding` decodes such a reply as the tokens say;
  every reply ParlAI can decode decodes exactly as before.

Outside the blocks ParlAI is left untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from parlai.nn import lr_scheduler as parlai_lr_scheduler
from parlai.utils.bpe import HuggingFaceBpeHelper
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


@contextmanager
def tolerant_byte_level_decoding() -> Iterator[None]:
    """Within the block, a ``bytelevelbpe`` reply that starts mid-word decodes as is.

    ParlAI's ``BPEHelper.decode`` asserts that the decoded text starts with a
    space, then strips the leading spaces. The space is added here when it is
    missing, so the result is the tokens' text without leading spaces in every
    case (and unchanged whenever ParlAI's assertion holds).
    """
    original = HuggingFaceBpeHelper.helper_decode

    def helper_decode(self, tokens, token_ids, delimiter):  # noqa: ANN001, ANN202
        text = original(self, tokens, token_ids, delimiter)
        if self.add_prefix_space and not text.startswith(' '):
            text = ' ' + text
        return text

    HuggingFaceBpeHelper.helper_decode = helper_decode
    try:
        yield
    finally:
        HuggingFaceBpeHelper.helper_decode = original
