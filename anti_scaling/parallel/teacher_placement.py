"""Where a frozen teacher lives in a (distributed) run: built alone, on the student's device.

ParlAI builds the teacher like any agent: in a distributed run its
``TorchGeneratorAgent.__init__`` would all-reduce the teacher's weights
(``sync_parameters``), wrap it in ``DistributedDataParallel`` (or FSDP), and put
it on the GPU or the model-parallel layout saved in the teacher's ``.opt``. A
frozen model needs none of it, and a wrapped teacher would hide its layers from
the capture hooks. So every rank builds its own teacher as a single-process
model (:func:`building_local_model`), with the student's device options
(:func:`teacher_overrides`); :func:`check_teacher_device` confirms the result.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import DistillationError
from .backends import cuda_usable


def _not_distributed() -> bool:
    return False


@contextmanager
def building_local_model() -> Iterator[None]:
    """Within the block, ParlAI builds agents as in a single process.

    Every loaded ``parlai.*`` module's ``is_distributed`` answers ``False``, so a
    model built here is neither synced across ranks, nor wrapped in
    ``DistributedDataParallel`` or FSDP, and runs no collective operation (a
    rank can build it alone). The block must only build (no training).
    """
    from parlai.utils import distributed

    original = distributed.is_distributed

    def parlai_modules() -> list:
        return [m for n, m in list(sys.modules.items()) if n.startswith('parlai')]

    for module in parlai_modules():
        if getattr(module, 'is_distributed', None) is original:
            module.is_distributed = _not_distributed
    try:
        yield
    finally:
        # also modules first imported inside the block, which copied the stand-in
        for module in parlai_modules():
            if getattr(module, 'is_distributed', None) is _not_distributed:
                module.is_distributed = original


def teacher_overrides(student_opt: dict[str, Any]) -> dict[str, Any]:
    """Options that put a teacher on the student's device, whole.

    ``gpu`` and ``no_cuda`` are the student's (a teacher trained with several
    processes saved its rank's GPU in its ``.opt``); ``model_parallel`` and
    ``data_parallel`` are off: the teacher runs whole on that one device.
    """
    return {
        'no_cuda': bool(student_opt.get('no_cuda', False)),
        'gpu': int(student_opt.get('gpu', -1)),
        'model_parallel': False,
        'data_parallel': False,
    }


def student_device(student_opt: dict[str, Any]) -> torch.device:
    """The device ParlAI puts the student on (``TorchAgent``: ``--gpu``, else the current GPU)."""
    if not cuda_usable(student_opt):
        return torch.device('cpu')
    gpu = int(student_opt.get('gpu', -1))
    return torch.device('cuda', gpu if gpu >= 0 else torch.cuda.current_device())


def check_teacher_device(
    teacher: torch.nn.Module, device: torch.device, path: str
) -> None:
    """Every teacher tensor is on the student's ``device``; else one line, before any work."""
    found = {t.device for t in [*teacher.parameters(), *teacher.buffers()]}
    wrong = sorted(str(d) for d in found if d != device)
    if wrong:
        raise DistillationError(
            f'teacher {path} is on {", ".join(wrong)} but the student is on {device}: '
            'both must share one device (give the student --gpu, or --no-cuda for '
            'both; the teacher follows the student)'
        )
