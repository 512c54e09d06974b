"""Export a ParlAI generator as a Hugging Face transformers model folder.

    python -m anti_scaling.scripts.export_hf MODEL OUT_DIR [--verify] [--overwrite] \\
        [--quantize int8] [-dp DATAPATH] [--verify-task TASK] [--verify-examples N] \\
        [--verify-datatype test] [-- TASK OPTIONS]

A thin command line over :mod:`anti_scaling.export.hf`: ``transformer/generator``
models with ``--variant prelayernorm`` become ``BlenderbotForConditionalGeneration``,
``--variant xlm`` ``BlenderbotSmallForConditionalGeneration``, ``bart`` models
``BartForConditionalGeneration``; the folder loads with
``AutoModelForSeq2SeqLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
and explains in its README how ParlAI built the model's input.

``--verify`` compares the export with ParlAI before anything is written (ids,
logits within 1e-4, greedy replies token for token) on the first examples of
``--verify-task`` (default: the offline chitchat test split). ``--quantize int8``
adds ``int8/model_int8.pt``, a dynamically quantised copy. Bad input (a student
with its projections still inside, an unsupported variant or dictionary, an
existing OUT_DIR without ``--overwrite``) stops with one line; nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import install_excepthook
from . import command_line

#: ``--verbose``'s help, also import_hf's.
VERBOSE_HELP = "show ParlAI's and transformers' logging"


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser(
        'export_hf', 'Write a ParlAI generator as a Hugging Face transformers folder.'
    )
    p.add_argument(
        'model_file', help='the ParlAI model file (MODEL, MODEL.opt, MODEL.dict)'
    )
    p.add_argument('out_dir', help='the folder to write')
    p.add_argument('--verify', action='store_true', help='compare with ParlAI first')
    p.add_argument(
        '--overwrite', action='store_true', help='replace an existing OUT_DIR'
    )
    p.add_argument(
        '--quantize', choices=['int8'], default=None, help='also write an int8 copy'
    )
    command_line.add_datapath_arg(p)
    p.add_argument(
        '--verify-task', default='anti_scaling.tasks.chitchat', help='task of --verify'
    )
    p.add_argument(
        '--verify-examples', type=int, default=50, help='examples of --verify (50)'
    )
    p.add_argument('--verify-datatype', default='test', help='split of --verify (test)')
    command_line.add_verbose_arg(p, help=VERBOSE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the export; 0 on success, 2 (one line on stderr) on bad input."""
    install_excepthook()
    argv, task_args = command_line.split_at_double_dash(command_line.command_argv(argv))
    args = parser().parse_args(argv)
    if not args.verbose:
        command_line.quiet_libraries(transformers=True)
    return command_line.exit_status(lambda: _export(args, task_args))


def _export(args: argparse.Namespace, task_args: list[str]) -> int:
    """Export (and verify), then say what was written and what the check found."""
    from ..export.hf.to_hf import export_to_hf

    result = export_to_hf(
        args.model_file,
        args.out_dir,
        args.datapath,
        overwrite=args.overwrite,
        verify=args.verify,
        quantize=args.quantize,
        verify_options={
            'task': args.verify_task,
            'examples': args.verify_examples,
            'datatype': args.verify_datatype,
            'task_args': task_args,
        },
    )
    print(f'{args.out_dir}: {result.architecture} ({", ".join(result.files)})')
    v = result.verification
    if v:
        print(
            f"verified on {v['examples']} examples: context ids {v['context_ids_equal']}, "
            f"label ids {v['label_ids_equal']}, greedy replies {v['greedy_identical']} "
            f"identical; largest logit difference {v['max_abs_logit_diff']:.2e}"
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
