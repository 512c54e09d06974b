"""Build a distillation report: check, load, evaluate, time, write."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass, field

import parlai
import torch
from tqdm import tqdm

from ..compat import tolerant_byte_level_decoding
from ..errors import DistillationError, check_at_least_one
from .evaluation import (
    agreement,
    bleu,
    collect_examples,
    open_task,
    teacher_forced,
    text_metrics,
)
from .margins import report_pairs
from .models import Model, check_inputs, load_models
from .quantize import SCHEMES, with_int8_copies
from .timing import decoding_options, time_generation
from .writing import check_output, write_report

ARCH_KEYS = ('embedding_size', 'ffn_size', 'n_heads', 'variant')
SAMPLES = 3


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
    num_examples: int = 200
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
    command: str = ''


def _check_numbers(s: ReportSettings) -> None:
    check_at_least_one(s, ('num_examples', 'batchsize', 'eval_batchsize', 'beam_size'))
    if s.warmup < 0:
        raise DistillationError('--warmup must be >= 0')
    if not s.students:
        raise DistillationError('--students needs at least one model file')
    if s.quantize is not None and s.quantize not in SCHEMES:
        raise DistillationError(f'--quantize {s.quantize}: choose one of {SCHEMES}')


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


def _generate(s: ReportSettings, models: list[Model], examples: list) -> tuple:
    """Every model's replies and timings, per decoding; and the decoding options."""
    decodings = ['greedy'] + (['beam'] if s.beam_size > 1 else [])
    options = {d: decoding_options(d, s.beam_size) for d in decodings}
    generations = {}
    for d in decodings:
        with tqdm(
            total=len(examples) * len(models),
            desc=f'generation ({d})',
            unit='reply',
            disable=not s.progress,
        ) as bar:
            generations[d] = time_generation(
                [m.agent for m in models],
                examples,
                options[d],
                s.batchsize,
                s.warmup,
                bar.update,
            )
    return generations, options


def _role(model: Model, baselines: list[str]) -> str:
    if model.quantized:
        return model.quantized
    if model.is_teacher:
        return 'teacher'
    return 'baseline' if model.label in baselines else 'student'


def _rows(
    models: list[Model],
    forced: list,
    generations: dict,
    examples: list,
    baselines: list[str],
) -> list:
    """One dict of figures per model (the teacher first)."""
    references = [ex.labels[0] for ex in examples]
    teacher = {d: gens[0].summary() for d, gens in generations.items()}
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
        for d, gens in generations.items():
            stats = gens[i].summary()
            row['generation'][d] = {
                **text_metrics(gens[i].replies, examples),
                'bleu_ref': bleu(gens[i].replies, references),
                'bleu_teacher': bleu(gens[i].replies, gens[0].replies),
                **stats,
                'speedup': teacher[d]['mean_s_per_reply'] / stats['mean_s_per_reply'],
                'speedup_per_token': (
                    teacher[d]['mean_s_per_token'] / stats['mean_s_per_token']
                ),
            }
        rows.append(row)
    for row in rows:
        row['retained'] = {
            'token_acc': _ratio(row['token_acc'], rows[0]['token_acc']),
            **{
                f'f1_{d}': _ratio(
                    row['generation'][d]['f1'], rows[0]['generation'][d]['f1']
                )
                for d in generations
            },
        }
    return rows


def _settings(s: ReportSettings, models: list[Model], n: int, options: dict) -> dict:
    return {
        'task': s.task,
        'task_args': list(s.task_args),
        'datatype': s.datatype,
        'num_examples': n,
        'requested_examples': s.num_examples,
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
        generations, options = _generate(s, models, examples)
    greedy = generations['greedy']
    rows = _rows(models, forced, generations, examples, s.baselines)
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
            for d, gens in generations.items()
        },
    }
    write_report(report, s.out)
    return report
