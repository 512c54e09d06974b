"""Which process-group backend and device a rank uses, checked before any work.

``auto`` picks NCCL when CUDA is usable (not ``--no-cuda``, a GPU visible) and
gloo otherwise. Rank ``r`` of a host uses GPU ``r`` (as ParlAI does), or the CPU
(``gpu = -1``). Every impossible combination fails with a one-line
:class:`~anti_scaling.errors.DistillationError` that says what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import DistillationError

BACKENDS = ('auto', 'nccl', 'gloo')
#: The ParlAI option holding the choice (``--distributed-backend``).
BACKEND_OPTION = 'distributed_backend'


def cuda_usable(opt: dict[str, Any]) -> bool:
    """Whether ParlAI would train on CUDA with ``opt`` (``TorchAgent.use_cuda``)."""
    return not opt.get('no_cuda') and torch.cuda.is_available()


@dataclass(frozen=True)
class Placement:
    """A run's backend and whether its ranks use GPUs."""

    backend: str
    use_cuda: bool

    def device_index(self, local_rank: int) -> int:
        """ParlAI's ``--gpu`` for the rank with this local rank (``-1``: the CPU)."""
        return local_rank if self.use_cuda else -1


def choose_placement(opt: dict[str, Any], requested: str | None = None) -> Placement:
    """The backend for ``opt`` (``requested`` defaults to ``opt['distributed_backend']``).

    Raises :class:`DistillationError` when the backend cannot run here: NCCL
    without CUDA (or with ``--no-cuda``), a torch build without the backend, or
    an unknown name.
    """
    requested = requested or opt.get(BACKEND_OPTION) or 'auto'
    if requested not in BACKENDS:
        raise DistillationError(
            f'--distributed-backend {requested}: choose one of {", ".join(BACKENDS)}'
        )
    if not dist.is_available():
        raise DistillationError(
            'this torch build has no torch.distributed: install a torch build with '
            'distributed support to train on several processes'
        )
    cuda = cuda_usable(opt)
    backend = requested if requested != 'auto' else ('nccl' if cuda else 'gloo')
    if backend == 'nccl':
        if not cuda:
            why = '--no-cuda is set' if opt.get('no_cuda') else 'no CUDA GPU is visible'
            raise DistillationError(
                f'--distributed-backend nccl needs CUDA GPUs, but {why}: use '
                '--distributed-backend gloo to train on CPUs'
            )
        if not dist.is_nccl_available():
            raise DistillationError(
                'this torch build has no NCCL: use --distributed-backend gloo'
            )
    elif not dist.is_gloo_available():
        raise DistillationError(
            'this torch build has no gloo backend: use --distributed-backend nccl '
            'on GPUs'
        )
    return Placement(backend, cuda)


def check_ranks_per_host(placement: Placement, ranks_on_host: int) -> None:
    """NCCL needs one GPU per rank: a host cannot run more ranks than it has GPUs."""
    if placement.backend != 'nccl':
        return
    gpus = torch.cuda.device_count()
    if ranks_on_host > gpus:
        raise DistillationError(
            f'{ranks_on_host} processes on this host but only {gpus} GPUs: NCCL needs '
            f'one GPU per process, so use at most {gpus} (or --distributed-backend '
            'gloo, which also runs on CPUs with --no-cuda)'
        )
