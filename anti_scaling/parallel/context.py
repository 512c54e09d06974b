"""A rank's process group, set up as ParlAI's ``distributed_context`` does, on any backend.

ParlAI's ``parlai.utils.distributed.distributed_context`` hard-codes NCCL and
CUDA (``rank % torch.cuda.device_count()``, ``torch.cuda.init()``).
:func:`rank_context` does the same set-up for NCCL or gloo: it stores the rank
and device in a copy of ``opt`` (also as an override, so a loaded model file
cannot move the rank to another GPU), prints only on rank 0 (every rank with
``--verbose``), joins the process group, seeds every rank alike
(``torch.manual_seed(42)``, so freshly built models agree before ParlAI syncs
them) and waits for all ranks. Under gloo, ParlAI's CUDA-only helpers are
replaced for the block (:func:`~anti_scaling.parallel.collectives.gloo_compatible_parlai`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import parlai.utils.distributed as parlai_distributed
import parlai.utils.logging as logging
import torch
import torch.distributed as dist
from parlai.core.opt import Opt

from .collectives import gloo_compatible_parlai


@contextmanager
def rank_context(
    rank: int,
    opt: Opt,
    *,
    backend: str,
    gpu: int,
    init_method: str,
    world_size: int | None = None,
) -> Iterator[Opt]:
    """Join the process group as ``rank``; yields this rank's options.

    ``gpu`` is the CUDA device of the rank (``-1``: CPU); ``world_size``
    defaults to ``opt['distributed_world_size']``. The group is destroyed on exit.
    """
    opt = copy.deepcopy(opt)
    world_size = int(world_size or opt['distributed_world_size'])
    opt['rank'] = rank
    opt['distributed_world_size'] = world_size
    opt['gpu'] = gpu
    opt.setdefault('override', {})
    opt['override']['gpu'] = gpu
    verbose = bool(opt.get('verbose'))
    prefix = f'rank:{rank:3d} |' if verbose or rank != 0 else None
    suppress = not verbose and rank != 0
    with ExitStack() as stack:
        stack.enter_context(parlai_distributed.override_print(suppress, prefix))
        if backend == 'gloo':
            stack.enter_context(gloo_compatible_parlai())
        if gpu >= 0:
            torch.cuda.set_device(gpu)
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
        )
        try:
            logging.info(
                f'Distributed group initialized ({backend}, {world_size} processes)'
            )
            torch.manual_seed(42)
            parlai_distributed.sync_object(None)
            yield opt
        finally:
            dist.destroy_process_group()
