"""One host, several processes: ParlAI's ``multiprocessing_train``, on NCCL or gloo.

:func:`launch_and_train` does what ParlAI's launcher does (rank 0 trains in this
process, ranks 1..N-1 in spawned processes, all meeting at
``tcp://localhost:PORT``, each running ParlAI's ``JoinableTrainLoop``), with
three differences: the backend may be gloo, so it also runs without GPUs; every
impossible set-up stops with one line before a process starts; and when a
spawned rank fails, the others are stopped and its error is raised here instead
of leaving rank 0 waiting forever in a collective.

:func:`run_on_ranks` runs any function on N spawned ranks (tests, tools).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import parlai.scripts.train_model as train_model
import parlai.utils.fsdp as fsdp_utils
import parlai.utils.logging as logging
import torch
import torch.multiprocessing as torch_mp
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.utils.distributed import find_free_port

from ..errors import DistillationError, print_error
from .backends import (
    BACKEND_OPTION,
    BACKENDS,
    Placement,
    check_ranks_per_host,
    choose_placement,
)
from .checks import check_parallel_options
from .context import rank_context

#: Seconds rank 0 may keep running after another rank failed before this
#: process exits (NCCL collectives wait for a dead peer until their timeout).
FAILED_PEER_GRACE_SECONDS = 60.0
#: Seconds the other ranks get to stop on their own after rank 0 failed.
PEER_EXIT_SECONDS = 10.0


def add_backend_args(parser: ParlaiParser) -> None:
    """``--distributed-backend {auto,nccl,gloo}`` (auto: NCCL on GPUs, gloo on CPUs)."""
    group = parser.add_argument_group('Distributed backend (anti_scaling)')
    group.add_argument(
        '--distributed-backend',
        dest=BACKEND_OPTION,
        choices=BACKENDS,
        default='auto',
        help='process-group backend: nccl (GPUs), gloo (CPUs, or GPUs), auto: nccl '
        'when CUDA is usable, else gloo',
    )


def setup_args() -> ParlaiParser:
    """``parlai train_model``'s options, the distributed ones, ``--distributed-backend``."""
    parser = train_model.setup_args()
    parser.add_distributed_training_args()
    add_backend_args(parser)
    parser.set_defaults(distributed_world_size=torch.cuda.device_count())
    return parser


class RankTrainLoop(fsdp_utils.JoinableTrainLoop):
    """ParlAI's ``JoinableTrainLoop``, joining on the rank's device (the CPU for ``gpu = -1``)."""

    @property
    def join_device(self) -> torch.device:
        gpu = int(self.opt.get('gpu', -1))
        return torch.device('cuda', gpu) if gpu >= 0 else torch.device('cpu')


def train_in_rank(opt: Opt) -> tuple[dict, dict]:
    """Run ParlAI's training loop in an initialised rank; (valid, test) reports."""
    loop = RankTrainLoop(opt)
    with fsdp_utils.fsdp_join(loop):
        return loop.train()


def check_launch(opt: Opt) -> Placement:
    """Everything that can be known before starting a process; one line if wrong."""
    world_size = opt.get('distributed_world_size')
    if not world_size or int(world_size) < 1:
        raise DistillationError(
            '--distributed-world-size N is required: the number of processes (it '
            'defaults to the number of GPUs, and this machine has none)'
        )
    placement = choose_placement(opt)
    check_ranks_per_host(placement, int(world_size))
    check_parallel_options(opt, distributed=True)
    return placement


def _local_rank_context(
    rank: int, opt: Opt, placement: Placement, port: int
) -> AbstractContextManager[Opt]:
    """:func:`~.context.rank_context` of ``rank`` on its device of ``placement``,
    the ranks meeting at ``tcp://localhost:PORT``."""
    return rank_context(
        rank,
        opt,
        backend=placement.backend,
        gpu=placement.device_index(rank),
        init_method=f'tcp://localhost:{port}',
    )


def _spawn(fn: Callable[..., Any], args: tuple, nprocs: int) -> Any:
    """Start ``fn(index, *args)`` in ``nprocs`` spawned processes; their context
    (not joined)."""
    return torch_mp.start_processes(
        fn, args, nprocs=nprocs, join=False, start_method='spawn'
    )


def train_rank(
    rank: int, opt: Opt, placement: Placement, port: int, rank_offset: int = 0
) -> tuple[dict, dict]:
    """One process of :func:`launch_and_train` (rank ``rank + rank_offset``)."""
    with _local_rank_context(rank + rank_offset, opt, placement, port) as rank_opt:
        rank_opt['multiprocessing'] = True
        return train_in_rank(rank_opt)


def _child_error(exc: Exception, rank_offset: int) -> Exception:
    """The error a spawned rank raised, as one line (a DistillationError stays one)."""
    text = getattr(exc, 'msg', '') or str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    marker = 'DistillationError: '
    if marker in last:
        return DistillationError(last.split(marker, 1)[1])
    index = getattr(exc, 'error_index', None)
    rank = '?' if index is None else index + rank_offset
    return RuntimeError(f'process of rank {rank} failed: {last}')


class _Watchdog(threading.Thread):
    """Waits for the spawned ranks. When one fails (torch then stops the others),
    keeps its error; if rank 0 is still running after a grace period (blocked
    in a collective that will never complete), reports it and ends this process."""

    def __init__(self, context: Any, rank_offset: int):
        super().__init__(daemon=True)
        self.context = context
        self.rank_offset = rank_offset
        self.error: Exception | None = None
        self.traceback = ''
        self.main_done = threading.Event()
        self.stopping = False

    def run(self) -> None:
        try:
            while not self.context.join(timeout=0.5):
                pass
        except Exception as e:
            if self.stopping:  # we stopped them ourselves
                return
            self.error = _child_error(e, self.rank_offset)
            self.traceback = getattr(e, 'msg', '')
            if not self.main_done.wait(FAILED_PEER_GRACE_SECONDS):
                print_error(self.error)
                os._exit(1)

    def stop_children(self) -> None:
        self.stopping = True
        for process in self.context.processes:
            if process.is_alive():
                process.terminate()

    def raise_child_error(self, cause: BaseException | None = None) -> None:
        """Raise what a spawned rank raised (its traceback goes to the log first)."""
        if self.error is None:
            return
        if self.traceback and not isinstance(self.error, DistillationError):
            logging.error(f'a spawned process failed:\n{self.traceback}')
        raise self.error from cause


def launch_and_train(opt: Opt, port: int | None = None) -> tuple[dict, dict]:
    """Train on ``opt['distributed_world_size']`` processes of this host.

    Returns rank 0's (valid, test) reports, reduced over all ranks as ParlAI
    reduces them. Raises :class:`DistillationError` before starting anything
    when the set-up cannot work (:func:`check_launch`), and the error of the
    first failing rank otherwise.
    """
    placement = check_launch(opt)
    port = port or find_free_port()
    world_size = int(opt['distributed_world_size'])
    watchdog = None
    if world_size > 1:
        context = _spawn(train_rank, (opt, placement, port, 1), world_size - 1)
        watchdog = _Watchdog(context, rank_offset=1)
        watchdog.start()
    try:
        result = train_rank(0, opt, placement, port)
    except BaseException as error:
        if watchdog is None:
            raise
        watchdog.main_done.set()
        # the others usually stop on their own (one of them may be the cause)
        watchdog.join(timeout=PEER_EXIT_SECONDS)
        if watchdog.is_alive():
            watchdog.stop_children()
            watchdog.join()
        if not isinstance(error, DistillationError | KeyboardInterrupt):
            watchdog.raise_child_error(cause=error)
        raise
    if watchdog is not None:
        watchdog.main_done.set()
        watchdog.join()
        watchdog.raise_child_error()
    return result


def _run_rank(
    rank: int,
    fn: Callable[..., Any],
    opt: Opt,
    placement: Placement,
    port: int,
    args: tuple,
) -> None:
    with _local_rank_context(rank, opt, placement, port) as rank_opt:
        fn(rank_opt, *args)


def run_on_ranks(
    fn: Callable[..., Any], opt: Opt, world_size: int, args: tuple = ()
) -> None:
    """Run ``fn(rank_opt, *args)`` on ``world_size`` spawned ranks and wait for them.

    ``fn`` must be importable (a module-level function); each rank gets its own
    copy of ``opt`` with ``rank``, ``gpu`` and ``distributed_world_size`` set.
    Raises the first failure (the other ranks are stopped).
    """
    opt = Opt({**opt, 'distributed_world_size': world_size})
    placement = check_launch(opt)
    port = find_free_port()
    context = _spawn(_run_rank, (fn, opt, placement, port, args), world_size)
    try:
        while not context.join():
            pass
    except Exception as e:
        error = _child_error(e, rank_offset=0)
        if not isinstance(error, DistillationError):
            logging.error(f'a spawned process failed:\n{getattr(e, "msg", e)}')
        raise error from None
