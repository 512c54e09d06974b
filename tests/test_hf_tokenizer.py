"""ParlAI dictionaries as transformers tokenizers, and ParlAI's history in parlai_inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hf_support import chitchat_texts

from anti_scaling.errors import DistillationError
from anti_scaling.export.hf.families import BART, BLENDERBOT
from anti_scaling.export.hf.history import input_settings
from anti_scaling.export.hf.parlai_inputs import ParlaiInputs
from anti_scaling.export.hf.tokenizer import (
    build_tokenizer,
    check_dictionary,
    tokenizer_config,
)

transformers = pytest.importorskip('transformers')

#: Strings where a careless reimplementation of ParlAI's splitting goes wrong:
#: punctuation runs, apostrophes, tabs and newlines, Python-only whitespace
#: (\x1c-\x1f), combining marks, superscripts and other numerals, non-Latin
#: scripts, emoji, underscores and ParlAI's special tokens inside and outside words.
TRICKY = [
    "Hello, world!! It's 3.14 -- ok?\n\nnew  line\ttab",
    'naïve café ²³ x_y 😀 e\u0301 ١٢٣ \x1c\x1dsep\u2028next',
    'Σίσυφος ΟΔΟΣ ΣΑΣ. Σ aΣb Α\'Σ 日本語のテキスト。 ½ Ⅻ',
    '__end__ alone, x__end__ glued, (__end__) and __END__ upper',
    'split;these:marks!now?yes.no,maybe... ok',
    '   leading and trailing spaces   ',
    '',
]


def _dictionary(tokenizer: str, lower: bool, extra: list[str] | None = None):
    from parlai.core.dict import DictionaryAgent

    opt = {
        'dict_tokenizer': tokenizer,
        'dict_lower': lower,
        'special_tok_lst': ','.join(extra or []),
    }
    d = DictionaryAgent(opt)
    for text in chitchat_texts(300) + TRICKY[:3]:
        d.add_to_dict(d.tokenize(text))
    if extra:
        d.add_additional_special_tokens(extra)
    return d, opt


@pytest.mark.parametrize(
    'kind,lower', [('re', True), ('re', False), ('split', True), ('split', False)]
)
def test_word_level_tokenizer_gives_parlai_ids(kind, lower):
    """The same ids as ParlAI's txt2vec on tricky strings and real chat turns."""
    d, opt = _dictionary(kind, lower)
    tokenizer = build_tokenizer(d, opt, bart_inputs=False)
    texts = TRICKY + chitchat_texts(1500)
    ours = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert ours == [d.txt2vec(t) for t in texts]
    # Somewhere in there unknown words and the end token were read as ParlAI reads them.
    assert d[d.unk_token] in sum(ours[:4], []) and d[d.end_token] in ours[3]


def test_additional_special_tokens_are_never_split():
    d, opt = _dictionary('re', True, extra=['__p1__', '<persona>'])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(d, opt, bart_inputs=False),
        **tokenizer_config(d, opt, None),
    )
    texts = ['__p1__ hello', 'hello__p1__world', 'my <persona> is here', 'HI<persona>']
    texts += ['__end__ x__end__ (__end__)']
    for text in texts:
        assert fast(text)['input_ids'] == d.txt2vec(text)


def test_post_processor_and_truncation():
    """One text: ParlAI's global end token, BART's start and end, left truncation."""
    d, opt = _dictionary('re', True)
    text = 'one two three four five six'
    ids = d.txt2vec(text)
    start, end = d[d.start_token], d[d.end_token]
    plain = build_tokenizer(d, opt, bart_inputs=False)
    assert plain.encode(text).ids == ids
    with_end = build_tokenizer(d, {**opt, 'history_add_global_end_token': 'end'}, False)
    assert with_end.encode(text).ids == ids + [end]
    bart = build_tokenizer(d, opt, bart_inputs=True)
    assert bart.encode(text).ids == [start, *ids, end]
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=with_end, **tokenizer_config(d, opt, 4)
    )
    # ParlAI keeps the last 4 tokens of the history, whose last is the end token.
    assert fast(text, truncation=True)['input_ids'] == ids[-3:] + [end]
    assert fast.decode(ids) == ' '.join(d[i] for i in ids)


def test_unsupported_dictionaries_are_refused():
    for opt, message in [
        ({'dict_tokenizer': 'bpe'}, '--dict-tokenizer bpe cannot be reproduced'),
        ({'dict_tokenizer': 'space'}, '--dict-tokenizer space cannot be'),
        ({'dict_tokenizer': 're', 'dict_max_ngram_size': 2}, 'n-grams'),
    ]:
        with pytest.raises(DistillationError, match=message):
            check_dictionary(opt, 'MODEL')
    check_dictionary({'dict_tokenizer': 'bytelevelbpe'}, 'MODEL')


def _history_agent(d, **opt):
    """What :func:`input_settings` reads from a ParlAI agent."""
    opt = {'dict_tokenizer': 're', **opt}
    return SimpleNamespace(
        opt=opt,
        dict=d,
        P1_TOKEN='__p1__',
        P2_TOKEN='__p2__',
        text_truncate=opt.get('text_truncate'),
        label_truncate=opt.get('label_truncate'),
    )


def _parlai_history(d, opt: dict, turns: list[str]) -> list[int]:
    """ParlAI's own History fed the turns as an agent would be; its full vector."""
    from parlai.core.message import Message
    from parlai.core.torch_agent import History

    history = History(
        opt, size=opt.get('history_size', -1), dict_agent=d, p1_token='__p1__'
    )
    # Without replies of its own (use_reply none), every turn given is the partner's.
    replies = opt.get('use_reply', 'label') != 'none'
    for back, text in reversed(list(enumerate(reversed(turns)))):
        if replies and back % 2 == 1:
            history.add_reply(text)
        else:
            history.update_history(Message({'text': text}))
    return history.get_history_vec()


@pytest.mark.parametrize(
    'options',
    [
        {},
        {'delimiter': ' __sep__ ', 'history_add_global_end_token': 'end'},
        {'person_tokens': True, 'history_size': 3},
        {'person_tokens': True, 'add_p1_after_newln': True, 'split_lines': True},
        {'history_reversed': True, 'use_reply': 'none'},
    ],
)
def test_parlai_inputs_rebuild_parlai_history(options):
    """The helper's history ids equal ParlAI's History; truncation as TorchAgent does."""
    d, opt = _dictionary('re', True)
    opt = {**opt, **options, 'text_truncate': 12}
    for extra in ('__sep__', '__p1__', '__p2__'):
        d.add_token(extra)
    turns = [
        'hi there!',
        'hello, how are you?',
        'fine.\nthanks for asking',
        'what are you up to today?',
        'not much, you?',
    ]
    agent = _history_agent(d, **opt)
    settings = input_settings(agent, BLENDERBOT)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(d, opt, False), **tokenizer_config(d, opt, 12)
    )
    inputs = ParlaiInputs(fast, settings)
    full = _parlai_history(d, opt, turns)
    assert inputs.history_ids(turns) == full
    keep_left = not opt.get('history_reversed')
    assert inputs.context_ids(turns) == (full[-12:] if keep_left else full[:12])
    bart = ParlaiInputs(fast, input_settings(agent, BART))
    start, end = d[d.start_token], d[d.end_token]
    if keep_left:
        assert bart.context_ids(turns) == [start, *full[-10:], end]
    assert inputs.label_ids('fine thanks') == d.txt2vec('fine thanks') + [end]


@pytest.mark.slow
@pytest.mark.parametrize('kind,lower', [('re', True), ('split', False)])
def test_whole_chitchat_corpus(kind, lower):
    """Every turn of the chitchat dataset (138,716): ParlAI's ids (docs/hf_export.md)."""
    from parlai.core.dict import DictionaryAgent

    from anti_scaling.tasks.chitchat.data import load_turns

    texts = [t for turns in load_turns().values() for t in turns]
    opt = {'dict_tokenizer': kind, 'dict_lower': lower}
    d = DictionaryAgent(opt)
    for text in texts[:20000]:
        d.add_to_dict(d.tokenize(text))
    tokenizer = build_tokenizer(d, opt, bart_inputs=False)
    ours = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert len(texts) == 138716
    assert [i for i, t in enumerate(texts) if ours[i] != d.txt2vec(t)] == []
