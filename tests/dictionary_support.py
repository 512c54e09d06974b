"""Every ParlAI dictionary built offline for the tests, and a guard against downloads.

- ``re``, ``split``, ``space``: ParlAI builds them from the task data;
- ``bpe``: ParlAI's own ``build_dict`` (subword-nmt learns the merges into
  ``MODEL.dict.codecs``);
- ``bytelevelbpe``: a ``tokenizers`` ``ByteLevelBPETokenizer`` trained on the
  conversations, its vocabulary and merges given as ``--bpe-vocab``/``--bpe-merge``
  (ParlAI copies them beside the dictionary as ``MODEL.dict-vocab.json`` and
  ``MODEL.dict-merges.txt``);
- ``slow_bytelevel_bpe``: ParlAI's pure-Python reader of such a dictionary: a
  ``bytelevelbpe`` dictionary saved with its two files, then loaded with it;
- ``gpt2``: the same vocabulary and merges written where ParlAI's ``gpt2``
  dictionary looks for GPT-2's (``DATAPATH/gpt2/encoder.json``, ``vocab.bpe``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TOKENIZERS = (
    're',
    'split',
    'space',
    'bpe',
    'bytelevelbpe',
    'slow_bytelevel_bpe',
    'gpt2',
)
#: Real conversations, few and short: the tests' task (single-turn episodes).
TASK = 'anti_scaling.tasks.chitchat'
TASK_OPTIONS: dict[str, Any] = {
    'task': TASK,
    'chitchat_max_conversations': 24,
    'chitchat_max_turns': 2,
}
#: The same as command-line arguments.
TASK_ARGS = [
    '-t',
    TASK,
    '--chitchat-max-conversations',
    str(TASK_OPTIONS['chitchat_max_conversations']),
    '--chitchat-max-turns',
    str(TASK_OPTIONS['chitchat_max_turns']),
]
#: Tokens never split (``--special-tok-lst``), e.g. persona markers.
SPECIAL_TOKENS = ('__p1__', '__p2__')
#: The same conversations with up to 4 turns: multi-turn episodes.
MULTI_TURN_ARGS = [*TASK_ARGS[:-1], '4']


def conversation_texts(conversations: int = 60) -> list[str]:
    """Every turn of the first training conversations of the chitchat task."""
    from anti_scaling.tasks.chitchat.data import load_turns, select_conversations

    turns = load_turns()
    return [
        t for i in select_conversations(turns, 'train', conversations) for t in turns[i]
    ]


def train_byte_level_bpe(folder: str, vocab_size: int = 400) -> tuple[str, str]:
    """Train a byte-level BPE on the conversations; returns (vocab.json, merges.txt)."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=True)
    tokenizer.train_from_iterator(
        conversation_texts(),
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
    )
    os.makedirs(folder, exist_ok=True)
    vocab, merges = tokenizer.save_model(folder, 'bpe')
    return vocab, merges


def write_gpt2_files(datapath: str, vocab: str, merges: str) -> None:
    """Put a vocabulary and merges where ParlAI's ``gpt2`` dictionary reads GPT-2's."""
    folder = os.path.join(datapath, 'gpt2')
    os.makedirs(folder, exist_ok=True)
    shutil.copy(vocab, os.path.join(folder, 'encoder.json'))
    shutil.copy(merges, os.path.join(folder, 'vocab.bpe'))


def save_byte_level_dictionary(dict_file: str, vocab: str, merges: str) -> None:
    """A ``bytelevelbpe`` dictionary saved by ParlAI, with its two files beside it."""
    from parlai.core.dict import DictionaryAgent
    from parlai.core.opt import Opt

    opt = Opt(dict_tokenizer='bytelevelbpe', bpe_vocab=vocab, bpe_merge=merges)
    DictionaryAgent(opt).save(dict_file)


def dictionary_options(tokenizer: str, files: dict[str, str]) -> dict[str, Any]:
    """Training options of a teacher with this dictionary (``files``: see ``workspace``)."""
    options: dict[str, Any] = {'dict_tokenizer': tokenizer}
    if tokenizer != 'bpe':  # ParlAI's subword-nmt reader has no special tokens
        options['special_tok_lst'] = ','.join(SPECIAL_TOKENS)
    if tokenizer == 'bpe':
        options['dict_maxtokens'] = 300  # merges subword-nmt learns
    elif tokenizer == 'bytelevelbpe':
        options.update(bpe_vocab=files['vocab'], bpe_merge=files['merges'])
    elif tokenizer == 'slow_bytelevel_bpe':
        options['dict_file'] = files['slow_dict']
    return options


def build_workspace(root: str) -> dict[str, str]:
    """Tokenizer files for every dictionary; ``datapath`` holds GPT-2's two files."""
    datapath = os.path.join(root, 'data')
    vocab, merges = train_byte_level_bpe(os.path.join(root, 'bpe'))
    write_gpt2_files(datapath, vocab, merges)
    slow_dict = os.path.join(root, 'slow', 'dict')
    save_byte_level_dictionary(slow_dict, vocab, merges)
    return {
        'datapath': datapath,
        'vocab': vocab,
        'merges': merges,
        'slow_dict': slow_dict,
    }


def seeded_train(datapath: str, **options: Any) -> tuple[dict, dict]:
    """``helpers.train`` with the weights' initialisation seeded too: ParlAI's
    ``--seed`` is applied only after the model is built."""
    import random

    import torch
    from helpers import train

    random.seed(0)
    torch.manual_seed(0)
    return train(datapath, **options)


class DownloadAttempted(AssertionError):
    """Raised instead of any ParlAI download while :func:`no_downloads` is active."""


@contextmanager
def no_downloads() -> Iterator[list[str]]:
    """Make every ParlAI download fail loudly (yields the URLs that were attempted).

    ParlAI fetches through ``parlai.core.build_data.download``; ``parlai.utils.bpe``
    (GPT-2's vocabulary) imported it by name, so both references are replaced.
    """
    import parlai.core.build_data as build_data
    import parlai.utils.bpe as bpe

    attempts: list[str] = []

    def refuse(url, path, fname, *args, **kwargs):  # noqa: ANN001, ANN202
        attempts.append(url)
        raise DownloadAttempted(f'download attempted: {url} -> {path}/{fname}')

    originals = (build_data.download, bpe.download)
    build_data.download = refuse
    bpe.download = refuse
    try:
        yield attempts
    finally:
        build_data.download, bpe.download = originals
