"""The chitchat distillation experiment: a teacher, seven students, one report.

    python -m experiments.chitchat_experiment teacher  --out runs/chitchat
    python -m experiments.chitchat_experiment students --out runs/chitchat
    python -m experiments.chitchat_experiment report   --out runs/chitchat \\
        --docs docs
    python -m experiments.chitchat_experiment all      --out runs/chitchat \\
        --docs docs

(``make chitchat-teacher`` and ``make chitchat-experiment``.) Every step runs
``parlai`` (or our own scripts) in a subprocess with ``OMP_NUM_THREADS`` set to
``--threads`` (torch's thread count), prints the exact command, appends it to
``OUT/commands.sh`` and logs its output to ``OUT/logs/STEP.log``. A step whose
result already exists is skipped, so an interrupted experiment resumes where it
stopped; ``--force`` reruns it. Nothing is downloaded: the data comes from the
``chitchat-dataset`` package and ParlAI's data folder is ``OUT/../parlai_data``
unless ``-dp`` says otherwise.

Models (all ``transformer/generator`` architectures, one dictionary):

* ``teacher``: 2 encoder + 6 decoder layers, width 256, trained for
  ``--teacher-minutes`` (42 by default), or with ``--teacher-patience N`` (what
  ``make chitchat-teacher`` uses) until ``N`` validations in a row bring no
  better perplexity, ``--teacher-minutes`` per sitting, each sitting resuming
  from the checkpoint;
* every student trains for ``--steps`` updates (1,000) with the teacher's
  optimiser, batch size and seed;
* students A (2 + 1 layers, width 256: the teacher with 5 of its 6 decoder
  layers removed; generation costs mostly decoder layers and the output
  projection, so fewer decoder layers is what makes it faster): ``A-baseline``
  (no teacher: every coefficient 0), ``A-wide`` (DistillTransformerAgent:
  teacher layers copied, hidden and prediction terms) and ``A-narrow``
  (DistillNarrowTransformerAgent: every intermediate term);
* students B (1 + 1 layers, width 128): ``B-baseline`` and ``B-narrow``;
* students C (2 + 2 layers, width 256: the quality end of the curve):
  ``C-baseline`` and ``C-wide``.

The narrow students are stripped with ``remove_projection_matrices`` (into
``MODEL.plain``) and every model is compared by
:mod:`anti_scaling.scripts.distill_report` on the same test examples.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from anti_scaling.errors import DistillationError, install_excepthook
from anti_scaling.fileio import atomic_write

TASK = 'anti_scaling.tasks.chitchat'
#: The dictionary: built offline from the training split, lower-cased, 8k words
#: (97.6% of the training tokens; the output projection is a large share of the
#: cost of every decoding step, so a small vocabulary helps every model).
DICT_FLAGS = ('--dict-tokenizer', 're', '--dict-lower', 'true')
DICT_MAXTOKENS = 8000
#: Contexts average ~1,000 tokens: keep their last 64 tokens, labels' first 32.
TEXT_FLAGS = ('--text-truncate', '64', '--label-truncate', '32')
TEACHER_ARCH = (
    '--n-encoder-layers',
    '2',
    '--n-decoder-layers',
    '6',
    '--embedding-size',
    '256',
    '--ffn-size',
    '1024',
    '--n-heads',
    '4',
    # Pre-LayerNorm learns much faster than ParlAI's default post-LN ('aiayn'),
    # which sat at the unigram plateau (ppl ~430) for hundreds of steps.
    '--variant',
    'prelayernorm',
    '--activation',
    'gelu',
    # Far less than one epoch is seen: nothing to regularise.
    '--dropout',
    '0',
)
#: Optimisation shared by the teacher and every student.
OPTIM_FLAGS = (
    '-bs',
    '32',
    '--optimizer',
    'adam',
    '-lr',
    '2e-3',
    '--betas',
    '0.9,0.98',
    '--lr-scheduler',
    'invsqrt',
    '--warmup-updates',
    '200',
    '--gradient-clip',
    '1.0',
    '--seed',
    '0',
)
#: Validation during training: perplexity only (no generation), on a capped set.
VALID_FLAGS = (
    '--skip-generation',
    'true',
    '-vmt',
    'ppl',
    '-vmm',
    'min',
    '--validation-max-exs',
    '1000',
    '--short-final-eval',
    'true',
    '--log-every-n-secs',
    '60',
)
NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
NO_TEACHER = (
    '--task-loss-coeff',
    '1',
    '--encoder-loss-coeff',
    '0',
    '--hidden-loss-coeff',
    '0',
    '--pred-loss-coeff',
    '0',
    '--embedding-loss-coeff',
    '0',
    '--self-attn-loss-coeff',
    '0',
    '--enc-dec-attn-loss-coeff',
    '0',
)
#: Wide students: the hidden and prediction terms (scaled as below).
WIDE_TERMS = (
    '--task-loss-coeff',
    '1',
    '--encoder-loss-coeff',
    '0',
    '--hidden-loss-coeff',
    '0.25',
    '--pred-loss-coeff',
    '64',
)
#: The former ParlAI anti_scaling project's BlenderBot weights (task 1, pred 64,
#: embedding 4, hidden 64, self-attn 4, enc-dec-attn 64), with the three terms on
#: raw pre-LayerNorm states scaled down: at the first step, dec_hid_loss is ~274,
#: dec_self_attn_loss ~342 and enc_dec_attn_loss ~20 (residual streams and
#: attention scores are not normalised in a pre-LN model), against pred_loss ~6.9
#: and the task loss ~11; with the BlenderBot weights the hidden term alone was
#: ~18,000 and swamped the rest. These weights leave the prediction term about two
#: thirds of the loss at the start.
NARROW_TERMS = (
    *WIDE_TERMS,
    '--embedding-loss-coeff',
    '4',
    '--self-attn-loss-coeff',
    '0.1',
    '--enc-dec-attn-loss-coeff',
    '4',
)
ARCH_A = ('--n-encoder-layers', '2', '--n-decoder-layers', '1')
ARCH_C = ('--n-encoder-layers', '2', '--n-decoder-layers', '2')
ARCH_B = (
    '--n-encoder-layers',
    '1',
    '--n-decoder-layers',
    '1',
    '--embedding-size',
    '128',
    '--ffn-size',
    '512',
)


@dataclass(frozen=True)
class Student:
    """One student run: its name, agent, architecture and loss flags."""

    name: str
    model: str
    arch: tuple[str, ...]
    loss: tuple[str, ...]
    strip: bool = False
    label: str = ''
    extra: tuple[str, ...] = field(default=())


STUDENTS = (
    Student('A-baseline', NARROW, ARCH_A, NO_TEACHER, label='A-baseline 2+1 d256'),
    Student('A-wide', WIDE, ARCH_A, WIDE_TERMS, label='A-wide 2+1 d256'),
    Student(
        'A-narrow', NARROW, ARCH_A, NARROW_TERMS, strip=True, label='A-narrow 2+1 d256'
    ),
    Student('B-baseline', NARROW, ARCH_B, NO_TEACHER, label='B-baseline 1+1 d128'),
    Student(
        'B-narrow', NARROW, ARCH_B, NARROW_TERMS, strip=True, label='B-narrow 1+1 d128'
    ),
    Student('C-baseline', NARROW, ARCH_C, NO_TEACHER, label='C-baseline 2+2 d256'),
    Student('C-wide', WIDE, ARCH_C, WIDE_TERMS, label='C-wide 2+2 d256'),
)


@dataclass
class Layout:
    """Where an experiment keeps its files."""

    out: str
    datapath: str

    @property
    def dict_file(self) -> str:
        return os.path.join(self.out, 'dict')

    @property
    def teacher(self) -> str:
        return os.path.join(self.out, 'teacher', 'model')

    def student(self, name: str) -> str:
        return os.path.join(self.out, name, 'model')

    def log(self, step: str) -> str:
        return os.path.join(self.out, 'logs', step + '.log')


class Runner:
    """Run commands with a fixed thread count, logging each command and its output."""

    def __init__(
        self, layout: Layout, threads: int, dry_run: bool = False, force: bool = False
    ) -> None:
        self.layout = layout
        self.threads = threads
        self.dry_run = dry_run
        self.force = force

    def marker(self, step: str) -> str:
        """The file that says ``step`` finished (``OUT/logs/STEP.done``)."""
        return os.path.join(self.layout.out, 'logs', step + '.done')

    def step(self, step: str, argv: Sequence[str], fresh: str | None = None) -> None:
        """Run ``argv`` unless ``step`` already finished (or ``force``).

        ``fresh``: a file or folder removed first, so that a rerun never starts
        from the files of an earlier or interrupted run (ParlAI resumes training
        from an existing model file and keeps an existing dictionary).
        """
        if os.path.exists(self.marker(step)) and not self.force:
            print(f'[{step}] finished earlier: skipped (--force reruns it)', flush=True)
            return
        if fresh and os.path.exists(fresh) and not self.dry_run:
            print(f'[{step}] removing the earlier {fresh}', flush=True)
            if os.path.isdir(fresh):
                shutil.rmtree(fresh)
            else:
                os.remove(fresh)
        self.run(step, argv)

    def run(self, step: str, argv: Sequence[str]) -> None:
        """Run ``argv``; raise :class:`DistillationError` naming the log if it fails."""
        line = f'OMP_NUM_THREADS={self.threads} ' + shlex.join(argv)
        print(f'[{step}] {line}', flush=True)
        if self.dry_run:
            return
        os.makedirs(os.path.join(self.layout.out, 'logs'), exist_ok=True)
        with open(os.path.join(self.layout.out, 'commands.sh'), 'a') as fh:
            fh.write(f'# {step} ({time.strftime("%Y-%m-%d %H:%M:%S")})\n{line}\n')
        env = {**os.environ, 'OMP_NUM_THREADS': str(self.threads)}
        start = time.time()
        with open(self.layout.log(step), 'w') as log:
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        took = time.time() - start
        print(f'[{step}] exit {code} after {took / 60:.1f} min', flush=True)
        if code:
            raise DistillationError(
                f'step {step} failed (exit {code}): see {self.layout.log(step)}'
            )
        with open(self.marker(step), 'w') as fh:
            fh.write(f'{took:.0f} s\n')


def parlai(*args: str) -> list[str]:
    """A ``parlai`` command line run with this Python."""
    return [sys.executable, '-m', 'parlai', *args]


def dict_command(layout: Layout) -> list[str]:
    """Build the dictionary from the training split (offline, seconds)."""
    return parlai(
        'build_dict',
        '-t',
        TASK,
        '-dp',
        layout.datapath,
        '--dict-file',
        layout.dict_file,
        *DICT_FLAGS,
        '--dict-maxtokens',
        str(DICT_MAXTOKENS),
    )


def train_command(
    layout: Layout, model: str, model_file: str, *flags: str
) -> list[str]:
    """``parlai train_model`` of ``model`` into ``model_file`` on the chitchat task."""
    return parlai(
        'train_model',
        '-t',
        TASK,
        '-dp',
        layout.datapath,
        '-m',
        model,
        '-mf',
        model_file,
        *flags,
    )


def teacher_command(layout: Layout, minutes: float, patience: int = 0) -> list[str]:
    """Train the teacher until ``minutes`` of training in all (validating every 5
    minutes); with ``patience``, stop earlier after that many validations
    without a better perplexity. ParlAI resumes from ``MODEL.checkpoint`` (its
    weights, optimiser, training time and impatience) when one exists."""
    return train_command(
        layout,
        'transformer/generator',
        layout.teacher,
        '--dict-file',
        layout.dict_file,
        *DICT_FLAGS,
        '--dict-maxtokens',
        str(DICT_MAXTOKENS),
        *TEXT_FLAGS,
        *TEACHER_ARCH,
        *OPTIM_FLAGS,
        *VALID_FLAGS,
        '--max-train-time',
        str(int(minutes * 60)),
        # ParlAI stops at --max-train-time without validating and keeps the best
        # validated model: frequent validation loses at most 5 minutes.
        '-vtim',
        '300',
        '--save-after-valid',
        'true',
        '--validation-patience',
        str(patience),
    )


def teacher_progress(layout: Layout) -> tuple[float, int]:
    """Seconds trained so far and validations since the best one, from the
    teacher's checkpoint (0, 0 when there is none)."""
    path = layout.teacher + '.checkpoint.trainstats'
    if not os.path.exists(path):
        return 0.0, 0
    with open(path) as fh:
        stats = json.load(fh)
    return float(stats.get('train_time') or 0.0), int(stats.get('impatience') or 0)


def valid_eval_command(layout: Layout, model_file: str, report: str) -> list[str]:
    """Valid perplexity and greedy F1 of a model on the first 1,000 valid examples."""
    return parlai(
        'eval_model',
        '-t',
        TASK,
        '-dp',
        layout.datapath,
        '-mf',
        model_file,
        '-dt',
        'valid',
        '--num-examples',
        '1000',
        '-bs',
        '32',
        '--skip-generation',
        'false',
        '--inference',
        'greedy',
        '--beam-size',
        '1',
        '--report-filename',
        report,
    )


def student_command(layout: Layout, student: Student, steps: int) -> list[str]:
    """Train one student for ``steps`` updates (it inherits the teacher's options)."""
    return train_command(
        layout,
        student.model,
        layout.student(student.name),
        '--teacher-model',
        layout.teacher,
        *student.arch,
        *student.loss,
        *OPTIM_FLAGS,
        *VALID_FLAGS,
        # No validation until the end: ParlAI stops at --max-train-steps before
        # validating and reloads the best *validated* model, which would drop the
        # steps after the last validation. Without one, the final model is saved.
        '--max-train-steps',
        str(steps),
        *student.extra,
    )


def plain_copy_command(model_file: str, *flags: str) -> list[str]:
    """Strip ``model_file`` into ``MODEL.plain`` (a plain transformer/generator)."""
    return [
        sys.executable,
        '-m',
        'anti_scaling.scripts.remove_projection_matrices',
        model_file,
        '--output',
        model_file + '.plain',
        *flags,
    ]


def strip_command(layout: Layout, student: Student) -> list[str]:
    """Strip a narrow student into ``MODEL.plain`` (a plain transformer/generator)."""
    return plain_copy_command(layout.student(student.name))


def final_model(layout: Layout, student: Student) -> str:
    """The model file the report compares: stripped for narrow distilled students."""
    model_file = layout.student(student.name)
    return model_file + '.plain' if student.strip else model_file


def report_command(layout: Layout, out: str, args: argparse.Namespace) -> list[str]:
    """Compare the teacher and every student on the same test examples."""
    return [
        sys.executable,
        '-m',
        'anti_scaling.scripts.distill_report',
        '--teacher',
        layout.teacher,
        '--students',
        *(final_model(layout, s) for s in STUDENTS),
        '--labels',
        'teacher 2+6 d256',
        *(s.label for s in STUDENTS),
        '--baselines',
        *(s.label for s in STUDENTS if s.loss == NO_TEACHER),
        '--out',
        out,
        '-t',
        TASK,
        '-dp',
        layout.datapath,
        '--num-examples',
        str(args.report_examples),
        '--batchsize',
        '1',
        '--beam-size',
        '4',
        '--threads',
        str(args.report_threads),
        '--overwrite',
    ]


def run_teacher(runner: Runner, args: argparse.Namespace) -> bool:
    """Dictionary, teacher, and the teacher's valid perplexity and F1.

    Without ``--teacher-patience`` the teacher trains ``--teacher-minutes`` from
    scratch. With it, it trains until its validation perplexity has not improved
    for that many validations, across sittings: each run adds up to
    ``--teacher-minutes`` of training to the checkpoint's and stops there; the
    step is done only once patience has run out (``--restart-teacher`` starts
    over). Returns whether the teacher is ready for its students.
    """
    layout = runner.layout
    runner.step('dict', dict_command(layout), fresh=layout.dict_file)
    patience = args.teacher_patience
    if not patience:
        runner.step(
            'teacher',
            teacher_command(layout, args.teacher_minutes),
            fresh=os.path.dirname(layout.teacher),
        )
    elif not os.path.exists(runner.marker('teacher')) or runner.force:
        if args.restart_teacher and os.path.isdir(os.path.dirname(layout.teacher)):
            shutil.rmtree(os.path.dirname(layout.teacher))
        trained, impatience = teacher_progress(layout)
        if impatience < patience:
            total = trained / 60 + args.teacher_minutes
            runner.run('teacher', teacher_command(layout, total, patience))
            trained, impatience = teacher_progress(layout)
        if runner.dry_run:
            return True
        if impatience < patience:
            os.remove(runner.marker('teacher'))
            print(
                f'[teacher] not converged after {trained / 60:.0f} min of training '
                f'({impatience} of {patience} validations without improvement): '
                'run the same command again to continue from the checkpoint',
                flush=True,
            )
            return False
        with open(runner.marker('teacher'), 'w') as fh:
            fh.write(f'{trained:.0f} s, converged\n')
    report = os.path.join(layout.out, 'teacher', 'valid_report.json')
    runner.step('teacher-valid', valid_eval_command(layout, layout.teacher, report))
    if not runner.dry_run:
        summarize_teacher(layout)
    return True


def train_summary(model_file: str) -> dict:
    """Steps, time and final valid figures of a finished ``parlai train_model`` run."""
    with open(model_file + '.trainstats') as fh:
        stats = json.load(fh)
    final = stats.get('final_valid_report') or {}
    valids = stats.get('valid_reports') or []
    # ParlAI keeps the best validated model; without validations, the last one.
    best = min(valids, key=lambda r: r.get('ppl', float('inf')), default=None)
    return {
        'train_steps': stats.get('train_steps'),
        'saved_model_step': (
            best.get('total_train_updates') if best else stats.get('train_steps')
        ),
        'train_time_min': round(stats.get('train_time', 0) / 60, 1),
        'train_epochs': stats.get('total_epochs'),
        'final_valid_exs': final.get('exs'),
        'final_valid_ppl': final.get('ppl'),
        'final_valid_token_acc': final.get('token_acc'),
        'final_valid_teacher_acc': final.get('teacher_acc'),
    }


def summarize_teacher(layout: Layout) -> dict:
    """Write ``OUT/teacher/summary.json``: training, valid ppl and greedy F1."""
    with open(os.path.join(layout.out, 'teacher', 'valid_report.json')) as fh:
        valid = json.load(fh)['report']
    summary = {
        **train_summary(layout.teacher),
        'valid_examples': valid.get('exs'),
        'valid_ppl': valid.get('ppl'),
        'valid_token_acc': valid.get('token_acc'),
        'valid_f1_greedy': valid.get('f1'),
    }
    atomic_write(
        os.path.join(layout.out, 'teacher', 'summary.json'),
        lambda fh: (json.dump(summary, fh, indent=2), fh.write('\n')),
    )
    print('teacher:', json.dumps(summary), flush=True)
    return summary


def training_order() -> list[Student]:
    """Distilled students first (a problem with the loss shows early), then baselines."""
    return sorted(STUDENTS, key=lambda s: s.loss == NO_TEACHER)


def run_students(runner: Runner, args: argparse.Namespace) -> None:
    """Train every student for the same number of steps; strip the narrow ones."""
    layout = runner.layout
    names = set(args.only or [s.name for s in STUDENTS])
    for student in training_order():
        if student.name not in names:
            continue
        runner.step(
            student.name,
            student_command(layout, student, args.steps),
            fresh=os.path.dirname(layout.student(student.name)),
        )
        if student.strip:
            runner.step(student.name + '-strip', strip_command(layout, student))


def shown(argv: Sequence[str]) -> str:
    """A command as a user types it (``python`` for this interpreter)."""
    argv = ['python' if a == sys.executable else a for a in argv]
    return shlex.join(argv)


def training_record(layout: Layout, args: argparse.Namespace) -> dict:
    """Every training run: its exact command and what it reached."""
    record = {
        'threads': args.threads,
        'teacher': {
            'dict_command': shown(dict_command(layout)),
            'command': shown(teacher_command(layout, args.teacher_minutes)),
            'valid_command': shown(
                valid_eval_command(
                    layout,
                    layout.teacher,
                    os.path.join(layout.out, 'teacher', 'valid_report.json'),
                )
            ),
            **summarize_teacher(layout),
        },
    }
    for student in STUDENTS:
        model_file = layout.student(student.name)
        entry = {
            'label': student.label,
            'command': shown(student_command(layout, student, args.steps)),
        }
        if student.strip:
            entry['strip_command'] = shown(strip_command(layout, student))
        if os.path.isfile(model_file + '.trainstats'):
            entry.update(train_summary(model_file))
        record[student.name] = entry
    return record


def run_report(runner: Runner, args: argparse.Namespace) -> None:
    """The report, and the training record, written to ``--docs``."""
    runner.step('report', report_command(runner.layout, args.docs, args))
    if runner.dry_run:
        return
    record = training_record(runner.layout, args)
    record['report_command'] = shown(report_command(runner.layout, args.docs, args))
    atomic_write(
        os.path.join(args.docs, 'training.json'),
        lambda fh: (json.dump(record, fh, indent=2), fh.write('\n')),
    )


def main(argv: list[str] | None = None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(
        prog='python -m experiments.chitchat_experiment',
        description='Train a chitchat teacher, distil it into students, report.',
    )
    parser.add_argument('step', choices=('teacher', 'students', 'report', 'all'))
    parser.add_argument('--out', default='runs/chitchat', help='models and logs')
    parser.add_argument('-dp', '--datapath', default=None, help="ParlAI's data dir")
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument(
        '--teacher-minutes',
        type=float,
        default=42.0,
        help='teacher training minutes (with --teacher-patience: per sitting)',
    )
    parser.add_argument(
        '--teacher-patience',
        type=int,
        default=0,
        help='train the teacher until this many validations (5 min apart) bring '
        'no better perplexity, resuming across sittings (0: --teacher-minutes once)',
    )
    parser.add_argument(
        '--restart-teacher',
        action='store_true',
        help='with --teacher-patience: discard the checkpoint and start over',
    )
    parser.add_argument('--steps', type=int, default=1000, help='student updates')
    parser.add_argument('--only', nargs='*', help='train only these students')
    parser.add_argument('--docs', default='docs/chitchat', help='report folder')
    parser.add_argument('--report-examples', type=int, default=400)
    parser.add_argument(
        '--report-threads', type=int, default=1, help='torch threads when timing'
    )
    parser.add_argument('--force', action='store_true', help='rerun finished steps')
    parser.add_argument('--dry-run', action='store_true', help='print the commands')
    args = parser.parse_args(argv)
    out = os.path.normpath(args.out)
    datapath = args.datapath or os.path.join(os.path.dirname(out), 'parlai_data')
    runner = Runner(Layout(out, datapath), args.threads, args.dry_run, args.force)
    if args.step in ('teacher', 'all') and not run_teacher(runner, args):
        return 0
    if args.step in ('students', 'all'):
        run_students(runner, args)
    if args.step in ('report', 'all'):
        run_report(runner, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
