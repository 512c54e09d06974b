"""Seconds per reply and replies per second: ParlAI against CTranslate2, timed alike.

Every runtime decodes the same test contexts (one-example episodes of
:class:`anti_scaling.report.evaluation.Example`, as the report builds them)
with the same options (:func:`anti_scaling.report.timing.decoding_options`: no
n-gram blocking, replies of at most the teacher's ``--label-truncate`` tokens).
At batch size 1 the runtimes take turns context by context, so that load from
other processes falls on all of them alike; replies per second are timed on
the whole set in batches. Timers are ``time.perf_counter`` around the call that
turns a context into reply text (ParlAI's ``batch_act``; CTranslate2's
translation and detokenisation); tokenising the context is not timed in either.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..export.ct2.engine import Engine
from ..report.evaluation import Example, batches
from ..report.timing import Generator, decoding_options

#: ``runtime(examples) -> (replies, seconds)``.
Runtime = Callable[[Sequence[Example]], tuple[list[str], float]]


def machine() -> str:
    """The CPU model and core count of this machine, in words."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as fh:
            for line in fh:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return f'{name}, {os.cpu_count()} cores'


def parlai_runtime(agent: Any, batchsize: int, beam: int = 1) -> Runtime:
    """A ParlAI agent decoding as the report does (greedy, or beam ``beam``)."""
    options = decoding_options('greedy' if beam == 1 else 'beam', beam)
    generate = Generator(agent, options, batchsize)

    def run(examples: Sequence[Example]) -> tuple[list[str], float]:
        replies, _tokens, seconds = generate(examples)
        return replies, seconds

    return run


def ct2_engine(
    folder: str, threads: int, label_truncate: int | None, device: str = 'cpu'
) -> Engine:
    """A folder's engine with the report's decoding options (no n-gram blocking)."""
    engine = Engine(folder, device=device, intra_threads=threads)
    engine.generation.update(
        block_ngram=0,
        context_block_ngram=0,
        beam_min_length=1,
        length_penalty=0.65,
        max_length=label_truncate or engine.generation['max_length'],
    )
    return engine


def ct2_runtime(engine: Engine, beam: int = 1) -> Runtime:
    """An engine replying to report examples (their ids, truncated as ParlAI does)."""

    def run(examples: Sequence[Example]) -> tuple[list[str], float]:
        contexts = [engine.inputs.truncate(ex.context_vec) for ex in examples]
        start = time.perf_counter()
        results = engine.submit_ids(contexts, None, beam)
        replies = [engine.text(engine.finish(r.result())) for r in results]
        return replies, time.perf_counter() - start

    return run


@dataclass
class Timing:
    """One runtime's figures."""

    reply_seconds: list[float] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    throughput: float | None = None

    def median(self) -> float:
        """Median seconds per reply at batch size 1."""
        return statistics.median(self.reply_seconds)

    def mean(self) -> float:
        """Mean seconds per reply at batch size 1."""
        return statistics.fmean(self.reply_seconds)


def time_runtimes(
    runtimes: dict[str, Runtime],
    examples: Sequence[Example],
    batched: dict[str, Runtime] | None = None,
    batchsize: int = 32,
    warmup: int = 2,
) -> dict[str, Timing]:
    """Per-reply seconds of each runtime (batch 1, interleaved), and replies per
    second of each ``batched`` runtime (batches of ``batchsize``)."""
    names = list(runtimes)
    for example in examples[:warmup]:
        for name in names:
            runtimes[name]([example])
    timings = {name: Timing() for name in names}
    for i, example in enumerate(examples):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            replies, seconds = runtimes[name]([example])
            timings[name].reply_seconds.append(seconds)
            timings[name].replies.extend(replies)
    for name, run in (batched or {}).items():
        total = 0.0
        for chunk in batches(examples, batchsize):
            total += run(chunk)[1]
        timings.setdefault(name, Timing()).throughput = len(examples) / total
    return timings


def reply_seconds(engine: Engine, texts: Sequence[str], warmup: int) -> float:
    """Mean seconds per reply to one-turn ``texts`` at batch size 1 (the first
    ``warmup`` replies untimed), as ``make demo`` times ParlAI."""
    times = []
    for i, text in enumerate(texts):
        start = time.perf_counter()
        engine.text(engine.finish(engine.submit([text], 1)[0].result()))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def engine_quality(engine: Engine, cases: Sequence[Any]) -> dict[str, float]:
    """Perplexity (from the engine's scores of the references) and token accuracy.

    ``cases``: :class:`anti_scaling.export.cases.Case` (ParlAI's ids).
    """
    import math

    from ..export.ct2.verify import token_accuracy

    contexts = [c.observation['text_vec'].tolist() for c in cases]
    labels = [c.observation['eval_labels_vec'].tolist() for c in cases]
    scores = engine.score_ids(contexts, labels)
    tokens = sum(len(s) for s in scores)
    loss = -sum(sum(s) for s in scores) / tokens
    return {'ppl': math.exp(loss), 'token_acc': token_accuracy(engine, list(cases))}


class ServedEngine:
    """A CTranslate2 engine answering the report's examples (:mod:`anti_scaling.report.runtimes`)."""

    def __init__(self, engine: Engine, label_truncate: int | None) -> None:
        self.engine = engine
        self.engine.inputs.settings['label_truncate'] = label_truncate
        self.run = {1: ct2_runtime(engine, 1)}

    def generate(
        self, examples: Sequence[Example], beam: int
    ) -> tuple[list[str], float]:
        """Replies to one batch of ``examples`` and the seconds they took."""
        if beam not in self.run:
            self.run[beam] = ct2_runtime(self.engine, beam)
        return self.run[beam](examples)

    def log_probs(self, examples: Sequence[Example]) -> list[list[float]]:
        """The engine's log-probability of each reference token (end included)."""
        inputs = self.engine.inputs
        out: list[list[float]] = []
        for chunk in batches(examples, 32):
            contexts = [inputs.truncate(ex.context_vec) for ex in chunk]
            labels = [inputs.label_ids(ex.labels[0]) for ex in chunk]
            out += self.engine.score_ids(contexts, labels)
        return out


def ct2_factory(
    datapath: str, threads: int | None = None
) -> Callable[[Any, str], ServedEngine]:
    """``factory(model, runtime)`` for ``distill_report --runtimes``: each model
    (a :class:`anti_scaling.report.models.Model`) exported to a temporary folder
    (``ct2``: float32, ``ct2-int8``: int8) and served on the CPU with
    ``threads`` (default: torch's count, as the ParlAI rows run), replies cut
    at the model's loaded ``--label-truncate`` (the teacher's, in the report)."""
    import tempfile

    import torch

    from ..export.ct2.to_ct2 import export_to_ct2

    quantization = {'ct2': 'float32', 'ct2-int8': 'int8'}
    scratch = tempfile.TemporaryDirectory(prefix='anti_scaling_report_ct2_')

    def factory(model: Any, runtime: str) -> ServedEngine:
        out = os.path.join(scratch.name, f'{len(os.listdir(scratch.name))}-{runtime}')
        export_to_ct2(model.path, out, datapath, quantization=quantization[runtime])
        limit = model.agent.label_truncate
        engine = ct2_engine(out, threads or torch.get_num_threads(), limit)
        return ServedEngine(engine, limit)

    factory.scratch = scratch  # type: ignore[attr-defined]  # removed with the factory
    return factory
