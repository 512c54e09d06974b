"""Convert a fairseq BART checkpoint into a ParlAI ``bart`` teacher.

    python -m anti_scaling.scripts.convert_fairseq_bart CHECKPOINT \\
        --dict dict.txt --output MODEL [--trust-checkpoint] [--verify]

Writes ``MODEL``, ``MODEL.opt`` and ``MODEL.dict`` (each atomically, and only
after every check passed), ready for ``--teacher-model MODEL``. ``--dict`` is
the ``dict.txt`` the model was trained with (``fairseq-preprocess`` writes it
into its ``--destdir``); token ids line up as explained in
:mod:`anti_scaling.fairseq_bart`. Bad input prints one line
(``anti_scaling: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import install_excepthook
from ..fairseq_bart import DEFAULT_TOLERANCE, DICT_TOKENIZERS, convert_fairseq_bart
from . import command_line


def build_parser() -> argparse.ArgumentParser:
    """The command line of the script."""
    parser = command_line.script_parser(
        'convert_fairseq_bart',
        'Convert a fairseq BART checkpoint (e.g. checkpoint_best.pt) '
        'into a ParlAI bart model (MODEL, MODEL.opt, MODEL.dict). No network is '
        'used.',
    )
    parser.add_argument(
        'checkpoint', metavar='CHECKPOINT', help='the fairseq checkpoint (.pt)'
    )
    parser.add_argument(
        '--dict',
        required=True,
        dest='dict_file',
        metavar='DICT_TXT',
        help='the fairseq dict.txt the model was trained with',
    )
    parser.add_argument(
        '--output',
        '-o',
        required=True,
        metavar='MODEL',
        help='the ParlAI model file to write',
    )
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='unpickle the checkpoint fully (torch.load weights_only=False): only '
        'for files you trust. Without it, only tensors, plain containers and '
        'argparse.Namespace are read and nothing in the file can run.',
    )
    parser.add_argument(
        '--dict-tokenizer',
        choices=DICT_TOKENIZERS,
        default='space',
        help='how ParlAI splits text into the dict.txt tokens (default: space, '
        'for text tokenised as it was for fairseq-preprocess)',
    )
    parser.add_argument(
        '--verify',
        action='store_true',
        help='before writing, check that fairseq (needs the fairseq extra) and the '
        f'converted model give the same logits within {DEFAULT_TOLERANCE:g}',
    )
    parser.add_argument(
        '--force', action='store_true', help='replace an existing output model'
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the exit status (2 for bad input)."""
    install_excepthook()
    args = build_parser().parse_args(argv)
    return command_line.exit_status(lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    """Convert (and verify), then say what was written."""
    result = convert_fairseq_bart(
        args.checkpoint,
        args.dict_file,
        args.output,
        trust_checkpoint=args.trust_checkpoint,
        dict_tokenizer=args.dict_tokenizer,
        verify=args.verify,
        force=args.force,
    )
    arch = result.arch
    checked = (
        f'; logits match fairseq within {result.max_abs_diff:.2g}'
        if result.max_abs_diff is not None
        else ''
    )
    print(
        f'{result.model_file}: ParlAI bart from fairseq {arch.arch} '
        f'({arch.n_encoder_layers}+{arch.n_decoder_layers} layers, width '
        f'{arch.embedding_size}, {result.vocab_size} tokens){checked}; use it as '
        f'--teacher-model {result.model_file}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
