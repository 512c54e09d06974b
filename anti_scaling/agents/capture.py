"""Capture intermediate tensors of a model during one forward pass.

Hooks exist only inside the ``with capture_states(...)`` block: they are
registered on entry and removed on exit (also on error), so generation,
validation decoding and anything else run outside the block never store a
tensor.

Two ParlAI habits need care. Some modules modify a tensor in place after
another module returned it (``MultiHeadAttention`` divides its queries in place,
which with one head is the ``q_lin`` output itself; the encoder scales its last
layer's output in place by ``output_scaling``): such points are cloned when
captured (:func:`modified_in_place` finds them on a dry run), and every other
captured tensor is checked on exit to be unchanged. And a module may be shared
(the token embeddings serve encoder and decoder): a point named through its
parent (``encoder.embeddings``) records only the calls made while that parent
runs (a point named through the model itself, such as ``embeddings``, records
every call; :attr:`CapturedStates.calls` shows when that is more than one).
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

    ``where`` is ``'input'`` (the module's positional argument ``index``),
    ``'output'`` (element ``index`` of a tuple output; with ``None``, the output
    itself if it is a tensor, else its first element) or ``'logits'`` (the
    model's output scores, taken from the forward pass's result; ``module`` is
    empty). Example: ``CapturePoint('decoder.layers.3.encoder_attention',
    'output', 2)`` is the pre-softmax score tensor of that attention module.
    """

    module: str
    where: str = 'output'
    index: int | None = None

    def __post_init__(self) -> None:
        if self.where not in ('input', 'output', 'logits'):
            raise ValueError(
                f"where must be 'input', 'output' or 'logits', not {self.where!r}"
            )

    @property
    def is_module(self) -> bool:
        return self.where != 'logits'


#: The model's output scores ``[B, T, V]``.
LOGITS = CapturePoint('', 'logits')


class CapturedStates(dict):
    """Captured tensors by point, with how often each module was recorded.

    ``calls[point]`` counts the recorded calls (the last one is kept);
    ``modified`` lists the points whose tensor was changed in place after capture.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[CapturePoint, int] = {}
        self.versions: dict[CapturePoint, int] = {}
        self.modified: list[CapturePoint] = []

    def record(self, point: CapturePoint, value: torch.Tensor, clone: bool) -> None:
        if clone and torch.is_tensor(value):
            value = value.clone()
        self[point] = value
        self.calls[point] = self.calls.get(point, 0) + 1
        if torch.is_tensor(value):
            self.versions[point] = value._version

    def find_modified(self) -> list[CapturePoint]:
        return [
            point
            for point, version in self.versions.items()
            if self[point]._version != version
        ]


def _pick(value, index: int | None) -> torch.Tensor:  # noqa: ANN001
    if index is None:
        if isinstance(value, tuple | list):
            value = value[0]
        return value
    return value[index]


def _caller(model: nn.Module, name: str) -> str:
    """The nearest module above ``name`` that runs (containers such as
    ``ModuleList`` are never called); ``''`` for the model itself."""
    parent = name.rpartition('.')[0]
    while parent and isinstance(
        model.get_submodule(parent), nn.ModuleList | nn.ModuleDict
    ):
        parent = parent.rpartition('.')[0]
    return parent


class _ParentScope:
    """Whether a module is running (its forward is on the stack)."""

    def __init__(self) -> None:
        self.depth = 0

    def enter(self, *_args) -> None:  # noqa: ANN002
        self.depth += 1

    def leave(self, *_args) -> None:  # noqa: ANN002
        self.depth -= 1


@contextmanager
def capture_states(
    model: nn.Module,
    points: Iterable[CapturePoint],
    clone: Iterable[CapturePoint] = (),
    check: bool = True,
) -> Iterator[CapturedStates]:
    """Record the tensors named by ``points`` while the block runs.

    Yields a :class:`CapturedStates` that fills up as the model runs. Points in
    ``clone`` are copied when captured. With ``check``, leaving the block raises
    ``RuntimeError`` if a captured tensor was modified in place meanwhile (so a
    wrong value can never reach a loss); otherwise such points are listed in
    ``states.modified``. No hook remains after the block.
    """
    states = CapturedStates()
    clone = frozenset(clone)
    handles = []
    scopes: dict[str, _ParentScope] = {}
    callers: dict[CapturePoint, str] = {}

    def in_scope(point: CapturePoint) -> bool:
        caller = callers[point]
        return not caller or scopes[caller].depth > 0

    try:
        for point in dict.fromkeys(p for p in points if p.is_module):
            module = model.get_submodule(point.module)
            caller = callers[point] = _caller(model, point.module)
            if caller and caller not in scopes:
                scope = scopes[caller] = _ParentScope()
                parent = model.get_submodule(caller)
                handles.append(parent.register_forward_pre_hook(scope.enter))
                handles.append(
                    parent.register_forward_hook(scope.leave, always_call=True)
                )
            copy = point in clone
            if point.where == 'input':

                def pre_hook(
                    _mod, args, kwargs, point=point, copy=copy
                ):  # noqa: ANN001
                    if not in_scope(point):
                        return
                    index = point.index or 0
                    if index < len(args):
                        value = args[index]
                    else:  # passed by keyword: take the first tensor keyword
                        tensors = [v for v in kwargs.values() if torch.is_tensor(v)]
                        value = tensors[index - len(args)]
                    states.record(point, value, copy)

                handles.append(
                    module.register_forward_pre_hook(pre_hook, with_kwargs=True)
                )
            else:

                def hook(_mod, _args, output, point=point, copy=copy):  # noqa: ANN001
                    if in_scope(point):
                        states.record(point, _pick(output, point.index), copy)

                handles.append(module.register_forward_hook(hook))
        yield states
    finally:
        for handle in handles:
            handle.remove()
    states.modified = states.find_modified()
    if check and states.modified:
        names = ', '.join(f'{p.module} ({p.where})' for p in states.modified)
        raise RuntimeError(
            f'captured tensors were modified in place after capture: {names}; '
            'they must be captured as copies (clone)'
        )


@torch.no_grad()
def capture_once(
    model: nn.Module,
    points: list[CapturePoint],
    text: torch.Tensor,
    label: torch.Tensor,
) -> CapturedStates:
    """Run ``model`` once in eval mode; return what was captured (nothing checked).

    The inputs go to the model's device (a GPU teacher beside a CPU student)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with capture_states(model, points, check=False) as states:
            model(text.to(device), ys=label.to(device))
        return states
    finally:
        model.train(was_training)


def modified_in_place(
    model: nn.Module,
    points: list[CapturePoint],
    text: torch.Tensor,
    label: torch.Tensor,
) -> frozenset[CapturePoint]:
    """The points whose captured tensor ``model`` modifies in place later in its
    forward pass (found on one eval-mode pass; training mode, with dropout, only
    makes fresh tensors where eval mode may reuse them)."""
    return frozenset(capture_once(model, points, text, label).modified)
