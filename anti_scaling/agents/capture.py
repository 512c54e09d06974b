"""Capture intermediate tensors of a model during one forward pass.

Hooks exist only inside the ``with capture_states(...)`` block: they are
registered on entry and removed on exit (also on error), so generation,
validation decoding and anything else run outside the block never store a
tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CapturePoint:
    """One tensor of a model: a module's input or output, by its dotted name.

    ``where`` is ``'input'`` (the module's positional argument ``index``) or
    ``'output'`` (element ``index`` of a tuple output; with ``None``, the output
    itself if it is a tensor, else its first element).
    Example: ``CapturePoint('decoder.layers.3.encoder_attention', 'output', 2)`` is
    the pre-softmax score tensor of that attention module.
    """

    module: str
    where: str = 'output'
    index: int | None = None

    def __post_init__(self) -> None:
        if self.where not in ('input', 'output'):
            raise ValueError(f"where must be 'input' or 'output', not {self.where!r}")


def _pick(value, index: int | None) -> torch.Tensor:  # noqa: ANN001
    if index is None:
        if isinstance(value, tuple | list):
            value = value[0]
        return value
    return value[index]


@contextmanager
def capture_states(
    model: nn.Module, points: Iterable[CapturePoint]
) -> Iterator[dict[CapturePoint, torch.Tensor]]:
    """Record the tensors named by ``points`` while the block runs.

    Yields a dict that fills up as the model runs; a module called several times
    keeps its last call. No hook remains after the block.
    """
    states: dict[CapturePoint, torch.Tensor] = {}
    handles = []
    try:
        for point in dict.fromkeys(points):
            module = model.get_submodule(point.module)
            if point.where == 'input':

                def pre_hook(_mod, args, kwargs, point=point):  # noqa: ANN001
                    index = point.index or 0
                    if index < len(args):
                        states[point] = args[index]
                    else:  # passed by keyword: take the first tensor keyword
                        tensors = [v for v in kwargs.values() if torch.is_tensor(v)]
                        states[point] = tensors[index - len(args)]

                handles.append(
                    module.register_forward_pre_hook(pre_hook, with_kwargs=True)
                )
            else:

                def hook(_mod, _args, output, point=point):  # noqa: ANN001
                    states[point] = _pick(output, point.index)

                handles.append(module.register_forward_hook(hook))
        yield states
    finally:
        for handle in handles:
            handle.remove()
