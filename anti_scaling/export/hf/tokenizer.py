"""A ``tokenizers`` tokenizer that gives ParlAI's token ids for a model's dictionary.

- ``re`` and ``split`` dictionaries: a word-level tokenizer. ``re`` splits as
  ParlAI's ``\\w+|[^\\w\\s]|\\n`` does, with Python's own ``\\w`` and ``\\s``
  written out as explicit character ranges (the Rust regex engine's differ on
  marks, numerals and separators); ``split`` isolates ``. , ; : ! ?`` and splits
  on Python's whitespace. Lower-cased first when the dictionary is.
- ``bytelevelbpe``: ParlAI's own ``tokenizers`` byte-level BPE (its merges,
  pre-tokenizer and special tokens), with each token's id replaced by the
  id the ParlAI dictionary gives it.
- ``gpt2``: byte-level BPE from the ``encoder.json``/``vocab.bpe`` ParlAI reads,
  each piece mapped to the id of ParlAI's escaped name for it; ParlAI's
  unconditional prefix space is a ``Prepend`` normaliser.

ParlAI's ``re``, ``split`` and ``gpt2`` dictionaries read their special tokens
(``__end__``...) like any other word, so those tokenizers are saved with
``split_special_tokens`` (transformers then never cuts them out of the text);
``bytelevelbpe`` cuts them out, as ParlAI's own tokenizer does. Tokens of
``--special-tok-lst``, which ParlAI always cuts out, are added tokens.
Lower-casing is Python's ``str.lower``: ``Lowercase`` after turning a final
capital sigma into ``ς`` (Python's rule, with up to three case-ignorable
characters between the sigma and the cased letter before it).

Any other dictionary (``bpe``, ``space``, ``nltk``, n-gram dictionaries) is
refused with one line. The single-text post-processor adds what ParlAI adds to
a one-turn history (the global end token; BART's start and end tokens).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from ...errors import DistillationError

SUPPORTED = ('re', 'split', 'bytelevelbpe', 'gpt2')
SPLIT_PUNCTUATION = '.,;:!?'


def check_dictionary(opt: dict, model_file: str) -> None:
    """Refuse (one line) a dictionary no transformers tokenizer reproduces."""
    tokenizer = opt.get('dict_tokenizer', 're')
    if tokenizer not in SUPPORTED:
        raise DistillationError(
            f'{model_file}: --dict-tokenizer {tokenizer} cannot be reproduced by a '
            f'transformers tokenizer (supported: {", ".join(SUPPORTED)}); nothing '
            'was written'
        )
    if (opt.get('dict_max_ngram_size') or -1) > 1:
        raise DistillationError(
            f'{model_file}: --dict-max-ngram-size {opt["dict_max_ngram_size"]} '
            'joins words into n-grams, which no transformers tokenizer reproduces; '
            'nothing was written'
        )


def _python_class(pattern: str) -> str:
    """A regex class body listing every code point Python's ``re`` matches with ``pattern``.

    Runs of matching code points are found by Python's own regex engine on
    the string of all code points in order, so the class is Python's
    definition exactly (surrogates, which Rust strings cannot hold, never match
    ``\\w`` or ``\\s``).
    """
    every = ''.join(map(chr, range(0x110000)))
    parts = []
    for run in re.finditer(pattern, every):
        first, last = ord(run.group()[0]), ord(run.group()[-1])
        parts.append(
            f'\\x{{{first:X}}}' + (f'-\\x{{{last:X}}}' if last > first else '')
        )
    return ''.join(parts)


@functools.cache
def python_word_class() -> str:
    """Python's ``\\w`` on str, as ranges."""
    return _python_class(r'\w+')


@functools.cache
def python_space_class() -> str:
    """Python's ``\\s`` on str, as ranges."""
    return _python_class(r'\s+')


def _special_tokens(d: Any) -> list[str]:
    return [d.null_token, d.start_token, d.end_token, d.unk_token]


#: Capital sigma that Python's ``str.lower`` makes final: after a cased letter
#: (up to three case-ignorable characters between) and before none.
FINAL_SIGMA = (
    r'(?<=\p{Cased}|\p{Cased}\p{Case_Ignorable}|\p{Cased}\p{Case_Ignorable}{2}'
    r'|\p{Cased}\p{Case_Ignorable}{3})Σ(?![\p{Case_Ignorable}]*\p{Cased})'
)


def _lower_case() -> list[Any]:
    """Normalisers that lower-case text as Python's ``str.lower`` does."""
    from tokenizers import Regex, normalizers

    return [normalizers.Replace(Regex(FINAL_SIGMA), 'ς'), normalizers.Lowercase()]


def splits_special_tokens(opt: dict) -> bool:
    """Whether ParlAI reads its special tokens as plain words (all but ``bytelevelbpe``)."""
    return opt.get('dict_tokenizer', 're') != 'bytelevelbpe'


def _extra_special_tokens(opt: dict) -> list[str]:
    """``--special-tok-lst``: tokens ParlAI never splits."""
    return [t for t in (opt.get('special_tok_lst') or '').split(',') if t]


def _word_level(d: Any, opt: dict) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers
    from tokenizers import pre_tokenizers as pre

    tokenizer = Tokenizer(models.WordLevel(dict(d.tok2ind), unk_token=d.unk_token))
    if opt.get('dict_lower'):
        tokenizer.normalizer = normalizers.Sequence(_lower_case())
    words, spaces = python_word_class(), python_space_class()
    if opt.get('dict_tokenizer', 're') == 're':
        pattern = f'[{words}]+|[^{words}{spaces}]|\\n'
        tokenizer.pre_tokenizer = pre.Split(Regex(pattern), 'removed', invert=True)
    else:
        tokenizer.pre_tokenizer = pre.Sequence(
            [
                pre.Split(Regex(f'[{spaces}]+'), 'removed'),
                pre.Split(Regex(f'[{SPLIT_PUNCTUATION}]'), 'isolated'),
            ]
        )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t in _special_tokens(d)]
    )
    return tokenizer


def _bytelevel_bpe(d: Any, opt: dict) -> Any:
    """ParlAI's own HF tokenizer, its vocabulary renumbered with ParlAI's ids."""
    from tokenizers import Tokenizer, normalizers

    spec = json.loads(d.bpe.tokenizer._tokenizer.to_str())
    # An added token keeps its id only if the model's vocabulary has it.
    added = [a['content'] for a in spec['added_tokens']]
    spec['model']['vocab'] = {
        token: d.tok2ind[token]
        for token in [*spec['model']['vocab'], *added]
        if token in d.tok2ind
    }
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    if opt.get('dict_lower'):
        tokenizer.normalizer = normalizers.Sequence(_lower_case())
    return tokenizer


def _gpt2(d: Any, opt: dict) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre

    helper = d.bpe
    vocab = {piece: d.tok2ind[name] for piece, name in helper.encoder.items()}
    # Special tokens keep their ParlAI ids only if the vocabulary has them.
    vocab.update(
        {t: d.tok2ind[t] for t in _special_tokens(d) + _extra_special_tokens(opt)}
    )
    merges = sorted(helper.bpe_ranks, key=helper.bpe_ranks.get)
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=d.unk_token))
    steps = _lower_case() if opt.get('dict_lower') else []
    if helper.add_prefix_space:
        steps.append(normalizers.Prepend(' '))
    if steps:
        tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t in _special_tokens(d)]
    )
    return tokenizer


def build_tokenizer(d: Any, opt: dict, bart_inputs: bool) -> Any:
    """The ``tokenizers.Tokenizer`` of ParlAI dictionary ``d`` (checked first).

    ``bart_inputs``: a single text is wrapped in start and end tokens, as the
    ``bart`` agent does; otherwise the end token is appended when
    ``--history-add-global-end-token end``.
    """
    from tokenizers import AddedToken, processors

    kind = opt.get('dict_tokenizer', 're')
    if kind in ('re', 'split'):
        tokenizer = _word_level(d, opt)
    elif kind == 'bytelevelbpe':
        tokenizer = _bytelevel_bpe(d, opt)
    else:
        tokenizer = _gpt2(d, opt)
    extra = _extra_special_tokens(opt)
    if extra:
        tokenizer.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t in extra]
        )
    start, end = d.start_token, d.end_token
    if bart_inputs:
        template = f'{start} $A {end}'
    elif opt.get('history_add_global_end_token'):
        template = f'$A {end}'
    else:
        template = '$A'
    tokenizer.encode_special_tokens = splits_special_tokens(opt)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template,
        special_tokens=[(start, d.tok2ind[start]), (end, d.tok2ind[end])],
    )
    return tokenizer


def tokenizer_config(d: Any, opt: dict, max_length: int | None) -> dict[str, Any]:
    """``tokenizer_config.json``: the special tokens, left truncation, right padding.

    ParlAI keeps the last ``--text-truncate`` tokens of a context (``max_length``)
    and numbers encoder positions from the first real token, so inputs are
    truncated on the left and padded on the right.
    """
    config = {
        'tokenizer_class': 'PreTrainedTokenizerFast',
        'pad_token': d.null_token,
        'bos_token': d.start_token,
        'eos_token': d.end_token,
        'unk_token': d.unk_token,
        'truncation_side': 'left',
        'padding_side': 'right',
        'clean_up_tokenization_spaces': False,
        'split_special_tokens': splits_special_tokens(opt),
    }
    if max_length:
        config['model_max_length'] = max_length
    return config
