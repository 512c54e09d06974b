"""How fast a student replies in ParlAI and in CTranslate2 (a benchmark, not a test).

    python -m anti_scaling.scripts.benchmark_serving --teacher T --student S \\
        [--examples 100] [--batchsize 32] [--threads 1] [--beam 1] \\
        [--ct2 float32 int8] [--teacher-ct2] [--exact-beam] [-t TASK] [-dp DATAPATH]

On the first ``--examples`` test contexts of the task (default: the offline
chitchat test split), built by the teacher's agent as ``distill_report`` builds
them, it times the teacher and the student in ParlAI and the student exported
to CTranslate2 (one folder per ``--ct2`` weight type, written to a temporary
folder), all with the same decoding (greedy or ``--beam``, no n-gram blocking,
the teacher's reply limit), and prints per runtime: the median and mean seconds
per reply at batch size 1 (runtimes interleaved context by context), replies
per second at ``--batchsize``, and the speed-up over the teacher in ParlAI;
with the runtime, threads, batch sizes and machine. Timers are the standard
library's ``time.perf_counter`` (:mod:`anti_scaling.serving.speed`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from ..errors import check_at_least_one, install_excepthook
from . import command_line


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser(
        'benchmark_serving', 'Time a student in ParlAI and in CTranslate2.'
    )
    p.add_argument('--teacher', required=True, help='the teacher model file')
    p.add_argument('--student', required=True, help='the student model file')
    p.add_argument('--examples', type=int, default=100, help='contexts timed (100)')
    p.add_argument('--batchsize', type=int, default=32, help='throughput batch (32)')
    p.add_argument('--threads', type=int, default=1, help='threads of every runtime')
    p.add_argument('--beam', type=int, default=1, help='beam size (1: greedy)')
    p.add_argument(
        '--ct2',
        nargs='*',
        default=['float32', 'int8'],
        help='CTranslate2 weight types timed (float32 int8)',
    )
    p.add_argument(
        '--teacher-ct2', action='store_true', help='also time the teacher in CT2'
    )
    p.add_argument(
        '--exact-beam',
        action='store_true',
        help="ParlAI's beam search replayed on CTranslate2 (its replies; slower)",
    )
    p.add_argument('-t', '--task', default='anti_scaling.tasks.chitchat')
    p.add_argument('--datatype', default='test')
    command_line.add_datapath_arg(p)
    command_line.add_verbose_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 2 (one line) on bad input."""
    install_excepthook()
    args = parser().parse_args(command_line.command_argv(argv))
    if not args.verbose:
        command_line.quiet_libraries()
    return command_line.exit_status(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..export.ct2.to_ct2 import check_quantization, export_to_ct2
    from ..report.evaluation import collect_examples, open_task
    from ..report.models import evaluation_overrides, load_agent
    from ..serving.speed import (
        ct2_engine,
        ct2_runtime,
        machine,
        parlai_runtime,
        time_runtimes,
    )

    check_at_least_one(args, ['examples', 'batchsize', 'threads', 'beam'])
    for quantization in args.ct2:
        check_quantization(quantization, 'cpu')
    torch.set_num_threads(args.threads)
    teacher = load_agent(args.teacher, args.datapath, {})
    overrides = evaluation_overrides(teacher.opt)
    teacher = load_agent(args.teacher, args.datapath, overrides)
    student = load_agent(args.student, args.datapath, overrides)
    task = open_task(args.task, args.datatype, args.datapath, [])
    examples = collect_examples(task, teacher, args.examples)
    limit = overrides['label_truncate'] or teacher.label_truncate
    single = {
        'teacher, ParlAI': parlai_runtime(teacher, 1, args.beam),
        'student, ParlAI': parlai_runtime(student, 1, args.beam),
    }
    batched = {
        'teacher, ParlAI': parlai_runtime(teacher, args.batchsize, args.beam),
        'student, ParlAI': parlai_runtime(student, args.batchsize, args.beam),
    }
    exports = [('student', args.student, q) for q in args.ct2]
    if args.teacher_ct2:
        exports += [('teacher', args.teacher, q) for q in args.ct2]
    with tempfile.TemporaryDirectory(prefix='anti_scaling_bench_') as tmp:
        for role, model_file, quantization in exports:
            folder = f'{tmp}/{role}-{quantization}'
            export_to_ct2(model_file, folder, args.datapath, quantization=quantization)
            engine = ct2_engine(folder, args.threads, limit)
            engine.exact_beam = args.exact_beam
            name = f'{role}, CTranslate2 {quantization}'
            single[name] = batched[name] = ct2_runtime(engine, args.beam)
        timings = time_runtimes(single, examples, batched, args.batchsize)
    reference = timings['teacher, ParlAI'].median()
    search = 'greedy' if args.beam == 1 else f'beam {args.beam}'
    if args.beam > 1:
        search += (
            " (ParlAI's beam search replayed on CTranslate2)"
            if args.exact_beam
            else " (CTranslate2's own beam search)"
        )
    print(
        f'{len(examples)} contexts of {args.task} ({args.datatype}), {search}, at most '
        f'{limit} reply tokens, no n-gram blocking; {args.threads} thread(s); '
        f'{machine()}'
    )
    print()
    print(
        '| model, runtime | median s / reply (batch 1) | mean | vs teacher in '
        f'ParlAI | replies / s (batch {args.batchsize}) |'
    )
    print('|---|---:|---:|---:|---:|')
    for name, t in timings.items():
        print(
            f'| {name} | {t.median():.4f} | {t.mean():.4f} | '
            f'{reference / t.median():.1f}x | {t.throughput:.1f} |'
        )
    ours = timings['student, ParlAI'].replies
    for name, t in timings.items():
        if name.startswith('student, CTranslate2'):
            same = sum(a == b for a, b in zip(ours, t.replies))
            print(f"{name}: replies equal ParlAI's on {same}/{len(ours)} contexts")
    return 0


if __name__ == '__main__':
    sys.exit(main())
