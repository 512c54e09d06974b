"""Per-rank memory of the BlenderBot distillation recipes, computed from the shapes.

    python -m anti_scaling.scripts.memory_estimate [--recipe NAME ...] [--batchsize 16]
        [--text-truncate 128] [--label-truncate 128] [--fp16-impl safe mem_efficient]

Prints Markdown tables (the README's): every figure with its formula, and the
peak of each way to run the recipe. A thin command line over
:mod:`anti_scaling.report.memory_recipes`; nothing is measured here (the
formulas are checked against measured CPU runs in the tests).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DistillationError, install_excepthook
from ..report.memory import StepBatch
from ..report.memory_recipes import Setting
from ..report.memory_table import recipe_table, variants_table
from . import command_line

RECIPES = ('blender_400Mdistill', 'blender_1Bdistill')


def main(argv: list[str] | None = None) -> int:
    install_excepthook()
    parser = command_line.script_parser('memory_estimate', __doc__.split('\n\n')[0])
    parser.add_argument('--recipe', nargs='+', default=list(RECIPES), choices=RECIPES)
    parser.add_argument('--batchsize', '-bs', type=int, default=16, help='per rank')
    parser.add_argument('--text-truncate', type=int, default=128)
    parser.add_argument('--label-truncate', type=int, default=128)
    parser.add_argument(
        '--fp16-impl',
        nargs='+',
        default=['safe', 'mem_efficient'],
        choices=['safe', 'mem_efficient', 'fp32'],
        help='fp32: without --fp16',
    )
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--top-k', type=int, default=32, help='of the teacher cache')
    args = parser.parse_args(argv)
    return command_line.exit_status(lambda: _print_tables(args))


def _print_tables(args: argparse.Namespace) -> None:
    """Print each recipe's tables for the settings of the command line."""
    if min(args.batchsize, args.text_truncate, args.label_truncate, args.top_k) < 1:
        raise DistillationError(
            'the batch size, lengths and --top-k must be at least 1'
        )
    batch = StepBatch(args.batchsize, args.text_truncate, args.label_truncate)
    settings = [
        Setting(batch=batch, mode=mode, device=args.device, top_k=args.top_k)
        for mode in args.fp16_impl
    ]
    for name in args.recipe:
        print(recipe_table(name, settings))
        print()
        print(variants_table(name, settings))
        print()


if __name__ == '__main__':
    sys.exit(main())
