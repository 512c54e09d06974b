"""Example keys of a teacher-output cache, and the arithmetic of its arrays.

An example is identified by the exact ids the agent feeds the model: the key is
the first 16 bytes of the SHA-256 of its non-padding context ids and label ids
(:func:`example_key`), so shuffled, rebatched and multi-epoch training find
every entry and duplicate examples share one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

KEY_BYTES = 16


class CachedTargets(NamedTuple):
    """Cached teacher targets aligned with a batch's label positions.

    ``ids`` ``[B, T, k]`` long, ``logprobs`` ``[B, T, k]`` float32, ``rest``
    ``[B, T]`` float32 (see the module docstring), ``found`` ``[B]`` bool (rows
    that are in the cache). Padding positions and rows not found hold ids 0,
    log-probabilities ``-log k`` and rest 0: finite, and to be masked out.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor
    found: torch.Tensor


def example_key(context_ids: Sequence[int], label_ids: Sequence[int]) -> bytes:
    """The 16-byte key of one example: SHA-256 of its context and label ids.

    The ids are hashed as little-endian int64 after the context length, so no two
    different (context, label) pairs share a key except by a SHA-256 collision.
    """
    context = np.asarray(context_ids, dtype='<i8').ravel()
    label = np.asarray(label_ids, dtype='<i8').ravel()
    digest = hashlib.sha256()
    digest.update(len(context).to_bytes(8, 'little'))
    digest.update(context.tobytes())
    digest.update(label.tobytes())
    return digest.digest()[:KEY_BYTES]


def batch_keys(
    text_vec: torch.Tensor, label_vec: torch.Tensor, null_idx: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``[B, 16]`` uint8 of a padded batch, and its label mask ``[B, T]``.

    Padding (``null_idx``) is dropped from contexts and labels before hashing.
    """
    text = text_vec.detach().cpu().numpy()
    labels = label_vec.detach().cpu().numpy()
    label_mask = labels != null_idx
    keys = np.empty((labels.shape[0], KEY_BYTES), dtype=np.uint8)
    for row in range(labels.shape[0]):
        context = text[row][text[row] != null_idx]
        keys[row] = np.frombuffer(
            example_key(context, labels[row][label_mask[row]]), dtype=np.uint8
        )
    return keys, label_mask


def bytes_per_label_token(top_k: int, id_dtype: str, logprob_dtype: str) -> int:
    """Bytes of the token arrays per label token (examples add 28 bytes each)."""
    return top_k * (np.dtype(id_dtype).itemsize + np.dtype(logprob_dtype).itemsize) + 4


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(
        total, dtype=np.int64
    )


def keys_sorted_unique(keys: np.ndarray) -> bool:
    """Whether ``[N, 16]`` uint8 keys are strictly increasing (bytewise)."""
    if len(keys) < 2:
        return True
    pairs = np.ascontiguousarray(keys).view([('hi', '>u8'), ('lo', '>u8')]).ravel()
    hi, lo = pairs['hi'], pairs['lo']
    return bool(np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))))
