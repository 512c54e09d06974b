"""Replies and scores from an exported CTranslate2 folder, as ParlAI would give them.

:class:`Engine` reads a folder written by :mod:`.to_ct2`: the CTranslate2
model, ``tokenizer.json`` (ParlAI's token ids), ``parlai_inputs.json`` (ParlAI's
history settings, applied by the same :class:`~anti_scaling.export.hf.parlai_inputs.ParlaiInputs`
the Hugging Face export ships) and ``ct2_generation.json`` (:mod:`.generation`).
It needs ``ctranslate2`` and ``tokenizers`` only (no torch, no ParlAI).
The verification of the export and the serving wing
(:mod:`anti_scaling.serving`) both decode through it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from ...errors import DistillationError
from ..hf.parlai_inputs import SETTINGS_FILE, ParlaiInputs
from ..hf.tokenizer import splits_special_tokens
from .generation import GENERATION_FILE

#: A history: the turns of a conversation, oldest first (a text is one turn).
History = Sequence[str] | str


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the two calls :class:`ParlaiInputs` makes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(
        self, text: str, add_special_tokens: bool = False, verbose: bool = False
    ) -> dict[str, list[int]]:
        """``{'input_ids': ids}`` of ``text``, as a transformers tokenizer returns."""
        return {
            'input_ids': self.tokenizer.encode(
                text, add_special_tokens=add_special_tokens
            ).ids
        }

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_inputs(folder: str) -> ParlaiInputs:
    """The folder's :class:`ParlaiInputs` over its ``tokenizer.json``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, SETTINGS_FILE), encoding='utf-8') as fh:
        settings = json.load(fh)
    tokenizer.encode_special_tokens = splits_special_tokens(settings['dictionary'])
    return ParlaiInputs(TextTokenizer(tokenizer), settings)


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The distinct n-grams of ``ids``, in order of first appearance."""
    seen: dict[tuple[int, ...], None] = {}
    for i in range(len(ids) - n + 1):
        seen.setdefault(tuple(ids[i : i + n]), None)
    return list(seen)


class Done:
    """A reply decoded already (exact beam search), read like an asynchronous result."""

    def __init__(self, reply: list[int]) -> None:
        self.reply = reply

    def result(self) -> Done:
        """Itself (:meth:`Engine.finish` reads the reply)."""
        return self


class Engine:
    """An exported folder loaded in CTranslate2 (module doc).

    ``compute_type``: CTranslate2's (``default`` keeps the folder's
    quantisation); ``intra_threads``: threads per batch; ``inter_threads``:
    batches decoded in parallel; ``exact_beam``: beam search replays ParlAI's
    (:mod:`.beam`: ParlAI's replies, several times slower) rather than
    CTranslate2's own (fast; its replies can differ from ParlAI's).
    """

    def __init__(
        self,
        folder: str,
        device: str = 'cpu',
        compute_type: str = 'default',
        intra_threads: int = 1,
        inter_threads: int = 1,
        exact_beam: bool = False,
    ) -> None:
        import ctranslate2

        self.folder = folder
        #: Beam search as ParlAI's, step by step (:mod:`.beam`); else CTranslate2's own.
        self.exact_beam = exact_beam
        self.inputs = load_inputs(folder)
        with open(os.path.join(folder, GENERATION_FILE), encoding='utf-8') as fh:
            self.generation = json.load(fh)
        with open(
            os.path.join(folder, 'shared_vocabulary.json'), encoding='utf-8'
        ) as fh:
            self.vocab: list[str] = json.load(fh)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self.translator = ctranslate2.Translator(
            folder,
            device=device,
            compute_type=compute_type,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
        )
        s = self.inputs.settings
        self.end_id, self.start_id = s['end_id'], s['start_id']
        # BART decodes from [end, start]: the start token is a target prefix.
        self.prefix = [self.vocab[self.start_id]] if s['decoder_prefix'] == 2 else None

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary entries of ``ids``."""
        return [self.vocab[i] for i in ids]

    def context_ids(self, history: History) -> list[int]:
        """ParlAI's encoder input for ``history``."""
        return self.inputs.context_ids(history)

    def _options(self, beam: int) -> dict[str, Any]:
        """``translate_batch`` options of one decoding (``ct2_generation.json``)."""
        g = self.generation
        prefix = 1 if self.prefix else 0  # CTranslate2 counts the target prefix
        options: dict[str, Any] = {
            'beam_size': beam,
            'max_decoding_length': g['max_length'] + prefix,
            # ParlAI's greedy search has no minimum length; a benchmark may set
            # one ('greedy_min_length') to time replies of a fixed length.
            'min_decoding_length': (
                g['beam_min_length'] + prefix
                if beam > 1
                else g.get('greedy_min_length', 0) + prefix
            ),
            'no_repeat_ngram_size': g['block_ngram'],
            'return_end_token': True,
            'max_input_length': 0,
        }
        if beam > 1:
            options.update(num_hypotheses=beam, length_penalty=0.0, return_scores=True)
        return options

    def prepare(self, history: History) -> tuple[list[int], list[int]]:
        """The encoder input of ``history`` and the ids its n-grams are blocked from."""
        full = self.inputs.history_ids(history)
        context = self.inputs.truncate(full)
        return context, (full if self.generation['block_full_context'] else context)

    def _suppressed(self, block_ids: Sequence[int]) -> list[list[str]] | None:
        """The context n-grams a reply may not repeat (None: no context blocking)."""
        n = self.generation['context_block_ngram']
        if not n:
            return None
        return [self.tokens(g) for g in ngrams(block_ids, n)] or None

    def submit(
        self, histories: Sequence[History], beam: int | None = None
    ) -> list[Any]:
        """Start decoding ``histories`` (asynchronous CTranslate2 results, one each)."""
        prepared = [self.prepare(h) for h in histories]
        return self.submit_ids([c for c, _ in prepared], [b for _, b in prepared], beam)

    def submit_ids(
        self,
        contexts: Sequence[Sequence[int]],
        blocks: Sequence[Sequence[int]] | None = None,
        beam: int | None = None,
    ) -> list[Any]:
        """Start decoding encoder inputs given as ids (``blocks``: the ids whose
        n-grams each reply may not repeat, see :meth:`prepare`)."""
        beam = beam or self.generation['beam_size']
        if beam < 1:
            raise DistillationError(f'beam must be >= 1, got {beam}')
        if beam > 1 and self.exact_beam:
            from .beam import parlai_beam

            replies = parlai_beam(self, contexts, blocks or contexts, beam)
            return [Done(r) for r in replies]
        options = self._options(beam)
        sources = [self.tokens(c) for c in contexts]
        prefix = [self.prefix] * len(sources) if self.prefix else None
        suppressed = [self._suppressed(b) for b in (blocks or contexts)]
        if all(s is None for s in suppressed):
            return self.translator.translate_batch(
                sources, prefix, asynchronous=True, **options
            )
        return [
            self.translator.translate_batch(
                [src],
                [self.prefix] if self.prefix else None,
                asynchronous=True,
                suppress_sequences=blocked,
                **options,
            )[0]
            for src, blocked in zip(sources, suppressed)
        ]

    def finish(self, result: Any) -> list[int]:
        """ParlAI's reply ids (end included) from a finished CTranslate2 result."""
        if isinstance(result, Done):
            return list(result.reply)
        hypotheses = [[self.ids[t] for t in h] for h in result.hypotheses]
        if self.prefix:
            hypotheses = [h[1:] if h[:1] == [self.start_id] else h for h in hypotheses]
        if len(hypotheses) > 1:
            penalty = self.generation['length_penalty']
            scores = [
                score / math.pow((2 + len(h)) / 6, penalty)
                for h, score in zip(hypotheses, result.scores)
            ]
            best = max(range(len(hypotheses)), key=lambda i: scores[i])
            reply = hypotheses[best]
        else:
            reply = hypotheses[0]
        if self.end_id in reply:
            return reply[: reply.index(self.end_id) + 1]
        if len(reply) >= self.generation['max_length']:
            reply = reply[: self.generation['max_length']]
            reply[-1] = self.end_id  # as ParlAI's search does at its limit
        return reply

    def reply_ids(
        self, histories: Sequence[History], beam: int | None = None
    ) -> list[list[int]]:
        """ParlAI's reply ids (end included) for each history."""
        return [self.finish(r.result()) for r in self.submit(histories, beam)]

    def text(self, reply: Sequence[int]) -> str:
        """The text of reply ids, as ParlAI prints it."""
        ids = [i for i in reply if i not in (self.end_id, self.start_id)]
        text = self.inputs.tokenizer.decode(ids, skip_special_tokens=False)
        return text.lstrip(' ') if self.inputs.settings['strip_prefix_space'] else text

    def score_ids(
        self, contexts: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Log-probability of each label token given its context (CTranslate2's scoring).

        A label ending in the end token is scored with it; one cut short (by
        ``--label-truncate``) without it.
        """
        targets = [
            list(y[:-1]) if y and y[-1] == self.end_id else list(y) for y in labels
        ]
        prefix = [self.vocab[self.start_id]] if self.prefix else []
        results = self.translator.score_batch(
            [self.tokens(c) for c in contexts],
            [prefix + self.tokens(t) for t in targets],
            max_input_length=0,
        )
        skip = len(prefix)
        return [
            list(r.log_probs[skip : skip + len(y)]) for r, y in zip(results, labels)
        ]
