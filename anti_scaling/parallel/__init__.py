"""Distributed training of the distillation agents on ParlAI's own engine.

ParlAI 1.7.2 trains on several processes with ``parlai multiprocessing_train``
(one host) and ``parlai distributed_train`` (SLURM); both hard-code NCCL and
CUDA. This package keeps those paths working for the distillation agents and
adds launchers that also run on CPUs (gloo):

- :mod:`~anti_scaling.parallel.backends`: which process-group backend and device
  a rank uses, checked before any work;
- :mod:`~anti_scaling.parallel.checks`: the parallelism options the agents
  refuse (``--ddp-backend zero2/zero3``, ``--model-parallel true`` on GPUs);
- :mod:`~anti_scaling.parallel.collectives`: CPU-capable (gloo) stand-ins for
  ParlAI's CUDA-only gathering and DDP wrapping, installed for one run only;
- :mod:`~anti_scaling.parallel.context`: a rank's process group, as ParlAI's
  ``distributed_context`` sets it up, for any backend;
- :mod:`~anti_scaling.parallel.teacher_placement`: the frozen teacher is built
  as a single-process model on the student's device (never wrapped, never synced);
- :mod:`~anti_scaling.parallel.ddp`: the student inside
  ``DistributedDataParallel``: its unwrapped module, and parameters a step leaves
  unused;
- :mod:`~anti_scaling.parallel.launch` and :mod:`~anti_scaling.parallel.torchrun`:
  the launchers behind ``python -m anti_scaling.scripts.multiprocessing_train``
  and ``torchrun ... -m anti_scaling.scripts.torchrun_train``.

Only :mod:`anti_scaling.errors` is imported from this project: the agents build
on this package, not the reverse.
"""
