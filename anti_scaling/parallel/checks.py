"""Parallelism options the distillation agents refuse, with what to use instead.

Checked by the agents before they load anything (so also under ParlAI's own
``multiprocessing_train`` and ``distributed_train``) and by our launchers
before they start a process.

- ``--ddp-backend zero2`` / ``zero3`` (FSDP) in a distributed run: FSDP flattens
  and shards the student's parameters, but the distillation loss applies the
  student's projections (and, for shared encoders and on-policy samples, its
  encoder and decoder) outside the sharded forward pass, and the checkpoint
  records the optimised parameters by name to strip the projections later.
  ParlAI ignores these backends in a single process, and so do we.
- ``--model-parallel true`` when it would take effect (CUDA in use): ParlAI's
  pipeline splits every batch into chunks across GPUs, while the distillation
  terms read each layer's states for the whole batch. On a CPU ParlAI ignores
  the flag, and so do we. The teacher never runs model-parallel: it is loaded
  whole on the student's device (see
  :mod:`~anti_scaling.parallel.teacher_placement`).
"""

from __future__ import annotations

from typing import Any

from ..errors import DistillationError
from .backends import cuda_usable

SHARDED_BACKENDS = ('zero2', 'zero3')


def check_parallel_options(opt: dict[str, Any], distributed: bool) -> None:
    """Raise a one-line :class:`DistillationError` for an unsupported parallel setup."""
    backend = opt.get('ddp_backend') or 'ddp'
    if distributed and backend in SHARDED_BACKENDS:
        raise DistillationError(
            f'--ddp-backend {backend} (FSDP) is not supported by the distillation '
            'agents: the distillation loss uses student parameters outside the '
            'sharded forward pass; use --ddp-backend ddp (the default), and to save '
            'memory --fp16 true or a --teacher-cache'
        )
    if opt.get('model_parallel') and cuda_usable(opt):
        raise DistillationError(
            '--model-parallel true is not supported by the distillation agents: '
            "ParlAI's pipeline splits each batch into chunks, while the distillation "
            'terms need every layer\'s states for the whole batch; set '
            '--model-parallel false (the teacher is loaded whole on the student\'s '
            'GPU) and use several GPUs with multiprocessing_train, '
            'distributed_train or torchrun (one process per GPU)'
        )
