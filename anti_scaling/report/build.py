"""Build a distillation report: check, load, evaluate, time, write."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

import parlai
import torch
from tqdm import tqdm

from ..compat import tolerant_byte_level_decoding
from ..errors import DistillationError, check_at_least_one
from .evaluation import (
    agreement,
    agreement_counts,
    bleu,
    collect_examples,
    f1_per_example,
    open_task,
    teacher_forced,
    text_metrics,
)
from .intervals import MIN_RESAMPLES, bleu_statistics
from .margins import report_pairs
from .models import Model, check_inputs, load_models
from .quantize import SCHEMES, with_int8_copies
from .runtimes import check_runtimes, runtime_rows
from .timing import decoding_options, time_generation
from .uncertainty import attach_intervals, attach_verdicts, example_columns
from .writing import check_output, write_report

ARCH_KEYS = ('embedding_size', 'ffn_size', 'n_heads', 'variant')
SAMPLES = 3
#: Examples timed at batch size 1 unless --timing-examples says otherwise.
TIMING_SAMPLE = 100


@dataclass
class ReportSettings:
    """What to compare, on which examples, and how (see the CLI for each field)."""

    teacher: str
    students: list[str]
    out: str
    task: str
    datapath: str
    labels: list[str] | None = None
    baselines: list[str] = field(default_factory=list)
    #: Examples evaluated for quality (0: the whole split).
    num_examples: int = 0
    #: Examples timed at ``batchsize`` (None: the first 100, or all if fewer).
    timing_examples: int | None = None
    batchsize: int = 1
    eval_batchsize: int = 32
    beam_size: int = 4
    warmup: int = 2
    datatype: str = 'test'
    threads: int | None = None
    task_args: list[str] = field(default_factory=list)
    overwrite: bool = False
    progress: bool = True
    #: ``'int8'``: add a dynamically quantised copy of every model.
    quantize: str | None = None
    #: Bootstrap resamples of the 95% intervals.
    bootstrap: int = 1000
    #: Targets for the verdicts: speed-up over the teacher, share of its quality.
    target_speedup: float | None = None
    target_share: float | None = None
    command: str = ''
    #: ``parlai`` and any served runtime (``ct2``, ``ct2-int8``: :mod:`.runtimes`).
    runtimes: list[str] = field(default_factory=lambda: ['parlai'])
    #: Builds a served model (given by the command line; see :mod:`.runtimes`).
    runtime_factory: Any = None


def _check_numbers(s: ReportSettings) -> None:
    check_at_least_one(s, ('batchsize', 'eval_batchsize', 'beam_size'))
    if s.num_examples < 0:
        raise DistillationError('--num-examples must be >= 0 (0: the whole split)')
    if s.timing_examples is not None and s.timing_examples < 1:
        raise DistillationError('--timing-examples must be >= 1')
    if s.warmup < 0:
        raise DistillationError('--warmup must be >= 0')
    if s.bootstrap < MIN_RESAMPLES:
        raise DistillationError(
            f'--bootstrap {s.bootstrap}: use at least {MIN_RESAMPLES} resamples '
            '(1000 or more for stable 95% intervals)'
        )
    if s.target_share is not None and not 0 < s.target_share <= 1:
        raise DistillationError(
            f'--target-share {s.target_share} must be in (0, 1], e.g. 0.97 for 97% '
            "of the teacher's figures"
        )
    if s.target_speedup is not None and s.target_speedup <= 0:
        raise DistillationError(f'--target-speedup {s.target_speedup} must be > 0')
    if not s.students:
        raise DistillationError('--students needs at least one model file')
    if s.quantize is not None and s.quantize not in SCHEMES:
        raise DistillationError(f'--quantize {s.quantize}: choose one of {SCHEMES}')
    check_runtimes(s.runtimes, s.runtime_factory)


def _check_baselines(s: ReportSettings, labels: list[str]) -> None:
    unknown = [b for b in s.baselines if b not in labels[1:]]
    if unknown:
        raise DistillationError(
            f'--baselines {unknown[0]!r} is not a student label (students: '
            + ', '.join(repr(label) for label in labels[1:])
            + ')'
        )


def _architecture(model: Model) -> dict:
    from parlai.agents.bart.bart import BartAgent

    opt = model.agent.opt
    arch = {
        'model': opt.get('model'),
        'family': 'bart' if isinstance(model.agent, BartAgent) else 'transformer',
        'n_encoder_layers': len(model.agent.model.encoder.layers),
        'n_decoder_layers': len(model.agent.model.decoder.layers),
    }
    arch.update({k: opt.get(k) for k in ARCH_KEYS})
    arch['text_truncate'] = model.agent.text_truncate
    return arch


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def _generate(
    s: ReportSettings, models: list[Model], examples: list, sample: list
) -> tuple:
    """Every model's replies, per decoding: on every example in batches of
    ``--eval-batchsize`` (quality and replies per second), and on the timing
    sample in batches of ``--batchsize`` (seconds per reply); and the options."""
    decodings = ['greedy'] + (['beam'] if s.beam_size > 1 else [])
    options = {d: decoding_options(d, s.beam_size) for d in decodings}
    runs = {'quality': (examples, s.eval_batchsize), 'timing': (sample, s.batchsize)}
    generations: dict[str, dict] = {run: {} for run in runs}
    for d in decodings:
        for run, (items, batchsize) in runs.items():
            with tqdm(
                total=len(items) * len(models),
                desc=f'generation ({d}, {run}, batch size {batchsize})',
                unit='reply',
                disable=not s.progress,
            ) as bar:
                generations[run][d] = time_generation(
                    [m.agent for m in models],
                    items,
                    options[d],
                    batchsize,
                    s.warmup,
                    bar.update,
                )
    return generations['quality'], generations['timing'], options


def _role(model: Model, baselines: list[str]) -> str:
    if model.quantized:
        return model.quantized
    if model.is_teacher:
        return 'teacher'
    return 'baseline' if model.label in baselines else 'student'


def _rows(
    models: list[Model],
    forced: list,
    quality: dict,
    timing: dict,
    examples: list,
    baselines: list[str],
) -> list:
    """One dict of figures per model (the teacher first).

    Text figures come from the replies to every example (``quality``), seconds
    per reply from the timing sample (``timing``), replies per second from the
    batched generation of every example.
    """
    references = [ex.labels[0] for ex in examples]
    teacher = {d: gens[0].summary() for d, gens in timing.items()}
    teacher_rate = {d: gens[0].replies_per_second() for d, gens in quality.items()}
    rows = []
    for i, m in enumerate(models):
        row = {
            'label': m.label,
            'path': m.path,
            'role': _role(m, baselines),
            'quantized': m.quantized,
            'architecture': _architecture(m),
            'params': m.params,
            **forced[i].metrics,
            'teacher_agreement': agreement(
                forced[i].predictions, forced[0].predictions
            ),
            'generation': {},
        }
        for d, gens in timing.items():
            stats = gens[i].summary()
            replies = quality[d][i].replies
            sample = len(gens[i].replies)
            rate = quality[d][i].replies_per_second()
            row['generation'][d] = {
                **text_metrics(replies, examples),
                'bleu_ref': bleu(replies, references),
                'bleu_teacher': bleu(replies, quality[d][0].replies),
                **stats,
                'speedup': teacher[d]['mean_s_per_reply'] / stats['mean_s_per_reply'],
                'speedup_per_token': (
                    teacher[d]['mean_s_per_token'] / stats['mean_s_per_token']
                ),
                'replies_per_second': rate,
                'throughput_speedup': rate / teacher_rate[d],
                # Timed replies equal to the batched ones of the same examples.
                'same_as_batched': sum(
                    a == b for a, b in zip(gens[i].replies, replies[:sample])
                )
                / sample,
            }
        rows.append(row)
    for row in rows:
        row['retained'] = {
            'token_acc': _ratio(row['token_acc'], rows[0]['token_acc']),
            **{
                f'f1_{d}': _ratio(
                    row['generation'][d]['f1'], rows[0]['generation'][d]['f1']
                )
                for d in timing
            },
        }
    return rows


def _timing_count(s: ReportSettings, available: int) -> int:
    """How many examples are timed: ``--timing-examples``, else up to 100.

    A sample larger than the examples evaluated is refused (one line), before
    any evaluation.
    """
    if s.timing_examples is None:
        return min(TIMING_SAMPLE, available)
    if s.timing_examples > available:
        raise DistillationError(
            f'--timing-examples {s.timing_examples} is larger than the '
            f'{available} examples of -t {s.task} ({s.datatype}'
            + (f', --num-examples {s.num_examples}' if s.num_examples else '')
            + '): time at most that many'
        )
    return s.timing_examples


def _settings(s: ReportSettings, models: list[Model], n: int, options: dict) -> dict:
    return {
        'task': s.task,
        'task_args': list(s.task_args),
        'datatype': s.datatype,
        'num_examples': n,
        'requested_examples': s.num_examples or 'all',
        'timing_examples': _timing_count(s, n),
        'batchsize': s.batchsize,
        'eval_batchsize': s.eval_batchsize,
        'beam_size': s.beam_size,
        'baselines': list(s.baselines),
        'quantize': s.quantize,
        'decodings': list(options),
        'decoding_options': options,
        # ParlAI's generation stops at label_truncate tokens, else at 256.
        'max_reply_tokens': models[0].agent.label_truncate or 256,
        'warmup_batches': s.warmup,
        'threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'torch': torch.__version__,
        'parlai': getattr(parlai, '__version__', None),
        'python': platform.python_version(),
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': s.command or ' '.join(sys.argv),
    }


def build_report(s: ReportSettings) -> dict:
    """Evaluate the teacher and every student on the same examples; write the report.

    Every check on the inputs (output folder, model files, task, loading,
    dictionaries) runs before any evaluation and raises
    :class:`DistillationError` with one line. Returns the report (what
    ``report.json`` holds: settings, one row per model, a few sample replies,
    and every reply and reference the text figures come from).
    """
    _check_numbers(s)
    check_output(s.out, s.overwrite)
    inputs = check_inputs(s.teacher, s.students, s.labels)
    _check_baselines(s, [label for label, _, _ in inputs])
    task = open_task(s.task, s.datatype, s.datapath, s.task_args)
    if s.threads:
        torch.set_num_threads(s.threads)
    models = load_models(inputs, s.datapath)
    if s.quantize:
        models = with_int8_copies(models)
    examples = collect_examples(task, models[0].agent, s.num_examples)
    if not examples:
        raise DistillationError(f'-t {s.task} ({s.datatype}) gave no labelled example')
    sample = examples[: _timing_count(s, len(examples))]

    with tqdm(
        total=len(examples) * len(models),
        desc='teacher forcing',
        unit='ex',
        disable=not s.progress,
    ) as bar:
        forced = [
            teacher_forced(m.agent, examples, s.eval_batchsize, bar.update)
            for m in models
        ]
    with tolerant_byte_level_decoding():
        quality, timing, options = _generate(s, models, examples, sample)
    greedy = quality['greedy']
    rows = _rows(models, forced, quality, timing, examples, s.baselines)
    report = {
        'settings': _settings(s, models, len(examples), options),
        'models': rows,
        # Each distilled student against the baseline of its shape (--baselines).
        'baselines': report_pairs(rows) if s.baselines else None,
        'samples': [
            {
                'context_end': ' '.join(ex.context.split()[-30:]),
                'reference': ex.labels[0],
                'replies': {
                    m.label: greedy[i].replies[j] for i, m in enumerate(models)
                },
            }
            for j, ex in enumerate(examples[:SAMPLES])
        ],
        # Everything the text figures are computed from, to check or recompute them.
        'references': [ex.labels[0] for ex in examples],
        'replies': {
            d: {m.label: gens[i].replies for i, m in enumerate(models)}
            for d, gens in quality.items()
        },
    }
    columns = example_columns(
        forced,
        [agreement_counts(f.predictions, forced[0].predictions) for f in forced],
        {
            d: [f1_per_example(g.replies, examples) for g in gens]
            for d, gens in quality.items()
        },
        {
            d: [bleu_statistics(g.replies, report['references']) for g in gens]
            for d, gens in quality.items()
        },
    )
    seconds = {d: [g.reply_seconds() for g in gens] for d, gens in timing.items()}
    attach_intervals(report, columns, seconds, s.bootstrap)
    attach_verdicts(report, s.target_speedup, s.target_share)
    if any(r != 'parlai' for r in s.runtimes):
        report['runtimes'] = runtime_rows(
            models,
            rows,
            examples,
            sample,
            {d: [g.replies for g in gens] for d, gens in quality.items()},
            s.runtimes,
            s.runtime_factory,
            s.batchsize,
            s.eval_batchsize,
            s.beam_size,
            s.warmup,
        )
    write_report(report, s.out)
    return report
