"""Build a model's input the way ParlAI built it in training (shipped with the export).

This file is copied, unchanged, into every folder written by
``python -m anti_scaling.scripts.export_hf``, beside ``parlai_inputs.json``
(the model's history settings). It needs only ``transformers``::

    from transformers import AutoModelForSeq2SeqLM
    from parlai_inputs import ParlaiInputs

    model = AutoModelForSeq2SeqLM.from_pretrained(FOLDER)
    inputs = ParlaiInputs.from_pretrained(FOLDER)
    conversation = ['hi there!', 'hello, how are you?', 'fine. and you?']
    out = model.generate(**inputs.generate_kwargs([conversation]))
    print(inputs.reply_text(out[0]))

The int8 copy, when the folder has one: ``load_int8(FOLDER)``.

ParlAI's recipe (``parlai.core.torch_agent.History`` and ``_set_text_vec``):
each turn is tokenized on its own (the partner's turns with ``__p1__ `` in
front and the model's own with ``__p2__ `` when ``person_tokens``), the
delimiter is tokenized once and put between turns, only the last
``history_size`` turns are kept, the end token is appended when
``history_add_global_end_token``, and the result is cut to its last
``text_truncate`` tokens. BART models then keep ``text_truncate - 2`` tokens
and add the start and end tokens around them. Contexts are padded on the right.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

SETTINGS_FILE = 'parlai_inputs.json'


class ParlaiInputs:
    """Turns conversations into ParlAI's token ids, and generated ids into replies."""

    def __init__(self, tokenizer: Any, settings: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.settings = dict(settings)

    @classmethod
    def from_pretrained(cls, folder: str, tokenizer: Any = None) -> ParlaiInputs:
        """The settings in ``folder/parlai_inputs.json`` and the folder's tokenizer."""
        with open(os.path.join(folder, SETTINGS_FILE), encoding='utf-8') as fh:
            settings = json.load(fh)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(tokenizer, settings)

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)['input_ids']
        return list(ids)

    def _entries(self, turns: Sequence[str]) -> list[str]:
        """History entries: the last turn is the partner's, turns alternate before it.

        With ``use_reply`` ``none`` ParlAI keeps no replies of its own: every
        turn is the partner's.
        """
        s = self.settings
        entries = []
        for back, text in enumerate(reversed(turns)):
            own = back % 2 == 1 and s['use_reply'] != 'none'
            if own:
                pieces = [f"{s['p2_token']} {text}" if s['person_tokens'] else text]
            else:
                lines = text.split('\n') if s['split_lines'] else [text]
                if s['person_tokens']:
                    pieces = [self._person(text) for _ in lines]
                else:
                    pieces = lines
            entries = pieces + entries
        size = s['history_size']
        return entries[-size:] if size and size > 0 else entries

    def _person(self, text: str) -> str:
        s = self.settings
        if s['add_p1_after_newln']:
            lines = text.split('\n')
            lines[-1] = f"{s['p1_token']} {lines[-1]}"
            return '\n'.join(lines)
        return f"{s['p1_token']} {text}"

    def history_ids(self, turns: Sequence[str] | str) -> list[int]:
        """The whole history's ids, before truncation (ParlAI's ``full_text_vec``)."""
        s = self.settings
        if isinstance(turns, str):
            turns = [turns]
        delimiter = self._ids(s['delimiter'])
        ids: list[int] = []
        for i, entry in enumerate(self._entries(turns)):
            if i:
                ids += delimiter
            ids += self._ids(entry)
        if s['history_add_global_end_token']:
            ids.append(s['end_id'])
        return ids[::-1] if s['history_reversed'] else ids

    def context_ids(self, turns: Sequence[str] | str) -> list[int]:
        """The encoder input ParlAI builds from a conversation (a text is one turn)."""
        return self.truncate(self.history_ids(turns))

    def truncate(self, ids: Sequence[int]) -> list[int]:
        """The encoder input of a whole history's ids (ParlAI's ``text_truncate``)."""
        s = self.settings
        ids = list(ids)
        limit = s['text_truncate']
        if s['add_start_end']:
            if limit is not None:
                ids = ids[-(limit - 2) :] if limit > 2 else []
            return [s['start_id'], *ids, s['end_id']]
        if limit is not None and len(ids) > limit:
            ids = ids[:limit] if s['history_reversed'] else ids[-limit:]
        return ids

    def label_ids(self, text: str) -> list[int]:
        """A reply as ParlAI scores it: its tokens, the end token, cut to ``label_truncate``."""
        ids = self._ids(text) + [self.settings['end_id']]
        limit = self.settings['label_truncate']
        return ids[:limit] if limit is not None else ids

    def _padded(self, rows: list[list[int]]) -> Any:
        import torch

        ids = torch.full(
            (len(rows), max(len(r) for r in rows)), self.settings['pad_id']
        )
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def __call__(self, conversations: Sequence[Sequence[str] | str]) -> dict[str, Any]:
        """A batch for ``model(**batch)`` (padded on the right)."""
        rows = [self.context_ids(c) for c in conversations]
        ids = self._padded(rows)
        mask = ids.new_zeros(ids.shape)
        for i, row in enumerate(rows):
            mask[i, : len(row)] = 1
        return {'input_ids': ids, 'attention_mask': mask}

    def generate_kwargs(
        self, conversations: Sequence[Sequence[str] | str]
    ) -> dict[str, Any]:
        """Keyword arguments of ``model.generate`` that decode as ParlAI does.

        The batch, and, when the model blocks n-grams of its context with
        ParlAI's ``--beam-block-full-context`` (its default), a logits
        processor that blocks those of the whole history (transformers'
        ``encoder_no_repeat_ngram_size`` sees the truncated input only).
        """
        s = self.settings
        kwargs = self(conversations)
        n = s['context_block_ngram']
        if n > 0 and s['block_full_context']:
            from transformers import (
                EncoderNoRepeatNGramLogitsProcessor,
                LogitsProcessorList,
            )

            full = self._padded([self.history_ids(c) for c in conversations])
            processor = EncoderNoRepeatNGramLogitsProcessor(n, full)
            kwargs['logits_processor'] = LogitsProcessorList([processor])
            kwargs['encoder_no_repeat_ngram_size'] = 0
        return kwargs

    def reply_ids(self, sequence: Sequence[int]) -> list[int]:
        """The reply in a generated sequence: after the decoder's first tokens, up to the end token."""
        s = self.settings
        out = []
        for token in list(int(t) for t in sequence)[s['decoder_prefix'] :]:
            if token == s['end_id']:
                break
            if token != s['start_id']:
                out.append(token)
        return out

    def reply_text(self, sequence: Sequence[int]) -> str:
        """The reply's text as ParlAI prints it."""
        text = self.tokenizer.decode(
            self.reply_ids(sequence), skip_special_tokens=False
        )
        return text.lstrip(' ') if self.settings['strip_prefix_space'] else text


def load_int8(folder: str) -> Any:
    """The folder's int8 copy (``int8/model_int8.pt``): CPU only, eval mode.

    The model is built from ``config.json`` (decoding settings from
    ``generation_config.json``), its encoder and decoder linear layers are
    dynamically quantised (torch ``quantize_dynamic``, int8) and the saved
    weights loaded into it.
    """
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, GenerationConfig

    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    model.generation_config = GenerationConfig.from_pretrained(folder)
    path = os.path.join(folder, 'int8', 'model_int8.pt')
    with warnings.catch_warnings():  # torch's deprecation notices for torch.ao
        warnings.simplefilter('ignore')
        torch.ao.quantization.quantize_dynamic(
            model.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
        model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    return model
