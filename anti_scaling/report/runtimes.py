"""Rows of the report for the models served by another runtime (``--runtimes``).

ParlAI's rows are the report's own. For each other runtime (``ct2``:
CTranslate2 float32, ``ct2-int8``: CTranslate2 int8) every model gets one more
row, measured in that runtime: F1 and BLEU from its own replies to every example
(batches of ``--eval-batchsize``; replies per second from them), perplexity from
its own scores of the reference replies, seconds per reply on the timing sample
at ``--batchsize``, and the speed-up over the teacher in ParlAI.

The report floor does not know how a runtime is built: the command line passes
a factory (``ReportSettings.runtime_factory``), which returns, for a model and a
runtime name, an object with the two calls of :class:`ServedModel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import DistillationError
from .evaluation import Example, batches, bleu, text_metrics

#: Runtimes ``--runtimes`` accepts; ``parlai`` is the report's own rows.
RUNTIMES = ('parlai', 'ct2', 'ct2-int8')
#: The weight type of each served runtime.
QUANTIZATION = {'ct2': 'float32', 'ct2-int8': 'int8'}


class ServedModel(Protocol):
    """A model served by another runtime, decoding as the report's ParlAI rows do."""

    def generate(
        self, examples: Sequence[Example], beam: int
    ) -> tuple[list[str], float]:
        """Replies to ``examples`` (one batch) and the seconds they took."""

    def log_probs(self, examples: Sequence[Example]) -> list[list[float]]:
        """The log-probability of each reference token (end token included)."""


#: ``factory(model, runtime) -> ServedModel``.
RuntimeFactory = Callable[[Any, str], ServedModel]


def check_runtimes(runtimes: Sequence[str], factory: RuntimeFactory | None) -> None:
    """One line for an unknown runtime, or a served one with nothing to build it."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise DistillationError(
            f'--runtimes {unknown[0]}: choose among {", ".join(RUNTIMES)}'
        )
    if any(r != 'parlai' for r in runtimes) and factory is None:
        raise DistillationError('--runtimes ct2 needs a runtime factory (the CLI)')


def _generate(
    served: ServedModel, examples: Sequence[Example], batchsize: int, beam: int
) -> tuple[list[str], list[float]]:
    """Replies to ``examples`` in batches of ``batchsize``, and each batch's seconds."""
    replies, seconds = [], []
    for chunk in batches(examples, batchsize):
        texts, took = served.generate(chunk, beam)
        replies += texts
        seconds.append(took)
    return replies, seconds


def runtime_rows(
    models: list[Any],
    rows: list[dict],
    examples: Sequence[Example],
    sample: Sequence[Example],
    parlai_replies: dict[str, list[list[str]]],
    runtimes: Sequence[str],
    factory: RuntimeFactory,
    batchsize: int,
    eval_batchsize: int,
    beam_size: int,
    warmup: int,
) -> list[dict]:
    """One row per model and served runtime (module doc).

    ``rows``: ParlAI's; ``parlai_replies[decoding][i]``: model ``i``'s replies
    in ParlAI to ``examples`` (the share equal to them is reported). Copies
    quantised in torch (``--quantize``) are not served again.
    """
    decodings = list(rows[0]['generation'])
    references = [ex.labels[0] for ex in examples]
    out = []
    for runtime in runtimes:
        if runtime == 'parlai':
            continue
        for i, (model, parlai_row) in enumerate(zip(models, rows)):
            if parlai_row.get('quantized'):
                continue
            served = factory(model, runtime)
            scores = served.log_probs(examples)
            tokens = sum(len(s) for s in scores)
            row = {
                'label': parlai_row['label'],
                'runtime': runtime,
                'ppl': math.exp(-sum(sum(s) for s in scores) / max(tokens, 1)),
                'generation': {},
            }
            for d in decodings:
                beam = 1 if d == 'greedy' else beam_size
                for ex in sample[:warmup]:
                    served.generate([ex], beam)
                replies, quality_seconds = _generate(
                    served, examples, eval_batchsize, beam
                )
                _, timed = _generate(served, sample, batchsize, beam)
                per_reply = sum(timed) / len(sample)
                teacher = rows[0]['generation'][d]
                rate = len(examples) / sum(quality_seconds)
                row['generation'][d] = {
                    **text_metrics(replies, examples),
                    'bleu_ref': bleu(replies, references),
                    'mean_s_per_reply': per_reply,
                    'speedup': teacher['mean_s_per_reply'] / per_reply,
                    'replies_per_second': rate,
                    'throughput_speedup': rate / teacher['replies_per_second'],
                    'same_as_parlai': sum(
                        a == b for a, b in zip(replies, parlai_replies[d][i])
                    )
                    / len(replies),
                }
            out.append(row)
    return out


def runtime_section(report: dict) -> list[str]:
    """The Markdown table of the served rows (none: no lines)."""
    served = report.get('runtimes') or []
    if not served:
        return []
    s = report['settings']
    decodings = list(s['decodings'])
    names = ' / '.join(
        d if d == 'greedy' else f'beam {s["beam_size"]}' for d in decodings
    )

    def pair(row: dict, key: str, digits: int) -> str:
        return ' / '.join(
            (
                '-'
                if row['generation'][d].get(key) is None
                else f"{row['generation'][d][key]:.{digits}f}"
            )
            for d in decodings
        )

    lines = [
        '## Served by another runtime',
        '',
        'The same models in CTranslate2 (`ct2`: float32, `ct2-int8`: int8 weights; '
        'exported by `export_ct2`), each row measured in that runtime: F1 and BLEU '
        'from its own replies, perplexity from its own scores of the references, '
        f"seconds per reply at batch size {s['batchsize']} on the timing sample, "
        f"replies per second at batch size {s['eval_batchsize']}; speed-ups are "
        f'over the teacher in ParlAI. Pairs: {names}.',
        '',
        '| model | runtime | ppl | F1 | BLEU (ref) | s/reply | speedup '
        '| replies/s | speedup (replies/s) |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for row in served:
        lines.append(
            f"| {row['label']} | {row['runtime']} | {row['ppl']:.1f} | "
            f"{pair(row, 'f1', 4)} | {pair(row, 'bleu_ref', 2)} | "
            f"{pair(row, 'mean_s_per_reply', 4)} | {pair(row, 'speedup', 2)} | "
            f"{pair(row, 'replies_per_second', 1)} | "
            f"{pair(row, 'throughput_speedup', 2)} |"
        )
    lines.append('')
    return lines
