"""CPU-capable (gloo) stand-ins for ParlAI's CUDA-only distributed helpers.

ParlAI 1.7.2's ``all_gather_list`` (behind ``sync_object``, ``sync_parameters``
and the metric syncing of ``train_model`` and ``eval_model``) builds CUDA
tensors, and ``TorchGeneratorAgent`` wraps its model in
``DistributedDataParallel(device_ids=[opt['gpu']])``, which a CPU model (``gpu
= -1``) cannot take. :func:`gloo_compatible_parlai` swaps in equivalents for the
duration of a ``with`` block (a launcher's whole run): ParlAI elsewhere is left
untouched. What is gathered, and how ParlAI reduces it, stay the same.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

#: Modules that hold ParlAI's ``all_gather_list`` under that name.
_GATHER_USERS = (
    'parlai.utils.distributed',
    'parlai.scripts.train_model',
    'parlai.scripts.eval_model',
)


def all_gather_list(data: Any) -> list[Any]:
    """Gather a picklable object from every rank: ``[data_0, data_1, ...]``.

    ParlAI's ``all_gather_list`` for any backend (``dist.all_gather_object``
    uses CPU tensors under gloo); ``[data]`` outside a distributed run.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [data]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


class DeviceAwareDDP(DistributedDataParallel):
    """``DistributedDataParallel`` that drops ``device_ids`` for a CPU module.

    ParlAI passes ``device_ids=[opt['gpu']]`` whatever the device; torch accepts
    device ids only for GPU modules.
    """

    def __init__(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        if on_cpu:
            if args:
                args = (None, *args[1:])
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        with warnings.catch_warnings():
            # torch deprecates ParlAI's broadcast_buffers=False; nothing to act on
            warnings.filterwarnings(
                'ignore', message='`broadcast_buffers` is deprecated'
            )
            super().__init__(module, *args, **kwargs)


@contextmanager
def _swapped(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def gloo_compatible_parlai() -> Iterator[None]:
    """Within the block, ParlAI gathers with :func:`all_gather_list` and wraps with
    :class:`DeviceAwareDDP`, so its distributed training runs on gloo and CPUs."""
    with ExitStack() as stack:
        for name in _GATHER_USERS:
            module = importlib.import_module(name)
            stack.enter_context(_swapped(module, 'all_gather_list', all_gather_list))
        stack.enter_context(
            _swapped(torch.nn.parallel, 'DistributedDataParallel', DeviceAwareDDP)
        )
        yield
