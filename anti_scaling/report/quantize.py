"""int8 copies of models for the CPU: torch's dynamic quantisation of the linear layers.

Every ``nn.Linear`` becomes a dynamically quantised linear layer: its weight is
stored as int8 with one scale per tensor (``torch.ao.quantization.quantize_dynamic``,
``qint8``), and each input is quantised on the fly from its own range at run time.
Embeddings, LayerNorms and anything computed with ``F.linear`` (ParlAI's output
projection onto the embedding matrix) stay float32. The original model is
left untouched: the copy is a deep copy.

torch marks ``torch.ao.quantization`` as deprecated in favour of ``torchao``;
it still works in the pinned torch (2.13), and its warnings are silenced here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .models import Model

#: Quantisation schemes the report and the export accept.
SCHEMES = ('int8',)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*quantize_per_tensor.*')
        warnings.filterwarnings('ignore', message='.*quantized tensor.*')
        yield


def quantize_int8(module: torch.nn.Module, scope: str | None = None) -> torch.nn.Module:
    """A copy of ``module`` (in eval mode) with its ``nn.Linear`` layers dynamically quantised to int8.

    ``scope`` names the submodule whose linear layers are quantised (e.g.
    ``'model'`` to leave a transformers model's ``lm_head`` in float32, as
    ParlAI's output projection is); all of them when ``None``.
    """
    quantized = copy.deepcopy(module).eval()
    target = quantized.get_submodule(scope) if scope else quantized
    with _quiet():
        torch.ao.quantization.quantize_dynamic(
            target, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return quantized


def quantized_linear_count(module: torch.nn.Module) -> int:
    """How many dynamically quantised linear layers ``module`` holds."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in module.modules())


def float_linear_count(module: torch.nn.Module) -> int:
    """How many float ``nn.Linear`` layers ``module`` holds."""
    return sum(type(m) is torch.nn.Linear for m in module.modules())


def quantized_agent(agent: Any) -> Any:
    """A ParlAI generator agent sharing ``agent``'s options and dictionary, with an int8 model."""
    from parlai.core.agents import create_agent_from_shared

    shared = agent.share()
    shared['model'] = quantize_int8(agent.model)
    return create_agent_from_shared(shared)


def with_int8_copies(models: list[Model]) -> list[Model]:
    """``models`` with each followed by its int8 copy, labelled ``'<label> int8'``.

    A copy shares its original's file, options and dictionary; its parameter
    count is the original's (the same weights, stored as int8).
    """
    from .models import Model

    out = []
    for m in models:
        copy_ = Model(
            f'{m.label} int8',
            m.path,
            quantized_agent(m.agent),
            m.params,
            quantized='int8',
        )
        out += [m, copy_]
    return out
