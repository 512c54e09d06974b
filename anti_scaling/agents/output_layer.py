"""A ParlAI generator's output layer, and its decoder's states before it.

``--fused-prediction`` computes the logits itself, chunk by chunk
(:mod:`anti_scaling.losses.fused_output`), so it needs what ParlAI's
``output()`` does, as tensors: ``TransformerGeneratorModel.output`` is
``F.linear(h, embeddings.weight)`` with the start token's logit set to
``neginf``; ``BartModel.output`` the same product without the masking.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from parlai.agents.bart.modules import BartModel
from parlai.agents.transformer.modules import TransformerGeneratorModel
from torch import nn

from ..errors import DistillationError


class OutputLayer(NamedTuple):
    """``logits = F.linear(h, weight, bias)``, column ``masked_column`` (if any) set
    to ParlAI's ``neginf``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    masked_column: int | None


def output_layer(model: nn.Module, who: str = 'student') -> OutputLayer:
    """The output layer of a ParlAI generator ``model``; ``DistillationError`` for a
    model whose ``output()`` is not one of ParlAI's two known ones."""
    method = type(model).output
    if method is BartModel.output:
        return OutputLayer(model.embeddings.weight, None, None)
    if method is TransformerGeneratorModel.output:
        return OutputLayer(model.embeddings.weight, None, int(model.start_idx))
    raise DistillationError(
        f'--fused-prediction: the {who} model {type(model).__name__} has its own '
        'output layer, which cannot be fused; use --fused-prediction false'
    )


def _states(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextmanager
def decoder_states(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model(xs, ys=ys)`` returns the decoder's output states
    ``[B, T, D]`` where it returned logits ``[B, T, V]`` (its ``output()`` is the
    identity; every other step of its forward pass, BART's seed trimming
    included, is its own). Its second output (the argmax) is then meaningless."""
    model.output = _states
    try:
        yield
    finally:
        del model.output
