"""Export a ParlAI generator as a CTranslate2 model folder, to serve it at engine speed.

    python -m anti_scaling.scripts.export_ct2 MODEL OUT_DIR [--quantization Q] \\
        [--verify] [--overwrite] [--device cpu|cuda] [-dp DATAPATH] \\
        [--verify-task TASK] [--verify-examples N] [--verify-datatype test] \\
        [--verify-beam B] [-- TASK OPTIONS]

A thin command line over :mod:`anti_scaling.export.ct2`: ``transformer/generator``
(``--variant prelayernorm``, ``aiayn``, ``xlm``; relu or gelu; learned or
sinusoidal positions; segments) and ``bart`` models, teachers and students (a
student still holding its projections is stripped on the fly; the input file is
not changed). Q: float32 (default), int8, int8_float32 (CPU); float16,
int8_float16, bfloat16, int8_bfloat16 (CUDA, ``--device cuda``); a type the
device cannot run is refused.

``--verify`` compares a float32 copy with ParlAI before anything is written: ids,
greedy replies token for token, reference log-probabilities within 1e-3, and
reports beam agreement; for a quantised folder, its greedy agreement with float32
and its change in token accuracy. Bad input: one line, nothing written.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import install_excepthook
from ..export.ct2.weight_types import QUANTIZATIONS
from . import command_line


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser(
        'export_ct2', 'Write a ParlAI generator as a CTranslate2 model folder.'
    )
    p.add_argument(
        'model_file', help='the ParlAI model file (MODEL, MODEL.opt, MODEL.dict)'
    )
    p.add_argument('out_dir', help='the folder to write')
    p.add_argument(
        '--quantization',
        choices=QUANTIZATIONS,
        default='float32',
        help='weight type (float32)',
    )
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    p.add_argument('--verify', action='store_true', help='compare with ParlAI first')
    p.add_argument(
        '--overwrite', action='store_true', help='replace an existing OUT_DIR'
    )
    command_line.add_datapath_arg(p)
    p.add_argument(
        '--verify-task', default='anti_scaling.tasks.chitchat', help='task of --verify'
    )
    p.add_argument(
        '--verify-examples', type=int, default=50, help='examples of --verify (50)'
    )
    p.add_argument('--verify-datatype', default='test', help='split of --verify (test)')
    p.add_argument(
        '--verify-beam',
        type=int,
        default=None,
        help="beam size compared (the model's, else 4)",
    )
    command_line.add_verbose_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the export; 0 on success, 2 (one line on stderr) on bad input."""
    install_excepthook()
    argv, task_args = command_line.split_at_double_dash(command_line.command_argv(argv))
    args = parser().parse_args(argv)
    if not args.verbose:
        command_line.quiet_libraries()
    return command_line.exit_status(lambda: _export(args, task_args))


def _export(args: argparse.Namespace, task_args: list[str]) -> int:
    """Export (and verify), then say what was written and what the check found."""
    from ..export.ct2.to_ct2 import export_to_ct2

    result = export_to_ct2(
        args.model_file,
        args.out_dir,
        args.datapath,
        quantization=args.quantization,
        overwrite=args.overwrite,
        verify=args.verify,
        device=args.device,
        verify_options={
            'task': args.verify_task,
            'examples': args.verify_examples,
            'datatype': args.verify_datatype,
            'task_args': task_args,
            'beam': args.verify_beam,
        },
    )
    print(
        f'{args.out_dir}: CTranslate2, --variant {result.variant}, '
        f'{result.quantization} ({", ".join(result.files)})'
    )
    v = result.verification
    if v:
        n = v['examples']
        print(
            f"verified on {n} examples (float32): context ids {v['context_ids_equal']}/{n}, "
            f"greedy replies {v['greedy_identical']}/{n} identical, beam "
            f"{v['beam_size']} {v['beam_identical']}/{n}; largest log-prob "
            f"difference {v['max_abs_log_prob_diff']:.2e}"
        )
        if 'quantized_greedy_agreement' in v:
            print(
                f"{result.quantization}: greedy replies equal float32's on "
                f"{v['quantized_greedy_agreement']:.0%}; token accuracy "
                f"{v['quantized_token_accuracy']:.4f} ({v['token_accuracy_change']:+.4f} "
                'against float32)'
            )
    return 0


if __name__ == '__main__':
    sys.exit(main())
