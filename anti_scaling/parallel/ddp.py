"""The student inside ``DistributedDataParallel``: its module, and what a step leaves unused.

ParlAI wraps the student in DDP after building it (``TorchGeneratorAgent``), so
``agent.model`` is the wrapper in a distributed run and the student itself is
:func:`unwrap_model` of it. The projections live inside the student, hence
inside the wrapper: DDP all-reduces their gradients with every other parameter.

DDP (``find_unused_parameters=False``, as ParlAI builds it) expects a gradient
for every trainable parameter in every backward pass. A distillation step can
leave some unused: the projections of a term whose weight is 0 at this step
(``--intermediate-steps``, ``schedule``). :func:`anchor_unused_modules` adds
``0 * p[0]`` for each of them, so DDP sees a (zero) gradient; after the backward pass
:func:`release_gradients` sets those gradients back to ``None``, so the
optimizer skips them exactly as in a single process (a zero gradient would
still move them through Adam's momentum).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper; else ``model`` itself."""
    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def anchor_unused_modules(
    model: nn.Module,
    loss: torch.Tensor,
    modules: nn.ModuleDict | None,
    used: Iterable[str],
) -> tuple[torch.Tensor, list[nn.Parameter]]:
    """``(loss + 0 * sum_p p[0], unused)`` when ``model`` is wrapped in DDP.

    ``unused`` are the trainable parameters of the entries of ``modules`` not
    named in ``used`` (this step's loss does not depend on them); the value of
    ``loss`` is unchanged. Outside DDP, or with nothing unused: ``(loss, [])``.
    """
    if not isinstance(model, DistributedDataParallel) or modules is None:
        return loss, []
    used = set(used)
    unused = [
        param
        for name, module in modules.items()
        if name not in used
        for param in module.parameters()
        if param.requires_grad
    ]
    if not unused or not loss.requires_grad:
        return loss, []
    # one element of each is enough for autograd to reach it (a whole sum could
    # overflow in half precision)
    anchor = torch.stack([p.reshape(-1)[0].float() for p in unused]).sum()
    return loss + (0.0 * anchor).to(loss.dtype), unused


def release_gradients(parameters: list[nn.Parameter]) -> None:
    """Forget the (zero) gradients of ``parameters``: the optimizer skips them."""
    for param in parameters:
        param.grad = None
