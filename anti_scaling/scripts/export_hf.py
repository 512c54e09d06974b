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

from ..errors import DistillationError, install_excepthook, print_error
from .distill_report import DEFAULT_DATAPATH


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = argparse.ArgumentParser(
        prog='python -m anti_scaling.scripts.export_hf',
        description='Write a ParlAI generator as a Hugging Face transformers folder.',
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
    p.add_argument(
        '-dp',
        '--datapath',
        default=DEFAULT_DATAPATH,
        help=f"ParlAI's data folder (default {DEFAULT_DATAPATH})",
    )
    p.add_argument(
        '--verify-task', default='anti_scaling.tasks.chitchat', help='task of --verify'
    )
    p.add_argument(
        '--verify-examples', type=int, default=50, help='examples of --verify (50)'
    )
    p.add_argument('--verify-datatype', default='test', help='split of --verify (test)')
    p.add_argument(
        '--verbose', action='store_true', help="show ParlAI's and transformers' logging"
    )
    return p


def quiet_libraries() -> None:
    """Silence ParlAI's info logging and transformers' progress bars."""
    import parlai.utils.logging as parlai_logging
    import transformers

    parlai_logging.set_log_level(parlai_logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the export; 0 on success, 2 (one line on stderr) on bad input."""
    install_excepthook()
    argv = list(sys.argv[1:] if argv is None else argv)
    task_args: list[str] = []
    if '--' in argv:
        cut = argv.index('--')
        argv, task_args = argv[:cut], argv[cut + 1 :]
    args = parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    from ..export.hf.to_hf import export_to_hf

    try:
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
    except DistillationError as e:
        print_error(e)
        return 2
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
