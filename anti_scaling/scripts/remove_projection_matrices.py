"""Strip a narrow student of what only training needed.

    python -m anti_scaling.scripts.remove_projection_matrices MODEL_FILE [--output OUT]

A thin command line over :mod:`anti_scaling.export.strip`: removes the
projection matrices and their optimizer state, and rewrites the ``.opt`` so the
model loads with plain ``-m transformer/generator`` (or ``bart``). In place by
default, keeping the originals as ``MODEL.orig`` and ``MODEL.opt.orig``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import install_excepthook
from ..export.strip import BACKUP_SUFFIX, remove_projection_matrices
from . import command_line


def main(argv: list[str] | None = None) -> int:
    install_excepthook()
    parser = command_line.script_parser(
        'remove_projection_matrices',
        'Remove the training-only projection matrices of a narrow '
        'student and make it a plain ParlAI transformer/generator or bart model.',
    )
    parser.add_argument('model_file', help='the student model file (MODEL, MODEL.opt)')
    parser.add_argument(
        '--output',
        '-o',
        default=None,
        help='write the stripped model here instead of in place',
    )
    parser.add_argument(
        '--no-backup',
        dest='backup',
        action='store_false',
        help=f'in place, do not keep the originals as MODEL{BACKUP_SUFFIX}',
    )
    parser.add_argument(
        '--opt-only',
        action='store_true',
        help='also take a student without projections (wide, or trained on the '
        'prediction term alone) and rewrite its .opt; projections that are there '
        'are removed as usual',
    )
    args = parser.parse_args(argv)
    return command_line.exit_status(lambda: _strip(args))


def _strip(args: argparse.Namespace) -> int:
    """Strip the model and say how to load it."""
    result = remove_projection_matrices(
        args.model_file, args.output, args.backup, args.opt_only
    )
    print(
        f'{result.model_file}: removed {len(result.removed)} projection tensors; '
        f'load it with -m {result.model} -mf {result.model_file}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
