"""What a ParlAI dictionary needs: the package its tokenizer imports, the files it reads.

ParlAI's ``DictionaryAgent`` splits text with ``--dict-tokenizer``. ``DICT`` is
the ``--dict-file`` and ``DATAPATH`` ParlAI's ``--datapath``:

==================  ===========  ====================================================
tokenizer           package      files read besides ``DICT``
==================  ===========  ====================================================
re, split, space    (none)       (none)
bpe                 subword-nmt  ``DICT.codecs`` (the merges subword-nmt learned)
bytelevelbpe        tokenizers   ``DICT-vocab.json``, ``DICT-merges.txt`` when ``DICT``
                                 exists (else ``--bpe-vocab``, ``--bpe-merge``)
slow_bytelevel_bpe  regex        the same two when ``DICT`` and both exist, else
                                 ``DATAPATH/gpt2/encoder.json`` and ``vocab.bpe``
gpt2                regex        ``DATAPATH/gpt2/encoder.json``, ``DATAPATH/gpt2/vocab.bpe``
nltk                nltk         (nltk's punkt data)
==================  ===========  ====================================================

ParlAI downloads GPT-2's two files into ``DATAPATH/gpt2`` only when one of them
is missing there; when both are present it reads them and nothing is fetched.
When ParlAI saves a ``bpe``, ``bytelevelbpe`` or ``slow_bytelevel_bpe``
dictionary to ``MODEL.dict`` it writes the files beside it
(:data:`SIDE_FILE_SUFFIXES`); a copy of a model must carry them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from .errors import DistillationError

#: ``--dict-tokenizer`` -> (module it imports, the pip package that provides it).
TOKENIZER_PACKAGES: dict[str, tuple[str, str]] = {
    'bpe': ('subword_nmt', 'subword-nmt'),
    'bytelevelbpe': ('tokenizers', 'tokenizers'),
    'slow_bytelevel_bpe': ('regex', 'regex'),
    'gpt2': ('regex', 'regex'),
    'nltk': ('nltk', 'nltk'),
}
#: Files ParlAI writes beside a saved dictionary ``DICT`` (``DICT + suffix``).
SIDE_FILE_SUFFIXES = ('.codecs', '-vocab.json', '-merges.txt')
#: ParlAI's default tokenizer (``DictionaryAgent.default_tok``).
DEFAULT_TOKENIZER = 're'


def tokenizer_of(opt: Mapping[str, Any]) -> str:
    """The ``--dict-tokenizer`` of a model's options (ParlAI's default if unset)."""
    return str(opt.get('dict_tokenizer') or DEFAULT_TOKENIZER)


def missing_tokenizer_package(tokenizer: str) -> str | None:
    """The pip package ``tokenizer`` needs and cannot import, or None when it imports."""
    if tokenizer not in TOKENIZER_PACKAGES:
        return None
    module, package = TOKENIZER_PACKAGES[tokenizer]
    try:
        importlib.import_module(module)
    except ImportError:
        return package
    return None


def check_tokenizer_installed(opt: Mapping[str, Any], source: str) -> None:
    """Refuse, in one line, a dictionary whose tokenizer package cannot be imported.

    ``source`` names the model in the message (e.g. ``'teacher /path/model'``).
    """
    tokenizer = tokenizer_of(opt)
    package = missing_tokenizer_package(tokenizer)
    if package is not None:
        raise DistillationError(
            f'{source} uses --dict-tokenizer {tokenizer}, which needs the Python '
            f'package {package}: pip install {package} (a dependency of '
            'anti_scaling, so reinstalling anti_scaling also installs it)'
        )


def side_files(dict_file: str) -> dict[str, str]:
    """The files ParlAI saved beside ``dict_file`` that exist: suffix -> path."""
    found = {}
    for suffix in SIDE_FILE_SUFFIXES:
        path = dict_file + suffix
        if os.path.isfile(path):
            found[suffix] = path
    return found


def gpt2_files(datapath: str | None) -> tuple[str, str]:
    """Where ParlAI's ``gpt2`` dictionary reads GPT-2's vocabulary and merges."""
    folder = os.path.join(datapath or '', 'gpt2')
    return os.path.join(folder, 'encoder.json'), os.path.join(folder, 'vocab.bpe')


def tokenizer_files(
    opt: Mapping[str, Any], dict_file: str | None, datapath: str | None
) -> dict[str, str]:
    """The files the tokenizer reads besides the dictionary, resolved as ParlAI does.

    Keys: ``bpe_codecs`` (subword-nmt merges), ``bpe_vocab`` (token -> id JSON)
    and ``bpe_merge`` (byte-level merges). Paths may not exist (ParlAI then
    fails, or for GPT-2's files downloads them).
    """
    tokenizer = tokenizer_of(opt)
    loaded = bool(dict_file) and os.path.isfile(dict_file or '')
    beside = {
        'bpe_vocab': f'{dict_file}-vocab.json',
        'bpe_merge': f'{dict_file}-merges.txt',
    }
    if tokenizer == 'bpe' and dict_file:
        return {'bpe_codecs': f'{dict_file}.codecs'}
    if tokenizer == 'bytelevelbpe':
        files = {}
        for key, path in beside.items():
            if loaded and os.path.isfile(path):
                files[key] = path
            elif opt.get(key):
                files[key] = str(opt[key])
        return files
    if tokenizer == 'slow_bytelevel_bpe' and loaded:
        if all(os.path.isfile(p) for p in beside.values()):
            return dict(beside)
    if tokenizer in ('slow_bytelevel_bpe', 'gpt2'):
        vocab, merges = gpt2_files(datapath)
        return {'bpe_vocab': vocab, 'bpe_merge': merges}
    return {}
