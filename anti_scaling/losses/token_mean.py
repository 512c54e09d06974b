"""Means over real tokens kept as per-example sums and counts, and the float32 rule.

Every objective returns a :class:`TokenMean`, so that the batch value is
``sum(total) / sum(count)`` (a mean over the real tokens, or real attention
pairs, of the whole batch) and ParlAI can aggregate the same numbers exactly
across batches. Every objective computes in float32 whatever the dtype of its
inputs (:func:`as_float32`; float64 stays float64): half-precision sums of
squares overflow.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenMean(NamedTuple):
    """A mean over tokens kept as per-example sums and counts.

        ``total[b]`` is the sum of the per-token (or per-pair) values of example ``b``
        and ``count[b]`` how many tokens (pairs) they cover; both float32 (float64 for
    float64 inputs).
    """

    total: torch.Tensor
    count: torch.Tensor

    def mean(self) -> torch.Tensor:
        """``sum(total) / sum(count)``; zero when nothing was counted."""
        return self.total.sum() / self.count.sum().clamp(min=1)


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in at least float32: half precision (fp16, bf16) and integer or
    bool values are cast to float32 (differentiably), float64 is kept."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def per_example(values: torch.Tensor, mask: torch.Tensor) -> TokenMean:
    """Sum ``values`` (one per true entry of ``mask``, in row-major order) per example.

    ``mask`` is ``[B, ...]``; the sums and counts are float32.
    """
    values = as_float32(values)
    batch = mask.size(0)
    example = mask.nonzero(as_tuple=True)[0]
    total = torch.zeros(batch, dtype=values.dtype, device=values.device)
    total = total.index_add(0, example, values)
    count = mask.reshape(batch, -1).sum(dim=1).to(values.dtype)
    return TokenMean(total, count)
