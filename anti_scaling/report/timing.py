"""Generation on CPU, timed the same way for every model.

Every model decodes the same examples, in the same batches, with the same
options. Models take turns batch by batch (the order rotating from batch to
batch), so that load from other processes on a shared machine falls on all of
them alike. The first ``warmup`` batches are decoded once more beforehand by
every model, untimed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from parlai.core.opt import Opt

from .evaluation import Example, _shared_copies, batches


def decoding_options(inference: str, beam_size: int) -> dict[str, Any]:
    """ParlAI options of one decoding, the same for every model.

    ``inference`` is ``'greedy'`` or ``'beam'``. Replies are at most the
    teacher's ``--label-truncate`` tokens (set when the models are loaded).
    """
    return {
        'inference': inference,
        'beam_size': 1 if inference == 'greedy' else int(beam_size),
        'beam_min_length': 1,
        'beam_length_penalty': 0.65,
        'beam_block_ngram': -1,
        'beam_context_block_ngram': -1,
        'temperature': 1.0,
        'skip_generation': False,
    }


@dataclass
class Generation:
    """The replies of one model with one decoding, and the time of each batch."""

    replies: list[str] = field(default_factory=list)
    reply_tokens: list[int] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def replies_per_second(self) -> float:
        """Replies over the total wall time of their batches (throughput)."""
        return sum(self.batch_sizes) / sum(self.batch_seconds)

    def reply_seconds(self) -> list[float]:
        """Seconds per reply of each batch, one entry per reply (batch time / size)."""
        return [
            t / n
            for t, n in zip(self.batch_seconds, self.batch_sizes)
            for _ in range(n)
        ]

    def summary(self) -> dict[str, float]:
        """Seconds per reply (mean over replies; p90 over batches) and per token.

        A batch's seconds per reply is its wall time divided by its size;
        ``mean_s_per_token`` is the total time over the total reply tokens
        (see :meth:`Generator.__call__`), which compares models whose replies
        differ in length.
        """
        per_reply = np.array(self.batch_seconds) / np.array(self.batch_sizes)
        n = sum(self.batch_sizes)
        return {
            'mean_s_per_reply': float(sum(self.batch_seconds) / n),
            'p90_s_per_reply': float(np.percentile(per_reply, 90)),
            'mean_s_per_token': float(sum(self.batch_seconds) / sum(self.reply_tokens)),
            'replies': n,
            'mean_reply_tokens': float(np.mean(self.reply_tokens)),
            'mean_reply_words': float(np.mean([len(r.split()) for r in self.replies])),
        }


class Generator:
    """One model decoding with fixed options, through ParlAI's ``batch_act``."""

    def __init__(self, agent: Any, options: dict[str, Any], batchsize: int) -> None:
        opt = Opt({**agent.opt, **options})
        self.master, self.copies = _shared_copies(agent, batchsize, opt)

    def __call__(
        self, examples: Sequence[Example]
    ) -> tuple[list[str], list[int], float]:
        """Replies to ``examples``, their token counts, and the wall time of ``batch_act``.

        Timed: batching, the encoder, the search and turning tokens into text;
        not timed: tokenising the contexts (done in ``observe``). A reply's
        tokens are those the decoder produced, end token included: ParlAI's
        ``gen_n_toks`` minus the given start token.
        """
        messages = [ex.message(with_label=False) for ex in examples]
        observations = [c.observe(m) for c, m in zip(self.copies, messages)]
        start = time.perf_counter()
        replies = self.master.batch_act(observations)
        seconds = time.perf_counter() - start
        for copy, reply in zip(self.copies, replies):
            copy.self_observe(reply)
        tokens = [int(r['metrics']['gen_n_toks'].value()) - 1 for r in replies]
        return [r.get('text', '') for r in replies], tokens, seconds


def time_generation(
    agents: Sequence[Any],
    examples: Sequence[Example],
    options: dict[str, Any],
    batchsize: int,
    warmup: int = 2,
    progress: Callable[[int], Any] | None = None,
) -> list[Generation]:
    """Decode ``examples`` with every agent in turn; one :class:`Generation` each.

    ``progress(n)`` is called after each model's batch of ``n`` examples.
    """
    generators = [Generator(agent, options, batchsize) for agent in agents]
    chunks = batches(examples, batchsize)
    for chunk in chunks[:warmup]:
        for generate in generators:
            generate(chunk)
    results = [Generation() for _ in generators]
    for i, chunk in enumerate(chunks):
        order = [(i + k) % len(generators) for k in range(len(generators))]
        for j in order:
            replies, tokens, seconds = generators[j](chunk)
            results[j].replies.extend(replies)
            results[j].reply_tokens.extend(tokens)
            results[j].batch_seconds.append(seconds)
            results[j].batch_sizes.append(len(chunk))
            if progress:
                progress(len(chunk))
    return results
