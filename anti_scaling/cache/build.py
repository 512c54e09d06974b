"""Writing a teacher-output cache: in chunks, resumable, published whole or not at all.

:class:`CacheWriter` collects per-example entries into ``DIR.partial/``. Every
``chunk_examples`` examples (at a batch boundary) it writes a chunk folder and
then, atomically, ``progress.json`` (the build's fingerprint, the chunks and
the number of batches done). A rerun of the same build resumes after the last
recorded chunk; a rerun with another fingerprint (teacher, dictionary, options,
task, k, dtype, batch size...) discards the partial build with a message.
:meth:`CacheWriter.finish` merges the chunks (sorted by key, duplicates kept
once), writes the arrays and ``meta.json`` into ``DIR.partial/final``, opens it
with full verification and only then renames it to ``DIR``. An existing
``DIR`` is replaced only with ``overwrite``. So ``DIR`` always holds a complete,
verified cache or nothing; readers refuse ``DIR.partial``.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any

import numpy as np
import parlai.utils.logging as logging

from ..errors import DistillationError
from ..fileio import atomic_write
from . import fingerprint as fp
from .keys import KEY_BYTES, expand_ranges
from .store import (
    ARRAY_FILES,
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    TeacherOutputCache,
)

PROGRESS_FILE = 'progress.json'
CHUNKS_DIR = 'chunks'
FINAL_DIR = 'final'
CHUNK_ARRAYS = ('keys', 'lengths', 'ids', 'logprobs', 'rest')


def check_destination(path: str, overwrite: bool) -> str:
    """Normalise ``path`` and refuse an existing cache unless ``overwrite``."""
    path = os.path.normpath(path)
    if os.path.exists(path) and not overwrite:
        raise DistillationError(
            f'{path} already exists: pass --overwrite true to rebuild it (the old '
            'cache is replaced only once the new one is complete)'
        )
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise DistillationError(f'{path} exists and is not a folder')
        if os.listdir(path) and not _is_cache(path):
            raise DistillationError(
                f'{path} is a folder that holds no teacher cache: refusing to replace '
                'it, even with --overwrite (give another --cache-dir)'
            )
    return path


def _is_cache(path: str) -> bool:
    """Whether ``path`` holds a teacher cache's ``meta.json`` (readable or not)."""
    try:
        with open(os.path.join(path, META_FILE), encoding='utf-8') as fh:
            return FORMAT_NAME in fh.read(1 << 16)
    except OSError:
        return False


class CacheWriter:
    """Chunked, resumable writer of one cache (see the module docstring).

    ``fingerprint`` is everything the cache's content depends on (it decides
    whether a partial build may be resumed); ``meta`` is written to
    ``meta.json`` with the counts and file records added.
    """

    def __init__(
        self,
        path: str,
        fingerprint: dict[str, Any],
        top_k: int,
        id_dtype: str,
        logprob_dtype: str,
        chunk_examples: int = 10000,
        overwrite: bool = False,
    ):
        self.path = check_destination(path, overwrite)
        self.partial = self.path + '.partial'
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.top_k = int(top_k)
        self.id_dtype = np.dtype(id_dtype)
        self.logprob_dtype = np.dtype(logprob_dtype)
        self.chunk_examples = max(1, int(chunk_examples))
        self.overwrite = overwrite
        self.chunks: list[dict[str, Any]] = []
        self.batches_done = 0
        self._pending: dict[str, list[np.ndarray]] = {n: [] for n in CHUNK_ARRAYS}
        self._pending_examples = 0

    # starting -----------------------------------------------------------------

    def start(self) -> int:
        """Prepare ``DIR.partial``; returns how many batches a resumed build skips."""
        progress = self._read_progress()
        if progress is not None:
            reason = self._resume_problem(progress)
            if reason is None:
                self.chunks = progress['chunks']
                self.batches_done = int(progress['batches_done'])
                self._remove_unrecorded_chunks()
                logging.info(
                    f'Resuming the interrupted cache build in {self.partial}: '
                    f'{len(self.chunks)} chunks, {self.batches_done} batches done'
                )
                return self.batches_done
            logging.warning(f'Discarding the partial cache build {self.partial}: {reason}')
        elif os.path.exists(self.partial):
            logging.warning(
                f'Discarding the partial cache build {self.partial}: it has no '
                'readable progress record'
            )
        if os.path.exists(self.partial):
            shutil.rmtree(self.partial)
        os.makedirs(os.path.join(self.partial, CHUNKS_DIR))
        self._write_progress()
        return 0

    def _read_progress(self) -> dict[str, Any] | None:
        file = os.path.join(self.partial, PROGRESS_FILE)
        try:
            with open(file, encoding='utf-8') as fh:
                progress = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(progress, dict) or not {
            'fingerprint',
            'chunks',
            'batches_done',
        } <= set(progress):
            return None
        return progress

    def _resume_problem(self, progress: dict[str, Any]) -> str | None:
        """Why a recorded partial build cannot be resumed (None if it can)."""
        if progress['fingerprint'] != self.fingerprint:
            changed = sorted(
                k
                for k in set(progress['fingerprint']) | set(self.fingerprint)
                if progress['fingerprint'].get(k) != self.fingerprint.get(k)
            )
            return f'it was started with other settings ({", ".join(changed)} differ)'
        for chunk in progress['chunks']:
            folder = os.path.join(self.partial, CHUNKS_DIR, chunk['name'])
            for name, size in chunk['files'].items():
                file = os.path.join(folder, name)
                if not os.path.isfile(file) or os.path.getsize(file) != size:
                    return f'chunk file {file} is missing or truncated'
        return None

    def _remove_unrecorded_chunks(self) -> None:
        """Chunks written after the last progress record are redone, so drop them."""
        recorded = {chunk['name'] for chunk in self.chunks}
        folder = os.path.join(self.partial, CHUNKS_DIR)
        for name in os.listdir(folder):
            if name not in recorded:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)

    def _write_progress(self) -> None:
        progress = {
            'fingerprint': self.fingerprint,
            'chunks': self.chunks,
            'batches_done': self.batches_done,
        }
        atomic_write(
            os.path.join(self.partial, PROGRESS_FILE),
            lambda fh: json.dump(progress, fh, indent=1),
        )

    # adding -------------------------------------------------------------------

    def add(
        self,
        keys: np.ndarray,
        lengths: np.ndarray,
        ids: np.ndarray,
        logprobs: np.ndarray,
        rest: np.ndarray,
    ) -> None:
        """Add examples: keys ``[n, 16]``, lengths ``[n]`` and their ``sum(lengths)``
        token rows (``ids``/``logprobs`` ``[rows, k]``, ``rest`` ``[rows]``)."""
        n, rows = len(keys), int(np.sum(lengths))
        if keys.shape != (n, KEY_BYTES) or lengths.shape != (n,):
            raise ValueError('CacheWriter.add: keys must be [n, 16] and lengths [n]')
        if ids.shape != (rows, self.top_k) or logprobs.shape != ids.shape:
            raise ValueError(
                f'CacheWriter.add: ids/logprobs must be [{rows}, {self.top_k}], got '
                f'{ids.shape} and {logprobs.shape}'
            )
        if rest.shape != (rows,):
            raise ValueError(f'CacheWriter.add: rest must be [{rows}]')
        self._pending['keys'].append(np.asarray(keys, dtype=np.uint8))
        self._pending['lengths'].append(np.asarray(lengths, dtype=np.int32))
        self._pending['ids'].append(np.asarray(ids).astype(self.id_dtype))
        self._pending['logprobs'].append(
            np.asarray(logprobs, dtype=np.float32)
            .clip(-65504.0, 0.0)
            .astype(self.logprob_dtype)
        )
        self._pending['rest'].append(np.asarray(rest, dtype=np.float32).clip(0.0, 1.0))
        self._pending_examples += n

    def batch_done(self) -> None:
        """Mark the end of a batch: writes a chunk once enough examples are pending."""
        self.batches_done += 1
        if self._pending_examples >= self.chunk_examples:
            self._flush()

    def _flush(self) -> None:
        if self._pending_examples == 0:
            self._write_progress()
            return
        name = f'{len(self.chunks):05d}'
        folder = os.path.join(self.partial, CHUNKS_DIR, name)
        tmp = folder + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        files = {}
        for array_name, parts in self._pending.items():
            file = os.path.join(tmp, f'{array_name}.npy')
            np.save(file, np.concatenate(parts))
            files[f'{array_name}.npy'] = os.path.getsize(file)
        os.replace(tmp, folder)
        self.chunks.append(
            {
                'name': name,
                'examples': self._pending_examples,
                'tokens': int(sum(int(p.sum()) for p in self._pending['lengths'])),
                'files': files,
            }
        )
        self._pending = {n: [] for n in CHUNK_ARRAYS}
        self._pending_examples = 0
        self._write_progress()
        logging.info(
            f'Cache chunk {name} written ({self.chunks[-1]["examples"]} examples, '
            f'{self.batches_done} batches done)'
        )
        self._chunk_written(len(self.chunks) - 1)

    def _chunk_written(self, index: int) -> None:
        """Called after each chunk is recorded (a hook for tests)."""

    # finishing ----------------------------------------------------------------

    def finish(self, meta: dict[str, Any]) -> TeacherOutputCache:
        """Merge the chunks, write and verify the cache, publish it as ``DIR``."""
        self._flush()
        if not self.chunks:
            raise DistillationError(
                'the task yielded no example with a context and a label: nothing to '
                f'cache (the partial build {self.partial} is kept)'
            )
        final = os.path.join(self.partial, FINAL_DIR)
        shutil.rmtree(final, ignore_errors=True)
        os.makedirs(final)
        counts = self._merge(final)
        files = {
            f'{n}.npy': {
                'size': os.path.getsize(os.path.join(final, f'{n}.npy')),
                'sha256': fp.file_sha256(os.path.join(final, f'{n}.npy')),
            }
            for n in ARRAY_FILES
        }
        full_meta = {
            'format': FORMAT_NAME,
            'version': FORMAT_VERSION,
            **meta,
            'top_k': self.top_k,
            'id_dtype': str(self.id_dtype),
            'logprob_dtype': str(self.logprob_dtype),
            **counts,
            'files': files,
            'created': datetime.datetime.now().isoformat(timespec='seconds'),
        }
        atomic_write(
            os.path.join(final, META_FILE),
            lambda fh: json.dump(full_meta, fh, indent=1, sort_keys=True),
        )
        TeacherOutputCache.open(final, verify=True)
        self._publish(final)
        shutil.rmtree(self.partial, ignore_errors=True)
        return TeacherOutputCache.open(self.path)

    def _merge(self, final: str) -> dict[str, int]:
        chunk_arrays = []
        for chunk in self.chunks:
            folder = os.path.join(self.partial, CHUNKS_DIR, chunk['name'])
            chunk_arrays.append(
                {
                    n: np.load(os.path.join(folder, f'{n}.npy'), mmap_mode='r')
                    for n in CHUNK_ARRAYS
                }
            )
        keys = np.concatenate([np.asarray(c['keys']) for c in chunk_arrays])
        lengths = np.concatenate(
            [np.asarray(c['lengths'], dtype=np.int64) for c in chunk_arrays]
        )
        chunk_of = np.concatenate(
            [np.full(len(c['keys']), i) for i, c in enumerate(chunk_arrays)]
        )
        local_start = np.concatenate(
            [
                np.cumsum(np.asarray(c['lengths'], dtype=np.int64))
                - np.asarray(c['lengths'], dtype=np.int64)
                for c in chunk_arrays
            ]
        )
        # sort bytewise; stable, so the first occurrence of a duplicate comes first
        order = np.argsort(
            np.ascontiguousarray(keys).view('V16').ravel(), kind='stable'
        )
        sorted_keys = keys[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
        selected = order[first]
        out_lengths = lengths[selected]
        out_offsets = np.cumsum(out_lengths) - out_lengths
        total = int(out_lengths.sum())
        np.save(os.path.join(final, 'keys.npy'), sorted_keys[first])
        np.save(os.path.join(final, 'offsets.npy'), out_offsets.astype(np.int64))
        np.save(os.path.join(final, 'lengths.npy'), out_lengths.astype(np.int32))
        outputs = {
            'ids': np.lib.format.open_memmap(
                os.path.join(final, 'ids.npy'),
                mode='w+',
                dtype=self.id_dtype,
                shape=(total, self.top_k),
            ),
            'logprobs': np.lib.format.open_memmap(
                os.path.join(final, 'logprobs.npy'),
                mode='w+',
                dtype=self.logprob_dtype,
                shape=(total, self.top_k),
            ),
            'rest': np.lib.format.open_memmap(
                os.path.join(final, 'rest.npy'),
                mode='w+',
                dtype=np.float32,
                shape=(total,),
            ),
        }
        for c, arrays in enumerate(chunk_arrays):
            here = np.nonzero(chunk_of[selected] == c)[0]
            if not len(here):
                continue
            dst = expand_ranges(out_offsets[here], out_lengths[here])
            src = expand_ranges(local_start[selected[here]], out_lengths[here])
            for name, out in outputs.items():
                out[dst] = arrays[name][src]
        for out in outputs.values():
            out.flush()
        del outputs
        return {
            'examples': int(len(selected)),
            'tokens': total,
            'duplicates': int(len(order) - len(selected)),
        }

    def _publish(self, final: str) -> None:
        old = None
        if os.path.exists(self.path):
            if not self.overwrite:
                raise DistillationError(
                    f'{self.path} appeared during the build: pass --overwrite true to '
                    f'replace it (the new cache is kept in {final})'
                )
            old = f'{self.path}.old-{os.getpid()}'
            os.replace(self.path, old)
        os.replace(final, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
