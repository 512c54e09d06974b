"""ParlAI's beam search, step by step, on CTranslate2's next-token logits.

CTranslate2's own beam search keeps ``beam`` live hypotheses and ranks finished
ones its own way, so its replies can differ from ParlAI's. This module replays
``parlai.core.torch_generator_agent.BeamSearch`` exactly: at each step the
log-softmax of each live hypothesis' next-token logits (CTranslate2, the
hypothesis as target prefix, ``return_logits_vocab``) is masked as ParlAI masks
it (the end token before ``min_length`` steps; n-grams of the hypothesis, start
token included, and of the context), the best ``beam`` of all (hypothesis,
token) pairs are kept, a pair ending in the end token is finished and its slot
dies, and the search stops when the best pair of a step is an end token and
``beam`` replies have finished (or at ``max_length`` steps). Finished replies
are ranked by ``score / ((2 + tokens) / 6) ** length_penalty`` (GNMT, end token
counted). Each step decodes every live hypothesis of every history in one
engine call, without a cache: slower than CTranslate2's own beam search, still
faster than ParlAI's for small students.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NEG_INF = float('-inf')


def blocked(hypothesis: Sequence[int], source: Sequence[int], n: int) -> set[int]:
    """Tokens whose n-gram with the end of ``hypothesis`` occurs in ``source``."""
    if n <= 0:
        return set()
    head = list(hypothesis[len(hypothesis) - (n - 1) :]) if n > 1 else []
    out = set()
    for i in range(len(source) - n + 1):
        if n == 1 or list(source[i : i + n - 1]) == head:
            out.add(int(source[i + n - 1]))
    return out


@dataclass
class Search:
    """The beam of one history (ParlAI's ``TreeSearch`` state)."""

    beam: int
    context: list[int]
    block_ids: list[int]
    hyps: list[list[int]] = field(default_factory=lambda: [[]])
    scores: list[float] = field(default_factory=lambda: [0.0])
    finished: list[tuple[list[int], float]] = field(default_factory=list)
    eos_top: bool = False

    def done(self) -> bool:
        """ParlAI's ``is_done``: the best pair ended and ``beam`` replies finished."""
        return self.eos_top and len(self.finished) >= self.beam

    def live(self) -> list[int]:
        """Slots whose hypothesis can still grow."""
        return [i for i, s in enumerate(self.scores) if s > NEG_INF]


def _log_softmax(logits: Any) -> Any:
    """ParlAI's ``log_softmax`` in float32."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float32)
    top = x.max()
    return x - (top + np.log(np.exp(x - top).sum()))


def _advance(
    search: Search, step: int, rows: dict[int, Any], g: dict, end: int, start: int
) -> None:
    """One step of ParlAI's ``TreeSearch.advance`` for ``search`` (``rows``: slot ->
    next-token logits)."""
    import numpy as np

    candidates = []
    for slot, logits in rows.items():
        lp = _log_softmax(logits).astype(np.float64)
        if step < g['min_length']:
            lp[end] = NEG_INF
        hyp = [start, *search.hyps[slot]]
        for token in blocked(hyp, hyp, g['block_ngram']):
            lp[token] = NEG_INF
        for token in blocked(hyp, search.block_ids, g['context_block_ngram']):
            lp[token] = NEG_INF
        total = search.scores[slot] + lp
        k = min(search.beam, len(total))
        best = np.argpartition(-total, k - 1)[:k]
        candidates += [(float(total[t]), slot, int(t)) for t in best]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    chosen = candidates[: search.beam]
    while len(chosen) < search.beam:  # dead slots, as ParlAI's -inf rows
        chosen.append((NEG_INF, 0, end))
    search.hyps = [search.hyps[slot] + [token] for _, slot, token in chosen]
    search.scores = []
    for score, _, token in chosen:
        ended = token == end and score > NEG_INF
        if ended:
            search.finished.append((search.hyps[len(search.scores)], score))
        search.scores.append(NEG_INF if token == end else score)
    if chosen[0][2] == end:
        search.eos_top = True


def best_reply(search: Search, end: int, length_penalty: float) -> list[int]:
    """ParlAI's ``get_rescored_finished()[0]``: the best finished reply."""
    if not search.finished:
        forced = search.hyps[0][:-1] + [end]
        return forced
    ranked = sorted(
        search.finished,
        key=lambda f: -f[1] / math.pow((2 + len(f[0])) / 6, length_penalty),
    )
    return ranked[0][0]


def parlai_beam(
    engine: Any,
    contexts: Sequence[Sequence[int]],
    blocks: Sequence[Sequence[int]],
    beam: int,
) -> list[list[int]]:
    """ParlAI's beam replies (end token included) for encoder inputs ``contexts``.

    ``engine``: an :class:`~.engine.Engine` (its translator, vocabulary and
    ``ct2_generation.json`` settings); ``blocks``: the ids each reply's context
    n-grams come from.
    """
    g = dict(engine.generation)
    g['min_length'] = g['beam_min_length']
    end, start = engine.end_id, engine.start_id
    head = [engine.vocab[start]] if engine.prefix else []
    searches = [Search(beam, list(c), list(b)) for c, b in zip(contexts, blocks)]
    for step in range(g['max_length']):
        work = [(s, slot) for s in searches if not s.done() for slot in s.live()]
        if not work:
            break
        results = engine.translator.translate_batch(
            [engine.tokens(s.context) for s, _ in work],
            [head + engine.tokens(s.hyps[slot]) for s, slot in work],
            beam_size=1,
            max_decoding_length=len(head) + step + 1,
            min_decoding_length=0,
            return_logits_vocab=True,
            max_input_length=0,
        )
        rows: dict[int, dict[int, Any]] = {}
        for (s, slot), result in zip(work, results):
            rows.setdefault(id(s), {})[slot] = result.logits[0][len(head) + step]
        for s in searches:
            if id(s) in rows:
                _advance(s, step, rows[id(s)], g, end, start)
    return [best_reply(s, end, g['length_penalty']) for s in searches]
