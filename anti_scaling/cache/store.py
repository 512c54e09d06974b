"""The on-disk format of a teacher-output cache, and reading it.

A cache is a folder of memory-mappable ``.npy`` files and a ``meta.json``::

    keys.npy      uint8   [N, 16]   example keys, sorted (bytewise), unique
    offsets.npy   int64   [N]       first row of each example in the token arrays
    lengths.npy   int32   [N]       number of label tokens of each example
    ids.npy       uint16 or int32 [M, k]  the teacher's k most probable token ids
                                    per label token, most probable first (uint16
                                    whenever the vocabulary fits: half the bytes)
    logprobs.npy  float16 or float32 [M, k]  their log-probabilities at the
                                    temperature T of meta.json (clamped >= -65504)
    rest.npy      float32 [M]       the teacher's probability mass outside the
                                    k tokens, 1 - sum(p_k), computed as a
                                    logsumexp over the other V - k tokens (exact)

``N`` examples, ``M`` label tokens in total. An example is identified by the
exact ids the agent feeds the model: the key is the first 16 bytes of the
SHA-256 of its non-padding context ids and label ids (:func:`example_key`), so
shuffled, rebatched and multi-epoch training find every entry and duplicate
examples share one. Row ``offsets[i] + t`` holds label token ``t`` of example
``i`` (padding excluded, the end token included).

Size: each label token costs ``k * (id bytes + logprob bytes) + 4`` bytes, each
example 28 more (key, offset, length); see :func:`bytes_per_label_token`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DistillationError
from . import fingerprint as fp
from .keys import (
    KEY_BYTES,
    CachedTargets,
    batch_keys,
    example_key,
    expand_ranges,
    keys_sorted_unique,
)

FORMAT_NAME = 'anti_scaling.teacher_cache'
FORMAT_VERSION = 1
META_FILE = 'meta.json'
LOGPROB_DTYPES = ('float16', 'float32')
ID_DTYPES = ('uint16', 'int32')
# name -> (allowed dtypes, trailing shape kind): 'k' = [rows, k], '16' = [N, 16]
ARRAY_FILES = ('keys', 'offsets', 'lengths', 'ids', 'logprobs', 'rest')
REQUIRED_META = (
    'format',
    'version',
    'top_k',
    'temperature',
    'vocab_size',
    'id_dtype',
    'logprob_dtype',
    'examples',
    'tokens',
    'teacher',
    'dictionary',
    'vectorization',
    'task',
    'files',
)
BUILD_COMMAND = 'python -m anti_scaling.scripts.cache_teacher_outputs'


def _corrupt(path: str, what: str) -> DistillationError:
    return DistillationError(
        f'teacher cache {path} is corrupt: {what}; rebuild it ({BUILD_COMMAND} ... '
        '--overwrite)'
    )


class TeacherOutputCache:
    """A read-only, memory-mapped teacher-output cache (see the module docstring).

    Open with :meth:`open`; check it against a run with :meth:`check_compatible`;
    read targets for a batch with :meth:`lookup`. Safe to share between the
    agent copies of one process (nothing is written).
    """

    def __init__(self, path: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path = path
        self.meta = meta
        self.keys = arrays['keys']
        self.offsets = arrays['offsets']
        self.lengths = arrays['lengths']
        self.ids = arrays['ids']
        self.logprobs = arrays['logprobs']
        self.rest = arrays['rest']
        self._search_keys = np.ascontiguousarray(self.keys).view('V16').ravel()

    # opening ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, verify: bool = False) -> TeacherOutputCache:
        """Open and validate the cache in folder ``path``.

        Checks the format, the version, every array's file size, dtype and shape
        against ``meta.json``, that keys are sorted and unique, and that offsets
        and lengths tile the token arrays. ``verify=True`` also checks each file's
        SHA-256 (reads everything). Any problem raises a one-line
        :class:`DistillationError` naming the file; an unfinished build (only
        ``path.partial`` exists) is refused too.
        """
        path = os.path.normpath(path)
        if not os.path.isdir(path):
            if os.path.isdir(path + '.partial'):
                raise DistillationError(
                    f'teacher cache {path} is not finished ({path}.partial holds an '
                    'interrupted build): rerun the same build command to resume it'
                )
            raise DistillationError(
                f'teacher cache not found: {path} (build it with {BUILD_COMMAND})'
            )
        meta_path = os.path.join(path, META_FILE)
        if not os.path.isfile(meta_path):
            raise _corrupt(path, f'{meta_path} is missing')
        try:
            with open(meta_path, encoding='utf-8') as fh:
                meta = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(
                path, f'{meta_path} is unreadable ({type(e).__name__})'
            ) from None
        cls._check_meta(path, meta_path, meta)
        arrays = {}
        for name in ARRAY_FILES:
            arrays[name] = cls._load_array(path, meta, name, verify)
        cls._check_arrays(path, meta, arrays)
        return cls(path, meta, arrays)

    @staticmethod
    def _check_meta(path: str, meta_path: str, meta: Any) -> None:
        if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
            raise _corrupt(path, f'{meta_path} is not a teacher-cache description')
        if meta.get('version') != FORMAT_VERSION:
            raise DistillationError(
                f'teacher cache {path} has format version {meta.get("version")}, '
                f'this anti_scaling reads version {FORMAT_VERSION}: rebuild it '
                f'({BUILD_COMMAND} ... --overwrite)'
            )
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise _corrupt(path, f'{meta_path} lacks {", ".join(missing)}')
        try:
            ok = (
                int(meta['top_k']) >= 1
                and float(meta['temperature']) > 0
                and int(meta['vocab_size']) >= int(meta['top_k'])
                and meta['id_dtype'] in ID_DTYPES
                and meta['logprob_dtype'] in LOGPROB_DTYPES
                and int(meta['examples']) >= 1
                and int(meta['tokens']) >= int(meta['examples'])
                and all(
                    isinstance(meta['files'].get(f'{n}.npy'), dict) for n in ARRAY_FILES
                )
            )
        except (TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise _corrupt(path, f'{meta_path} holds invalid values')

    @staticmethod
    def _load_array(path: str, meta: dict, name: str, verify: bool) -> np.ndarray:
        file = os.path.join(path, f'{name}.npy')
        record = meta['files'][f'{name}.npy']
        if not os.path.isfile(file):
            raise _corrupt(path, f'{file} is missing')
        size = os.path.getsize(file)
        if size != record.get('size'):
            raise _corrupt(
                path, f'{file} has {size} bytes, meta.json says {record.get("size")}'
            )
        if verify and fp.file_sha256(file) != record.get('sha256'):
            raise _corrupt(path, f'{file} does not match its SHA-256 in meta.json')
        try:
            array = np.load(file, mmap_mode='r', allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise _corrupt(path, f'{file} is unreadable ({type(e).__name__})') from None
        n, m, k = int(meta['examples']), int(meta['tokens']), int(meta['top_k'])
        expected = {
            'keys': ('uint8', (n, KEY_BYTES)),
            'offsets': ('int64', (n,)),
            'lengths': ('int32', (n,)),
            'ids': (meta['id_dtype'], (m, k)),
            'logprobs': (meta['logprob_dtype'], (m, k)),
            'rest': ('float32', (m,)),
        }[name]
        if str(array.dtype) != expected[0] or tuple(array.shape) != expected[1]:
            raise _corrupt(
                path,
                f'{file} is {array.dtype} {tuple(array.shape)}, expected '
                f'{expected[0]} {expected[1]}',
            )
        return array

    @staticmethod
    def _check_arrays(path: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        lengths = np.asarray(arrays['lengths'], dtype=np.int64)
        offsets = np.asarray(arrays['offsets'])
        if lengths.min() < 1 or int(lengths.sum()) != int(meta['tokens']):
            raise _corrupt(path, 'lengths.npy does not tile the token arrays')
        if offsets[0] != 0 or np.any(offsets[1:] != np.cumsum(lengths)[:-1]):
            raise _corrupt(path, 'offsets.npy does not match lengths.npy')
        if not keys_sorted_unique(arrays['keys']):
            raise _corrupt(path, 'keys.npy is not sorted and unique')

    # properties ---------------------------------------------------------------

    @property
    def top_k(self) -> int:
        return int(self.meta['top_k'])

    @property
    def temperature(self) -> float:
        return float(self.meta['temperature'])

    @property
    def vocab_size(self) -> int:
        return int(self.meta['vocab_size'])

    @property
    def num_examples(self) -> int:
        return int(self.meta['examples'])

    @property
    def num_tokens(self) -> int:
        return int(self.meta['tokens'])

    def size_bytes(self) -> int:
        """Bytes of the cache's array files."""
        return sum(int(r['size']) for r in self.meta['files'].values())

    def describe(self) -> str:
        """One line: what the cache holds and what it was built for."""
        task = self.meta['task']
        return (
            f'{self.path}: {self.num_examples} examples, {self.num_tokens} label '
            f'tokens, top-{self.top_k} at T={self.temperature} '
            f"({self.meta['logprob_dtype']}), task {task['task']!r} "
            f"({', '.join(self.meta.get('splits', []))})"
        )

    # checking -----------------------------------------------------------------

    def check_compatible(
        self,
        teacher_model_file: str,
        dict_file: str | None,
        opt: dict[str, Any],
        vocab_size: int | None = None,
    ) -> None:
        """Refuse (one-line :class:`DistillationError`) a cache that does not fit a run.

        Compared: the teacher model file and its ``.opt`` (SHA-256, size), the
        dictionary file (SHA-256) and tokenisation options, the effective text
        and label truncation and history options, the task and its options (all
        read from ``opt``), ``opt['distill_temperature']`` (default 1) with the
        cache's temperature, and ``vocab_size`` (the student's output size) when
        given. The message lists every difference.
        """
        current = {
            'temperature': float(opt.get('distill_temperature') or 1.0),
            'teacher': fp.teacher_fingerprint(teacher_model_file),
            'dictionary': fp.dictionary_fingerprint(dict_file, opt),
            'vectorization': fp.vectorization_fingerprint(opt),
        }
        if opt.get('task'):
            current['task'] = fp.task_fingerprint(opt['task'], opt)
        problems = fp.differences(self.meta, current)
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            problems.append(
                f'the student predicts {vocab_size} tokens but the cache was built '
                f'for a vocabulary of {self.vocab_size}'
            )
        if problems:
            raise DistillationError(
                f'teacher cache {self.path} does not match this run: '
                + '; '.join(problems)
                + f' (rebuild it with {BUILD_COMMAND} ... --overwrite, or drop the '
                'cache flag)'
            )

    # reading ------------------------------------------------------------------

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each ``[B, 16]`` key in the cache, or -1 where it is missing."""
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self._search_keys, keys.view('V16').ravel())
        pos = np.minimum(pos, len(self.keys) - 1)
        hit = np.all(np.asarray(self.keys[pos]) == keys, axis=1)
        return np.where(hit, pos, -1).astype(np.int64)

    def entry(
        self, context_ids: Sequence[int], label_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(ids [n, k], logprobs [n, k], rest [n])`` of one example, or None."""
        row = int(
            self.find(
                np.frombuffer(example_key(context_ids, label_ids), np.uint8)[None]
            )[0]
        )
        if row < 0:
            return None
        start, length = int(self.offsets[row]), int(self.lengths[row])
        stop = start + length
        return (
            np.asarray(self.ids[start:stop]),
            np.asarray(self.logprobs[start:stop]),
            np.asarray(self.rest[start:stop]),
        )

    def lookup(
        self,
        text_vec: torch.Tensor,
        label_vec: torch.Tensor,
        null_idx: int,
        allow_missing: bool = False,
    ) -> CachedTargets:
        """The cached targets of a padded batch, aligned with its label positions.

        ``text_vec`` ``[B, S]`` and ``label_vec`` ``[B, T]`` are the batch's
        (padded with ``null_idx``) as the agent feeds its model. Returns
        :class:`CachedTargets` on ``label_vec``'s device. Raises a one-line
        :class:`DistillationError` when an example is missing (unless
        ``allow_missing``: then ``found`` says which rows were found; mask the
        others out) or when an entry does not fit its label.
        """
        if text_vec is None or label_vec is None:
            raise DistillationError(
                'the teacher cache needs batches with a context and a label'
            )
        keys, label_mask = batch_keys(text_vec, label_vec, null_idx)
        rows = self.find(keys)
        found = rows >= 0
        if not allow_missing and not found.all():
            missing = int((~found).sum())
            task = self.meta['task']['task']
            splits = ', '.join(self.meta.get('splits', [])) or '?'
            raise DistillationError(
                f'{missing} of {len(rows)} examples of this batch are not in the '
                f'teacher cache {self.path} (built for task {task!r}, split {splits}, '
                f'{self.num_examples} examples): build the cache for the data and '
                'text options of this run'
            )
        hit_rows = rows[found]
        lengths = np.asarray(self.lengths[hit_rows], dtype=np.int64)
        wanted = label_mask[found].sum(axis=1)
        if np.any(lengths != wanted):
            raise _corrupt(
                self.path,
                'an entry has a different number of label tokens than its key says',
            )
        index = expand_ranges(np.asarray(self.offsets[hit_rows]), lengths)
        batch, length = label_mask.shape
        k = self.top_k
        ids = np.zeros((batch, length, k), dtype=np.int64)
        logprobs = np.full((batch, length, k), -math.log(k), dtype=np.float32)
        rest = np.zeros((batch, length), dtype=np.float32)
        selected = label_mask & found[:, None]
        if len(index):
            flat_ids = np.asarray(self.ids[index], dtype=np.int64)
            if flat_ids.max() >= self.vocab_size:
                raise _corrupt(self.path, 'ids.npy holds ids beyond the vocabulary')
            ids[selected] = flat_ids
            logprobs[selected] = np.asarray(self.logprobs[index], dtype=np.float32)
            rest[selected] = np.asarray(self.rest[index], dtype=np.float32)
        device = label_vec.device
        return CachedTargets(
            torch.from_numpy(ids).to(device),
            torch.from_numpy(logprobs).to(device),
            torch.from_numpy(rest).to(device),
            torch.from_numpy(found).to(device),
        )


def open_for_run(
    path: str,
    teacher_model_file: str,
    dict_file: str | None,
    opt: dict[str, Any],
    vocab_size: int | None = None,
) -> TeacherOutputCache:
    """:meth:`TeacherOutputCache.open` then :meth:`~TeacherOutputCache.check_compatible`.

    One call for an agent at start-up: the cache in ``path`` is returned only if it
    is intact and was built from this teacher, dictionary, text options, task
    and temperature; otherwise a one-line :class:`DistillationError` says why.
    """
    cache = TeacherOutputCache.open(path)
    cache.check_compatible(teacher_model_file, dict_file, opt, vocab_size=vocab_size)
    return cache
