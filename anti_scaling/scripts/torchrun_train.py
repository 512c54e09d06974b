"""Train on the processes torchrun started (env:// rendezvous), NCCL on GPUs, gloo on CPUs.

    torchrun --nnodes M --nproc-per-node N [--rdzv-...] \\
        -m anti_scaling.scripts.torchrun_train [--distributed-backend auto|nccl|gloo] \\
        [parlai train_model options]

A thin command line over :func:`anti_scaling.parallel.torchrun.torchrun_train`.
See docs/distributed.md.
"""

from __future__ import annotations

import os
import sys

from parlai.core.script import ParlaiScript

from ..errors import DistillationError, install_excepthook, print_error
from ..parallel.torchrun import RankDeviceError, setup_args, torchrun_train


class TorchrunTrain(ParlaiScript):
    @classmethod
    def setup_args(cls):  # noqa: ANN206
        return setup_args()

    def run(self):  # noqa: ANN201
        return torchrun_train(self.opt)


def main(*args: str) -> int:
    install_excepthook()
    try:
        TorchrunTrain.main(*args)
    except DistillationError as e:
        # every rank finds the same bad option: rank 0 alone says it
        if os.environ.get('RANK', '0') == '0' or isinstance(e, RankDeviceError):
            print_error(e)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
