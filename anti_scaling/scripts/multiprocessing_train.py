"""Train on several processes of one host: ParlAI's ``multiprocessing_train``, also on CPUs.

    python -m anti_scaling.scripts.multiprocessing_train --distributed-world-size N \\
        [--distributed-backend auto|nccl|gloo] [--port P] [parlai train_model options]

A thin command line over :func:`anti_scaling.parallel.launch.launch_and_train`:
NCCL on GPUs (one process per GPU), gloo on CPUs. See docs/distributed.md.
"""

from __future__ import annotations

import sys

from parlai.core.script import ParlaiScript

from ..errors import install_excepthook
from ..parallel.launch import launch_and_train, setup_args
from . import command_line


class MultiProcessTrain(ParlaiScript):
    @classmethod
    def setup_args(cls):  # noqa: ANN206
        parser = setup_args()
        parser.add_argument('--port', type=int, default=None)
        return parser

    def run(self):  # noqa: ANN201
        return launch_and_train(self.opt, self.opt.get('port'))


def main(*args: str) -> int:
    install_excepthook()

    def train() -> None:  # the reports are in ParlAI's log
        MultiProcessTrain.main(*args)

    return command_line.exit_status(train)


if __name__ == '__main__':
    sys.exit(main())
