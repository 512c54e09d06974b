"""Quality and speed of a trial's student against the teacher, as the report measures.

The teacher is loaded once per search process, with the report's loader and
options; the examples are the first ones of the task's valid split, built once
by the teacher's agent (the report's :func:`~anti_scaling.report.evaluation.collect_examples`).
Per trial:

- quality: ParlAI's token accuracy and perplexity under teacher forcing on
  those examples (:func:`~anti_scaling.report.evaluation.teacher_forced`), and
  the agreement of the student's argmax tokens with the teacher's;
- speed: greedy generation, batch size 1, of the first ``timing`` examples by
  the teacher and the student in turn, warm-up excluded
  (:func:`~anti_scaling.report.timing.time_generation`); the speedup is the
  teacher's mean seconds per reply over the student's, both measured in this
  process in the same run (and per generated token too).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Any

from ..errors import DistillationError
from ..model_files import plain_model_name
from ..report.evaluation import (
    Example,
    ForcedResult,
    agreement,
    collect_examples,
    open_task,
    teacher_forced,
    text_metrics,
)
from ..report.models import (
    check_model_file,
    count_parameters,
    evaluation_overrides,
    load_agent,
)
from ..report.timing import decoding_options, time_generation
from ..report.uncertainty import forced_intervals
from .space import TeacherShape

TIMING_BATCHSIZE = 1


@dataclass
class TeacherReference:
    """The teacher, the examples and the teacher's own figures, for every trial."""

    path: str
    datapath: str
    agent: Any
    shape: TeacherShape
    overrides: dict[str, Any]
    examples: list[Example]
    timing_examples: list[Example]
    forced: ForcedResult
    eval_batchsize: int
    warmup: int
    context_tokens: float
    reply_tokens: float

    def figures(self) -> dict[str, Any]:
        """The teacher's figures and shape, JSON-ready."""
        return {
            'path': self.path,
            'shape': self.shape.as_dict(),
            'params': count_parameters(self.agent.model),
            **self.forced.metrics,
            'quality_examples': len(self.examples),
            'timing_examples': len(self.timing_examples),
            'mean_context_tokens': self.context_tokens,
            'mean_reply_tokens': self.reply_tokens,
        }


def teacher_shape(agent: Any, path: str) -> TeacherShape:
    """The shape of a loaded teacher agent (layer counts from its model)."""
    opt = agent.opt
    family = 'bart' if plain_model_name(opt, path) == 'bart' else 'transformer'
    return TeacherShape(
        n_encoder_layers=len(agent.model.encoder.layers),
        n_decoder_layers=len(agent.model.decoder.layers),
        embedding_size=int(opt['embedding_size']),
        ffn_size=int(opt['ffn_size']),
        n_heads=int(opt['n_heads']),
        vocab=len(agent.dict),
        family=family,
    )


def load_teacher(path: str, datapath: str) -> tuple[Any, TeacherShape, dict]:
    """The teacher's evaluation agent, its shape and the evaluation overrides.

    One-line :class:`DistillationError` when the file is missing or does not
    load as a ParlAI generator.
    """
    opt = check_model_file(path, '--teacher')
    overrides = evaluation_overrides(opt)
    agent = load_agent(path, datapath, overrides)
    return agent, teacher_shape(agent, path), overrides


def _mean_lengths(agent: Any, examples: list[Example]) -> tuple[float, float]:
    """Mean context tokens (as the teacher truncates them) and reference tokens."""
    text_cap = agent.text_truncate or math.inf
    label_cap = agent.label_truncate or math.inf
    contexts = [min(len(ex.context_vec), text_cap) for ex in examples]
    replies = [
        min(len(agent.dict.txt2vec(ex.labels[0])) + 1, label_cap) for ex in examples
    ]
    return sum(contexts) / len(contexts), sum(replies) / len(replies)


def prepare_reference(
    teacher: tuple[Any, TeacherShape, dict],
    path: str,
    task: str,
    task_args: list[str],
    datapath: str,
    quality_examples: int,
    timing_examples: int,
    eval_batchsize: int,
    warmup: int,
) -> TeacherReference:
    """Collect the valid examples and the teacher's teacher-forced figures."""
    agent, shape, overrides = teacher
    task_agent = open_task(task, 'valid', datapath, task_args)
    examples = collect_examples(task_agent, agent, quality_examples)
    if not examples:
        raise DistillationError(f'-t {task} (valid) gave no labelled example')
    forced = teacher_forced(agent, examples, eval_batchsize)
    context_tokens, reply_tokens = _mean_lengths(agent, examples)
    return TeacherReference(
        path=path,
        datapath=datapath,
        agent=agent,
        shape=shape,
        overrides=overrides,
        examples=examples,
        timing_examples=examples[:timing_examples],
        forced=forced,
        eval_batchsize=eval_batchsize,
        warmup=warmup,
        context_tokens=context_tokens,
        reply_tokens=reply_tokens,
    )


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else math.nan


def measure_student(model_file: str, ref: TeacherReference) -> dict[str, Any]:
    """Every figure of the student saved in ``model_file`` (a plain ParlAI model).

    Returns teacher-forced metrics (``token_acc``, ``ppl``, ``loss``...),
    ``teacher_agreement``, ``params``, the greedy timing of teacher and student
    (``generation``), ``speedup`` (per reply), ``speedup_per_token`` and the
    greedy F1 of both on the timed examples, and ``retained_token_acc``.
    """
    agent = load_agent(model_file, ref.datapath, ref.overrides)
    try:
        forced = teacher_forced(agent, ref.examples, ref.eval_batchsize)
        teacher_gen, student_gen = time_generation(
            [ref.agent, agent],
            ref.timing_examples,
            decoding_options('greedy', 1),
            TIMING_BATCHSIZE,
            ref.warmup,
        )
        params = count_parameters(agent.model)
    finally:
        del agent
        gc.collect()
    teacher, student = teacher_gen.summary(), student_gen.summary()
    figures: dict[str, Any] = {
        **forced.metrics,
        'teacher_agreement': agreement(forced.predictions, ref.forced.predictions),
        'retained_token_acc': _ratio(
            forced.metrics['token_acc'], ref.forced.metrics['token_acc']
        ),
        'params': params,
        'speedup': teacher['mean_s_per_reply'] / student['mean_s_per_reply'],
        'speedup_per_token': teacher['mean_s_per_token'] / student['mean_s_per_token'],
        'f1_greedy': text_metrics(student_gen.replies, ref.timing_examples)['f1'],
        'teacher_f1_greedy': text_metrics(teacher_gen.replies, ref.timing_examples)[
            'f1'
        ],
        'generation': {'teacher': teacher, 'student': student},
        # Per-example sums, to pair this trial with its baseline later.
        'per_example': forced.per_example,
    }
    # 95% intervals of ppl and token accuracy, and of their share of the teacher's.
    figures['intervals'] = forced_intervals(
        [ref.forced.per_example, forced.per_example]
    )[0][1]
    return figures
