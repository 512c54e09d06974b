"""Test examples and quality: ParlAI's own metrics, teacher agreement, F1 and BLEU.

Every model sees exactly the same examples: the contexts are built once, by the
teacher's agent from the task's episodes (its history settings: delimiter,
history size...), and given to every model as token ids, which each truncates
with its own ``--text-truncate``. Dictionaries are equal (checked on loading),
so the ids mean the same to every model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sacrebleu
from parlai.core.agents import create_agent_from_shared
from parlai.core.message import Message
from parlai.core.metrics import F1Metric, TeacherMetrics, normalize_answer
from parlai.core.opt import Opt
from parlai.core.teachers import create_task_agent_from_taskname

from ..errors import DistillationError, describe_exception
from .task_options import task_opt

#: ParlAI metrics of the teacher-forced pass kept in the report.
FORCED_METRICS = ('loss', 'ppl', 'token_acc', 'token_em')


@dataclass(frozen=True)
class Example:
    """One test example: the context's token ids and text, and the references."""

    context_vec: tuple[int, ...]
    context: str
    labels: tuple[str, ...]

    def message(self, with_label: bool) -> Message:
        """A one-example episode for an agent (labels only for teacher forcing)."""
        msg = {
            'text': self.context,
            'text_vec': list(self.context_vec),
            'episode_done': True,
        }
        if with_label:
            msg['eval_labels'] = [self.labels[0]]
        return Message(msg)


def open_task(task: str, datatype: str, datapath: str, task_args: Sequence[str]):
    """The task's first ParlAI teacher, or a one-line error if it cannot be built.

    ``task_args`` are the task's options (:func:`~.task_options.task_opt`).
    """
    opt = task_opt(task, datatype, datapath, task_args)
    try:
        return create_task_agent_from_taskname(opt)[0]
    except Exception as e:
        raise DistillationError(
            f'unknown or unusable task -t {task}: {describe_exception(e)}'
        ) from None


def collect_examples(task_agent: Any, context_agent: Any, limit: int) -> list[Example]:
    """The first ``limit`` labelled examples of the task (all if ``limit <= 0``).

    ``context_agent`` (the teacher's) builds each context from the episode so
    far, as it would in ``parlai eval_model``; its own state is not touched (a
    shared copy does the work).
    """
    agent = create_agent_from_shared(context_agent.share())
    examples: list[Example] = []
    while limit <= 0 or len(examples) < limit:
        msg = task_agent.act()
        if not msg or 'text' not in msg:
            break
        labels = msg.get('eval_labels') or msg.get('labels')
        obs = agent.observe(Message(msg))
        vec = obs.get('full_text_vec')
        if labels and vec is not None and len(vec):
            examples.append(
                Example(tuple(int(i) for i in vec), obs['full_text'], tuple(labels))
            )
        agent.self_observe(Message({'text': '', 'episode_done': True}))
        if task_agent.epoch_done():
            break
    return examples


@dataclass
class ForcedResult:
    """Teacher-forced figures of one model: ParlAI's metrics and its argmax tokens.

    ``per_example`` holds, per example, the sums ParlAI's aggregate metrics are
    made of: ``loss`` (summed NLL of the label tokens), ``tokens`` (label
    tokens) and ``correct`` (label tokens whose argmax is the label), so that
    ``exp(sum loss / sum tokens)`` is ``metrics['ppl']`` and ``sum correct /
    sum tokens`` is ``metrics['token_acc']``.
    """

    metrics: dict[str, float]
    predictions: list[list[int]]
    per_example: dict[str, list[float]] = field(default_factory=dict)


def _shared_copies(agent: Any, count: int, opt: Opt | None = None) -> tuple[Any, list]:
    """A master agent (``agent`` itself or a copy with ``opt``) and per-slot copies."""
    if opt is not None:
        shared = agent.share()
        shared['opt'] = opt
        agent = create_agent_from_shared(shared)
    return agent, [create_agent_from_shared(agent.share()) for _ in range(count)]


def run_batch(
    master: Any, copies: list, messages: Sequence[Message]
) -> tuple[list, list]:
    """One ``batch_act`` of ``master`` on one-example episodes: (observations, replies).

    Each message is observed by its own copy of the agent (fresh history), as
    ParlAI's batch worlds do.
    """
    observations = [c.observe(m) for c, m in zip(copies, messages)]
    replies = master.batch_act(observations)
    for copy, reply in zip(copies, replies):
        copy.self_observe(reply)
    return observations, replies


def batches(items: Sequence, size: int) -> list[Sequence]:
    """``items`` cut into consecutive batches of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def teacher_forced(
    agent: Any,
    examples: Sequence[Example],
    batchsize: int,
    progress: Callable[[int], Any] | None = None,
) -> ForcedResult:
    """ParlAI's eval-path metrics under teacher forcing, and the argmax tokens.

    Loss, perplexity and token accuracy are what the agent itself records in
    ``compute_loss`` (as in ``parlai eval_model``), aggregated by ParlAI's
    :class:`~parlai.core.metrics.TeacherMetrics`: token-weighted over the whole
    set. ``predictions[i]`` are the model's argmax tokens at every label
    position of example ``i`` (end token included), read from the model's
    forward pass.
    """
    metrics = TeacherMetrics()
    predictions: list[list[int]] = []
    per_example: dict[str, list[float]] = {'loss': [], 'tokens': [], 'correct': []}
    captured: list = []

    def hook(module, inputs, output):  # noqa: ANN001
        captured.append(output[1].detach().cpu())

    master, copies = _shared_copies(agent, batchsize)
    handle = agent.model.register_forward_hook(hook)
    try:
        for batch in batches(examples, batchsize):
            captured.clear()
            messages = [ex.message(with_label=True) for ex in batch]
            observations, replies = run_batch(master, copies, messages)
            if len(captured) != 1 or captured[0].size(0) != len(batch):
                raise RuntimeError('expected one teacher-forced forward per batch')
            for obs, reply, preds in zip(observations, replies, captured[0]):
                metrics.evaluate_response(reply, obs['eval_labels'])
                predictions.append(preds[: len(obs['eval_labels_vec'])].tolist())
                _add_sums(per_example, reply['metrics'])
            if progress:
                progress(len(batch))
    finally:
        handle.remove()
    report = metrics.report()
    values = {k: float(report[k].value()) for k in FORCED_METRICS if k in report}
    return ForcedResult(values, predictions, per_example)


def _add_sums(per_example: dict[str, list[float]], local: dict) -> None:
    """Append one example's loss, token and correct-token sums (ParlAI's local
    ``loss`` and ``token_acc`` metrics are sums over its label tokens)."""
    loss, acc = local['loss'], local['token_acc']
    per_example['loss'].append(float(loss._numer))
    per_example['tokens'].append(float(loss._denom))
    per_example['correct'].append(float(acc._numer))


def agreement_counts(
    predictions: list[list[int]], reference: list[list[int]]
) -> list[int]:
    """Per example, the label tokens where the two models' argmax tokens are equal."""
    return [
        sum(a == b for a, b in zip(ours, theirs))
        for ours, theirs in zip(predictions, reference)
    ]


def agreement(predictions: list[list[int]], reference: list[list[int]]) -> float:
    """Share of label tokens where the two models' argmax tokens are equal."""
    total = sum(len(theirs) for theirs in reference)
    same = sum(agreement_counts(predictions, reference))
    return same / total if total else float('nan')


def text_metrics(replies: Sequence[str], examples: Sequence[Example]) -> dict:
    """ParlAI's F1 and exact match of generated replies against the references."""
    metrics = TeacherMetrics()
    for reply, example in zip(replies, examples):
        metrics.evaluate_response(Message({'text': reply}), list(example.labels))
    report = metrics.report()
    return {k: float(report[k].value()) for k in ('f1', 'accuracy')}


def f1_per_example(replies: Sequence[str], examples: Sequence[Example]) -> list[float]:
    """ParlAI's F1 of each reply against its references (their mean is
    :func:`text_metrics`' ``f1``)."""
    return [
        float(F1Metric.compute(reply, list(example.labels)).value())
        for reply, example in zip(replies, examples)
    ]


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0-100) on ParlAI-normalised text.

    Both sides go through ParlAI's ``normalize_answer`` first (lower case,
    punctuation and articles removed), as ParlAI's own F1 and BLEU do: the
    models' replies are lower-cased and tokenised by their dictionary, the
    references are raw text.
    """
    hyps = [normalize_answer(h) for h in hypotheses]
    refs = [normalize_answer(r) for r in references]
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)
