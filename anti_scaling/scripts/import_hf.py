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

from ..errors import DistillationError, install_excepthook, print_error
from .distill_report import DEFAULT_DATAPATH
from .export_hf import quiet_libraries


def main(argv: list[str] | None = None) -> int:
    """Run the import; 0 on success, 2 (one line on stderr) on bad input."""
    install_excepthook()
    p = argparse.ArgumentParser(
        prog='python -m anti_scaling.scripts.import_hf',
        description='Write a local transformers seq2seq folder as a ParlAI model.',
    )
    p.add_argument(
        'hf_dir', help='the transformers folder (config.json, weights, tokenizer)'
    )
    p.add_argument('out_model', help='the ParlAI model file to write')
    p.add_argument(
        '--overwrite', action='store_true', help='replace an existing OUT_MODEL'
    )
    p.add_argument(
        '-dp', '--datapath', default=DEFAULT_DATAPATH, help="ParlAI's data folder"
    )
    p.add_argument(
        '--verbose', action='store_true', help="show ParlAI's and transformers' logging"
    )
    args = p.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    from ..export.hf.from_hf import import_from_hf

    try:
        result = import_from_hf(
            args.hf_dir, args.out_model, args.datapath, args.overwrite
        )
    except DistillationError as e:
        print_error(e)
        return 2
    print(
        f'{result.model_file}: load it with -m {result.model} -mf {result.model_file} '
        f'(dictionary: {result.dict_tokenizer}'
        + (', token ids reordered for ParlAI' if result.reordered else '')
        + ')'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
