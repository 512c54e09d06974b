"""The output layer and the losses on its logits, fused and taken chunk by chunk.

A model's output layer turns ``N`` decoder states ``h`` ``[N, D]`` into logits
``z = h W^T + b`` ``[N, V]``; the task loss and the prediction divergences then
each keep ``[N, V]`` float32 tensors (logits, log-probabilities, the teacher's
probabilities, their gradients) for the backward pass. :func:`fused_output_loss`
never holds more than ``chunk_size`` rows of them (the idea of Liger-Kernel's
fused linear cross-entropy, in plain torch, so it runs on CPUs too)::

    for each chunk c of rows:   z_c = h_c W^T + b        (one matrix product, in h's dtype)
                                L_c = loss(float32(z_c))  (a scalar; per-row values kept)
                                g_c = dL_c / dz_c         (autograd over the chunk only)
                                dL/dh_c = g_c W,  dL/dW += g_c^T h_c,  dL/db += sum_rows g_c
    loss = sum_c L_c

The gradients are made in the forward pass and kept (float32, ``[N, D]`` and
``[V, D]``): the backward pass only scales them by the incoming gradient. So
the function returns one scalar, the weighted sum of every loss on the
logits, whose gradient is exact whatever multiplies it (``--fp16``'s loss
scaling included); the per-row values (for metrics) come without gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: ``chunk_loss(z, start, end) -> (scalar, (per-row tensors...))``: the weighted
#: loss of rows ``start:end`` from their float32 logits ``z`` ``[end - start, V]``
#: (which require grad), and per-row values to return (no gradient).
ChunkLoss = Callable[
    [torch.Tensor, int, int], tuple[torch.Tensor, tuple[torch.Tensor, ...]]
]


#: Rows whose logits exist at once unless told otherwise: at a vocabulary of
#: 50,000, 51 MB per float32 ``[rows, V]`` tensor.
DEFAULT_CHUNK_SIZE = 256


def check_chunk_size(chunk_size: object) -> int:
    """``chunk_size`` as a positive ``int``; ``ValueError`` otherwise."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(f'chunk size must be a positive integer, got {chunk_size!r}')
    if chunk_size <= 0:
        raise ValueError(f'chunk size must be a positive integer, got {chunk_size}')
    return chunk_size


def masked_logit(dtype: torch.dtype) -> float:
    """The logit ParlAI writes at a token it never predicts: ``-65504`` in float16,
    ``-1e20`` otherwise (``parlai.utils.torch.neginf``)."""
    return -65504.0 if dtype == torch.float16 else -1e20


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _FusedOutputLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # noqa: PLR0913
        ctx,  # noqa: ANN001
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        chunk_loss: ChunkLoss,
        chunk_size: int,
        masked_column: int | None,
    ):
        acc = _accumulator_dtype(hidden.dtype)
        rows = hidden.size(0)
        # only the gradients some input needs (a frozen output embedding needs none)
        grad_hidden, grad_weight, grad_bias = (
            (
                torch.zeros(x.shape, dtype=acc, device=x.device)
                if x is not None and x.requires_grad
                else None
            )
            for x in (hidden, weight, bias)
        )
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        pieces: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, max(rows, 1), chunk_size):  # one empty chunk if N = 0
            end = min(rows, start + chunk_size)
            h = hidden[start:end]
            logits = F.linear(h, weight, bias)
            if masked_column is not None:
                logits[:, masked_column] = masked_logit(logits.dtype)
            z = logits.to(_accumulator_dtype(logits.dtype)).requires_grad_()
            with torch.enable_grad():
                value, per_row = chunk_loss(z, start, end)
                (grad_z,) = (
                    torch.autograd.grad(value, z)
                    if value.requires_grad
                    else (torch.zeros_like(z),)
                )
            loss += value.detach()
            pieces.append((*(t.detach() for t in per_row), logits.max(dim=-1)[1]))
            if masked_column is not None:
                grad_z[:, masked_column] = 0
            grad_logits = grad_z.to(logits.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits.mm(weight.to(logits.dtype)).to(acc)
            if grad_weight is not None:
                grad_weight += grad_logits.t().mm(h.to(logits.dtype)).to(acc)
            if grad_bias is not None:
                grad_bias += grad_z.sum(dim=0).to(acc)
            del logits, z, grad_z, grad_logits, value
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        columns = tuple(torch.cat(column) for column in zip(*pieces, strict=True))
        ctx.mark_non_differentiable(*columns)
        return (loss, *columns)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):  # noqa: ANN001, ANN002, ANN205
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        dtypes = ctx.dtypes
        out = []
        for i, (grad, dtype) in enumerate(
            zip((grad_hidden, grad_weight, grad_bias), dtypes, strict=True)
        ):
            if grad is None or not ctx.needs_input_grad[i]:
                out.append(None)
            else:
                out.append((grad * grad_loss.to(grad.dtype)).to(dtype))
        return (*out, None, None, None)


def fused_output_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    chunk_loss: ChunkLoss,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    masked_column: int | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """``sum_c chunk_loss(z_c)`` over chunks of ``chunk_size`` rows of the logits.

    ``z = hidden W^T + b`` (``hidden`` ``[N, D]``, ``weight`` ``[V, D]``, ``bias``
    ``[V]`` or None), computed in the inputs' dtype (or autocast's) as
    ``F.linear`` does, with column ``masked_column`` set to
    :func:`masked_logit` (ParlAI's start token), then given to ``chunk_loss``
    in float32. Returns ``(loss, per-row values, argmax)``: the scalar loss
    (float32; its gradient w.r.t. ``hidden``, ``weight`` and ``bias`` equals
    autograd's through the unfused computation), the per-row tensors that
    ``chunk_loss`` returned, concatenated over chunks ``[N]``, and each row's
    most probable token (``z.max(-1)``, as ParlAI takes it). Formula: see the
    module docstring.
    """
    check_chunk_size(chunk_size)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(
            f'fused_output_loss: hidden {tuple(hidden.shape)} and weight '
            f'{tuple(weight.shape)} must be [N, D] and [V, D]'
        )
    loss, *columns = _FusedOutputLoss.apply(
        hidden, weight, bias, chunk_loss, chunk_size, masked_column
    )
    return loss, tuple(columns[:-1]), columns[-1]
