"""A ParlAI dictionary for a transformers tokenizer (the import direction).

ParlAI's dictionary gives ids 0-3 to its null, start, end and unknown tokens and
the rest in file order; a transformers model may put its pad, start, end and
unknown tokens anywhere. :class:`ImportedDictionary` therefore lists the four
first and every other token in the tokenizer's id order, and
``parlai_to_hf[i]`` is the transformers id of ParlAI id ``i`` (the embedding
rows are reordered with it).

- A byte-level BPE tokenizer (optionally lower-casing, optionally with the
  ``Prepend(' ')`` of our ``gpt2`` exports, read as ParlAI's prefix space, which
  differs only for a text that already starts with a space) becomes
  ``--dict-tokenizer bytelevelbpe``: ParlAI
  rebuilds the same ``tokenizers`` BPE from ``MODEL.dict-vocab.json`` and
  ``MODEL.dict-merges.txt`` and appends its four special tokens; so the vocab
  file numbers the other tokens from 0 in ParlAI's order (ParlAI maps its ids to
  the file's by subtracting 4 when decoding).
- A word-level tokenizer is only accepted with the ``parlai_inputs.json`` of our
  own export, which says how ParlAI split the words (``re`` or ``split``).

Anything else is refused with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import DistillationError

#: Names for embedding rows no token uses (ParlAI pads dictionaries likewise).
FILLER = '__HF_UNUSED_{}__'


@dataclass
class ImportedDictionary:
    """The ParlAI dictionary of a transformers tokenizer."""

    tokens: list[str]
    parlai_to_hf: list[int]
    options: dict[str, Any]
    #: Extra files beside ``MODEL.dict``: suffix -> contents.
    files: dict[str, str] = field(default_factory=dict)

    def file_text(self) -> str:
        """``MODEL.dict``: one ``token<TAB>count`` line per id, as ParlAI saves it."""
        from parlai.core.dict import escape

        return ''.join(f'{escape(t)}\t1\n' for t in self.tokens)


def _byte_level(spec: dict) -> dict | None:
    """The ByteLevel pre-tokenizer of a tokenizer spec, if it is one (or in a sequence)."""
    pre = spec.get('pre_tokenizer') or {}
    steps = pre.get('pretokenizers', [pre]) if pre.get('type') == 'Sequence' else [pre]
    levels = [s for s in steps if s.get('type') == 'ByteLevel']
    return levels[0] if len(steps) == 1 and levels else None


def _normalizer_steps(spec: dict) -> list[str]:
    """Types of the normalizers, in order (a ``Prepend`` only if it adds one space)."""
    norm = spec.get('normalizer') or {}
    steps = norm.get('normalizers', []) if norm.get('type') == 'Sequence' else [norm]
    types = []
    for step in steps:
        if step.get('type') == 'Prepend' and step.get('prepend') != ' ':
            types.append('Prepend(other)')
        elif step:
            types.append(step['type'])
    return types


def _order(
    vocab_size: int, hf_ids: list[int], token_of: dict[int, str]
) -> tuple[list[str], list[int]]:
    """ParlAI's tokens and their transformers ids: ``hf_ids`` first, then by id."""
    first = set(hf_ids)
    rest = [i for i in range(vocab_size) if i not in first]
    order = list(hf_ids) + rest
    tokens = [token_of.get(i, FILLER.format(i)) for i in order]
    return tokens, order


def imported_dictionary(
    spec: dict,
    vocab_size: int,
    special_ids: tuple[int, int, int, int],
    metadata: dict | None,
    where: str,
) -> ImportedDictionary:
    """The dictionary of tokenizer ``spec`` (``tokenizer.json`` contents).

    ``special_ids``: transformers ids of the pad, start, end and unknown tokens;
    ``vocab_size``: rows of the embedding matrix; ``metadata``: the
    ``dictionary`` entry of our export's ``parlai_inputs.json``, if any.
    """
    model = spec.get('model') or {}
    token_of = {i: t for t, i in model.get('vocab', {}).items()}
    token_of.update({a['id']: a['content'] for a in spec.get('added_tokens', [])})
    if any(i >= vocab_size for i in token_of):
        raise DistillationError(
            f'{where}: the tokenizer has ids beyond the {vocab_size} embedding rows; '
            'nothing was written'
        )
    missing = [i for i in special_ids if i not in token_of]
    if missing:
        raise DistillationError(
            f'{where}: no token has special id {missing[0]}; nothing was written'
        )
    tokens, order = _order(vocab_size, list(special_ids), token_of)
    names = dict(
        zip(
            ('dict_nulltoken', 'dict_starttoken', 'dict_endtoken', 'dict_unktoken'),
            tokens,
        )
    )
    if len(set(tokens[:4])) < 4:
        raise DistillationError(
            f'{where}: pad, start, end and unknown must be four different tokens for '
            'ParlAI; nothing was written'
        )
    steps = _normalizer_steps(spec)
    lower = 'Lowercase' in steps
    byte_level = _byte_level(spec)
    if model.get('type') == 'BPE' and byte_level is not None:
        prefix_space = bool(byte_level.get('add_prefix_space', False))
        if steps and steps[-1] == 'Prepend':
            steps, prefix_space = steps[:-1], True
        if steps not in ([], ['Lowercase']) or not byte_level.get('use_regex', True):
            raise DistillationError(
                f'{where}: a byte-level BPE tokenizer with normalizers {steps} has no '
                'ParlAI dictionary; nothing was written'
            )
        bpe_vocab = {
            t: i - 4 for i, t in enumerate(tokens) if i >= 4 and t in model['vocab']
        }
        merges = [
            m if isinstance(m, str) else ' '.join(m) for m in model.get('merges', [])
        ]
        return ImportedDictionary(
            tokens,
            order,
            {
                **names,
                'dict_tokenizer': 'bytelevelbpe',
                'dict_lower': lower,
                'bpe_add_prefix_space': prefix_space,
            },
            {
                '-vocab.json': json.dumps(bpe_vocab, ensure_ascii=False),
                '-merges.txt': '#version: 0.2\n' + ''.join(m + '\n' for m in merges),
            },
        )
    kind = (metadata or {}).get('dict_tokenizer')
    if model.get('type') == 'WordLevel' and kind in ('re', 'split'):
        return ImportedDictionary(
            tokens, order, {**names, 'dict_tokenizer': kind, 'dict_lower': lower}
        )
    raise DistillationError(
        f'{where}: a {model.get("type")} tokenizer'
        + (
            ' without our parlai_inputs.json'
            if model.get('type') == 'WordLevel'
            else ''
        )
        + ' has no ParlAI dictionary (byte-level BPE tokenizers, and word-level ones '
        'exported by anti_scaling, do); nothing was written'
    )
