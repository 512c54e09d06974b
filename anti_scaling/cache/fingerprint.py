"""What a teacher cache was built from, and whether a training run still matches it.

A cache is only valid for the exact token ids a student feeds its model and for
the exact teacher that produced the targets. Its ``meta.json`` therefore records:

- the teacher: SHA-256 and size of the model file, SHA-256 of its ``.opt``;
- the dictionary: SHA-256 of the dictionary file and of every file its
  tokenizer reads (BPE codecs, vocabulary, merges), and every dictionary option
  that changes tokenisation;
- vectorisation: the effective text/label truncation and every history option;
- the task and each of the task's own options, and the temperature ``T`` at
  which the teacher's distribution was stored.

:func:`differences` lists, in words, what differs between a cache's record and
a run (empty when compatible).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..dictionaries import tokenizer_files
from ..errors import DistillationError, describe_exception
from ..fileio import sha256_of
from ..option_keys import HISTORY_KEYS, TOKENIZATION_KEYS

# Option names that never describe the data, even if a task declares them.
_NOT_TASK_OPTIONS = {'datatype', 'datapath', 'download_path', 'batchsize'}

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (memoised per path, size and modification time)."""
    stat = os.stat(path)
    memo_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        _SHA_MEMO[memo_key] = sha256_of(path)
    return _SHA_MEMO[memo_key]


def teacher_fingerprint(model_file: str) -> dict[str, Any]:
    """SHA-256 and size of the teacher's model file and SHA-256 of its ``.opt``."""
    for path in (model_file, model_file + '.opt'):
        if not os.path.isfile(path):
            raise DistillationError(f'teacher file not found: {path}')
    return {
        'model_sha256': file_sha256(model_file),
        'model_size': os.path.getsize(model_file),
        'opt_sha256': file_sha256(model_file + '.opt'),
    }


def dictionary_fingerprint(dict_file: str | None, opt: dict) -> dict[str, Any]:
    """The content hashes of the dictionary and its tokenizer's files, and its options.

    The tokenizer's files are those ParlAI reads for ``opt``'s
    ``--dict-tokenizer`` (:func:`~anti_scaling.dictionaries.tokenizer_files`:
    subword-nmt codecs, byte-level vocabulary and merges beside the dictionary
    or in ``DATAPATH/gpt2``); missing ones are left out.
    """
    if not dict_file or not os.path.isfile(dict_file):
        raise DistillationError(f'dictionary file not found: {dict_file}')
    files = {'dict_file': file_sha256(dict_file)}
    for key, path in tokenizer_files(opt, dict_file, opt.get('datapath')).items():
        if os.path.isfile(path):
            files[key] = file_sha256(path)
    return {
        'sha256': files,
        'options': {k: _plain(opt.get(k)) for k in TOKENIZATION_KEYS},
    }


def effective_truncation(opt: dict) -> dict[str, int | None]:
    """Text and label truncation as ParlAI's ``TorchAgent`` resolves them."""
    out: dict[str, int | None] = {}
    general = opt.get('truncate')
    general = -1 if general is None else int(general)
    for key in ('text_truncate', 'label_truncate'):
        value = opt.get(key) or general
        out[key] = int(value) if value is not None and int(value) >= 0 else None
    return out


def vectorization_fingerprint(opt: dict) -> dict[str, Any]:
    """Every option that changes the ids of a context or a label."""
    out: dict[str, Any] = dict(effective_truncation(opt))
    for key in HISTORY_KEYS:
        value = opt.get(key)
        if key == 'use_reply' and value is None:
            value = 'label'
        out[key] = _plain(value)
    return out


def task_option_names(task: str, opt: dict) -> list[str]:
    """The options the task's teachers add to ParlAI's parser (sorted)."""
    from parlai.core.opt import Opt
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser(True, False)
    before = {action.dest for action in parser._actions}
    try:
        parser.add_task_args(task, Opt(dict(opt)))
    except Exception as e:  # an unknown task: ParlAI raises several types
        raise DistillationError(
            f'cannot load task {task!r} ({describe_exception(e)})'
        ) from None
    added = {action.dest for action in parser._actions} - before
    return sorted(added - _NOT_TASK_OPTIONS)


def task_fingerprint(task: str, opt: dict) -> dict[str, Any]:
    """The task name and the value of each of its own options in ``opt``."""
    return {
        'task': task,
        'options': {k: _plain(opt.get(k)) for k in task_option_names(task, opt)},
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists...)."""
    return json.loads(json.dumps(value, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value)
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + '...'
    return text


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a cache's record and a run, one phrase per item.

    Both are dicts with the keys of :func:`build_fingerprint` (``temperature``,
    ``teacher``, ``dictionary``, ``vectorization``, ``task``); keys missing from
    ``current`` are not compared.
    """
    out = []
    if 'temperature' in current and float(recorded['temperature']) != float(
        current['temperature']
    ):
        out.append(
            f"--distill-temperature is {current['temperature']} but the cache holds "
            f"the teacher at T={recorded['temperature']} (a top-k cache cannot be "
            're-tempered)'
        )
    if 'teacher' in current:
        names = {
            'model_sha256': 'the teacher model file changed',
            'model_size': 'the teacher model file changed',
            'opt_sha256': "the teacher's .opt changed",
        }
        seen = set()
        for key, phrase in names.items():
            if recorded['teacher'].get(key) != current['teacher'].get(key):
                if phrase not in seen:
                    seen.add(phrase)
                    out.append(
                        f'{phrase} ({key} {_short(recorded["teacher"].get(key))} in '
                        f'the cache, {_short(current["teacher"].get(key))} now)'
                    )
    if 'dictionary' in current:
        rec, cur = recorded['dictionary'], current['dictionary']
        for key in sorted(set(rec['sha256']) | set(cur['sha256'])):
            if rec['sha256'].get(key) != cur['sha256'].get(key):
                out.append(f'the {key.replace("_", " ")} content differs')
        out.extend(_option_differences(rec['options'], cur['options']))
    if 'vectorization' in current:
        out.extend(
            _option_differences(recorded['vectorization'], current['vectorization'])
        )
    if 'task' in current:
        if recorded['task']['task'] != current['task']['task']:
            out.append(
                f"the task is {current['task']['task']!r} but the cache was built for "
                f"{recorded['task']['task']!r}"
            )
        else:
            out.extend(
                _option_differences(
                    recorded['task']['options'], current['task']['options']
                )
            )
    return out


def _option_differences(recorded: dict, current: dict) -> list[str]:
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if a != b:
            out.append(
                f"--{key.replace('_', '-')} is {json.dumps(b)} here but "
                f'{json.dumps(a)} in the cache'
            )
    return out
