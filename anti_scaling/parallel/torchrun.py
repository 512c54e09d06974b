"""Any cluster without SLURM: ``torchrun`` starts the processes, env:// joins them.

``torchrun --nnodes M --nproc-per-node N -m anti_scaling.scripts.torchrun_train
...`` starts ``M * N`` processes and gives each ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`torchrun_train`
reads them, joins the process group through ``env://`` (NCCL on GPUs, gloo on
CPUs; ``--distributed-backend`` to choose), puts the rank on GPU ``LOCAL_RANK``
(or the CPU) and runs ParlAI's training loop, as ``parlai distributed_train``
does under SLURM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from ..errors import DistillationError
from .backends import choose_placement
from .checks import check_parallel_options
from .context import rank_context
from .launch import setup_args as launch_setup_args
from .launch import train_in_rank

ENV_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


class RankDeviceError(DistillationError):
    """This rank (not every rank) cannot use its device: each affected rank reports it."""


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells a process about itself."""

    rank: int
    world_size: int
    local_rank: int


def read_torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv:
    """Read and check ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and that the master is set)."""
    environ = os.environ if environ is None else environ
    missing = [name for name in ENV_VARS if not environ.get(name)]
    if missing:
        raise DistillationError(
            f'{", ".join(missing)} not set: start this script with torchrun, e.g. '
            'torchrun --nnodes 1 --nproc-per-node 2 -m '
            'anti_scaling.scripts.torchrun_train ...'
        )
    values = {}
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise DistillationError(
                f'{name}={environ[name]!r} is not an integer'
            ) from None
    env = TorchrunEnv(values['RANK'], values['WORLD_SIZE'], values['LOCAL_RANK'])
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise DistillationError(
            f'RANK={env.rank}, LOCAL_RANK={env.local_rank}, WORLD_SIZE='
            f'{env.world_size} do not describe a process of the run'
        )
    return env


def setup_args() -> ParlaiParser:
    """``parlai train_model``'s options, the distributed ones, ``--distributed-backend``."""
    parser = launch_setup_args()
    parser.set_defaults(distributed_world_size=None)
    return parser


def torchrun_train(
    opt: Opt, environ: Mapping[str, str] | None = None
) -> tuple[dict, dict]:
    """Train as the process torchrun describes in ``environ``; (valid, test) reports."""
    env = read_torchrun_env(environ)
    given = opt.get('distributed_world_size')
    if given and int(given) != env.world_size:
        raise DistillationError(
            f'--distributed-world-size {given} but torchrun started {env.world_size} '
            'processes (WORLD_SIZE): drop --distributed-world-size'
        )
    placement = choose_placement(opt)
    check_parallel_options(opt, distributed=True)
    if placement.use_cuda and env.local_rank >= torch.cuda.device_count():
        raise RankDeviceError(
            f'rank {env.rank} has LOCAL_RANK {env.local_rank} but its host has '
            f'{torch.cuda.device_count()} GPUs: start at most that many processes '
            'per node (--nproc-per-node)'
        )
    with rank_context(
        env.rank,
        opt,
        backend=placement.backend,
        gpu=placement.device_index(env.local_rank),
        init_method='env://',
        world_size=env.world_size,
    ) as rank_opt:
        return train_in_rank(rank_opt)
