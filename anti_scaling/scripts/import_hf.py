"""Import a local Hugging Face Blenderbot/BlenderbotSmall/Bart folder as a ParlAI model.

    python -m anti_scaling.scripts.import_hf HF_DIR OUT_MODEL [--overwrite] [-dp DATAPATH]

A thin command line over :mod:`anti_scaling.export.hf.from_hf`: writes
``OUT_MODEL``, ``OUT_MODEL.opt`` and ``OUT_MODEL.dict`` (and the BPE files a
byte-level dictionary needs), a model that loads with ``-m transformer/generator``
or ``-m bart`` and that our agents take as ``--teacher-model``. Nothing is
downloaded. Bad input (no transformers folder, an unsupported model type or
tokenizer, an existing OUT_MODEL without ``--overwrite``) stops with one line;
nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import install_excepthook
from . import command_line
from .export_hf import VERBOSE_HELP


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser(
        'import_hf', 'Write a local transformers seq2seq folder as a ParlAI model.'
    )
    p.add_argument(
        'hf_dir', help='the transformers folder (config.json, weights, tokenizer)'
    )
    p.add_argument('out_model', help='the ParlAI model file to write')
    p.add_argument(
        '--overwrite', action='store_true', help='replace an existing OUT_MODEL'
    )
    command_line.add_datapath_arg(p)
    command_line.add_verbose_arg(p, help=VERBOSE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the import; 0 on success, 2 (one line on stderr) on bad input."""
    install_excepthook()
    args = parser().parse_args(argv)
    if not args.verbose:
        command_line.quiet_libraries(transformers=True)
    return command_line.exit_status(lambda: _import(args))


def _import(args: argparse.Namespace) -> int:
    """Import the folder and say how to load the model."""
    from ..export.hf.from_hf import import_from_hf

    result = import_from_hf(args.hf_dir, args.out_model, args.datapath, args.overwrite)
    print(
        f'{result.model_file}: load it with -m {result.model} -mf {result.model_file} '
        f'(dictionary: {result.dict_tokenizer}'
        + (', token ids reordered for ParlAI' if result.reordered else '')
        + ')'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
