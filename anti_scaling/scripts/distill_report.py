"""Compare a teacher and its students: quality against generation speed.

    python -m anti_scaling.scripts.distill_report --teacher T --students A B ... \\
        --out DIR -t TASK [-dp DP] [--num-examples N] [--timing-examples M] \\
        [--batchsize B] [--eval-batchsize E] [--beam-size K] [--labels NAME ...] \\
        [--baselines NAME ...] [--bootstrap R] [--target-speedup X] \\
        [--target-share S] [--overwrite] [--quantize int8] \\
        [--runtimes parlai ct2 ct2-int8] [TASK OPTIONS]

Evaluates every model (teacher included) on the same examples of the task's
test split (all of them unless ``--num-examples N``) and writes
``DIR/report.json`` (every figure and the settings), ``DIR/report.md`` (the
table) and ``DIR/quality_vs_speed.png``. Per model: parameters; ParlAI's
perplexity and token accuracy under teacher forcing; teacher agreement (share
of label tokens where the model's argmax equals the teacher's); for greedy
search and beam search of size ``K``: ParlAI's F1 and sacrebleu corpus BLEU
against the references and against the teacher's replies (replies to every
example, generated in batches of ``E``); seconds per reply on CPU on the first
``M`` examples (default 100) at batch size ``B`` (mean, median, interquartile
range and p90; warm-up excluded), replies per second at batch size ``E``, and
the speed-ups over the teacher. Every quality figure carries a 95% interval
from a paired bootstrap over the examples (``R`` resamples, the same for every
model), for its value, its share of the teacher's and the gain over the
baseline; the speed-up carries one over the timed replies. With
``--target-speedup`` and ``--target-share`` each model gets a verdict per
measure: met, missed or undecided at 95%.

Students may be stripped plain models or unstripped distillation students;
they must use the teacher's dictionary. ``--baselines`` names the students (by
label) trained without a teacher: the plot draws them apart. ``--quantize
int8`` adds, after each model, a copy with its linear layers dynamically
quantised to int8, evaluated and timed like the others (rows labelled
``'<label> int8'``). With ``--baselines``, each distilled student is paired
with the baseline of its shape: the report states the teacher's margin over
that baseline, the student's gain over it (with its interval) and the share of
the gap it closed, warns when the margin is small
(:mod:`anti_scaling.report.margins`) and says when the student ends below its
baseline. ``--runtimes parlai ct2 ct2-int8`` adds, per model and CTranslate2
runtime (float32, int8), a row measured in that runtime: F1 and BLEU from its
own replies, perplexity from its own scores of the references, seconds per reply
at ``B``, replies per second at ``E`` and the speed-ups over the teacher in
ParlAI (:mod:`anti_scaling.report.runtimes`).

Every other option goes to the task, as in ``parlai eval_model``: e.g.
``-t jsonfile --jsonfile-datapath FILE.jsonl``, ``-t fromfile:parlaiformat
--fromfile-datapath FILE``, ``--chitchat-max-turns 8`` (ParlAI's main options
and those the task declares; the older form puts them after ``--``). ``-dt`` and
``-bs`` are this script's ``--datatype`` and ``--batchsize``.

Bad input (a missing model file, a student with another dictionary, an unknown
task or task option, an existing report without ``--overwrite``, a target
share outside (0, 1], fewer than 100 resamples, a timing sample larger than the
examples evaluated) stops with one line before any evaluation.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from . import command_line

if TYPE_CHECKING:
    from ..report.build import ReportSettings


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser(
        'distill_report',
        'Quality against generation speed for a teacher and students.',
        task_parser='eval_model',
    )
    p.add_argument('--teacher', required=True, help='the teacher model file')
    p.add_argument('--students', nargs='+', required=True, help='student model files')
    p.add_argument('--out', required=True, help='folder of the report files')
    p.add_argument('-t', '--task', required=True, help='ParlAI task')
    command_line.add_datapath_arg(p)
    p.add_argument('-dt', '--datatype', default='test', help='split (default test)')
    p.add_argument(
        '--num-examples',
        type=int,
        default=0,
        help='quality on the first N examples (0, the default: the whole split)',
    )
    p.add_argument(
        '--timing-examples',
        type=int,
        default=None,
        help='examples timed at --batchsize (default: the first 100)',
    )
    p.add_argument(
        '-bs',
        '--batchsize',
        type=int,
        default=1,
        help='batch size of the timed generation (1): seconds per reply',
    )
    p.add_argument(
        '--eval-batchsize',
        type=int,
        default=32,
        help='batch size of the teacher-forced pass and of the generation of every '
        'example (32): quality and replies per second',
    )
    p.add_argument(
        '--beam-size', type=int, default=4, help='beam size (4; 1: greedy only)'
    )
    p.add_argument(
        '--warmup', type=int, default=2, help='untimed warm-up batches per model (2)'
    )
    p.add_argument(
        '--threads', type=int, default=None, help="torch threads (torch's default)"
    )
    p.add_argument(
        '--labels', nargs='+', default=None, help='display names: teacher, students'
    )
    p.add_argument(
        '--baselines',
        nargs='+',
        default=[],
        help='labels of students trained without a teacher (drawn apart in the plot)',
    )
    p.add_argument(
        '--overwrite', action='store_true', help='replace an earlier report in --out'
    )
    p.add_argument(
        '--quantize',
        choices=['int8'],
        default=None,
        help='add a dynamically quantised int8 copy of every model',
    )
    p.add_argument(
        '--bootstrap',
        type=int,
        default=1000,
        help='paired bootstrap resamples of the 95%% intervals (1000; at least 100)',
    )
    p.add_argument(
        '--target-speedup',
        type=float,
        default=None,
        help='verdict on each model: is its speed-up interval above this?',
    )
    p.add_argument(
        '--target-share',
        type=float,
        default=None,
        help="verdict on each model: is the interval of its share of the teacher's "
        'figures above this (in (0, 1], e.g. 0.97)?',
    )
    p.add_argument(
        '--runtimes',
        nargs='+',
        default=['parlai'],
        help='also serve every model in CTranslate2 and measure it there: '
        'parlai ct2 ct2-int8 (needs the serve extra)',
    )
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    command_line.add_verbose_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report; 0 on success, 2 (one line on stderr) on bad input."""
    argv = command_line.command_argv(argv)
    args, task_args = command_line.split_task_args(parser(), argv)
    from ..report.build import ReportSettings

    if not args.verbose:
        command_line.quiet_libraries()
    settings = command_line.settings_from(
        ReportSettings,
        args,
        task_args=task_args,
        progress=not args.quiet,
        command='python -m anti_scaling.scripts.distill_report ' + shlex.join(argv),
        runtime_factory=_runtime_factory(args),
    )
    return command_line.exit_status(lambda: _report(settings))


def _runtime_factory(args: argparse.Namespace) -> object | None:
    """What builds the CTranslate2 rows of ``--runtimes`` (None: ParlAI only, or
    ctranslate2 missing, which the report then refuses in one line)."""
    if all(r == 'parlai' for r in args.runtimes):
        return None
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        from ..errors import DistillationError

        def missing(*_: object) -> None:
            raise DistillationError(
                "--runtimes ct2: ctranslate2 is not installed: pip install -c "
                "constraints.txt -e '.[serve]'"
            )

        return missing
    from ..serving.speed import ct2_factory

    return ct2_factory(args.datapath, args.threads)


def _report(settings: ReportSettings) -> int:
    """Build the report and print its summary lines."""
    from ..report.build import build_report
    from ..report.interval_text import model_line, verdict_line
    from ..report.margins import below_baseline_line, summary_line

    report = build_report(settings)
    for m in report['models']:
        print(model_line(m))
        if m.get('verdicts'):
            print('  targets: ' + verdict_line(m['verdicts']))
    for p in (report['baselines'] or {}).get('pairs', []):
        print(summary_line(p))
        for line in (p['warning'], below_baseline_line(p)):
            if line:
                print(line)
    print(f'report written to {settings.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
