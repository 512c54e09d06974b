"""ParlAI generator weights <-> transformers Blenderbot/BlenderbotSmall/Bart weights.

Layer by layer the two are the same modules under other names (:func:`layer_pairs`).
What is not a renaming:

- ParlAI's ``norm_embeddings`` is the final LayerNorm of each stack for
  ``prelayernorm`` (transformers' ``layer_norm``) and the embedding LayerNorm
  for ``xlm``/``bart`` (``layernorm_embedding``);
- ``--output-scaling s`` multiplies the encoder output by ``s``: folded into the
  encoder's last LayerNorm (``s * LN(x) = LN'(x)`` with weight and bias times ``s``);
- ``--n-segments``: ParlAI's generator always adds segment 0's embedding to the
  encoder input, folded into the encoder's position table;
- sinusoidal position codes are ordinary (frozen) weights in ParlAI and are
  copied into transformers' learned tables; Bart's table has 2 unused rows first;
- one embedding matrix serves both stacks and the output projection. The one
  exception: BlenderbotSmall's decoder does not multiply its embeddings by
  ``sqrt(d_model)`` while ParlAI's ``xlm`` decoder does (LayerNorm undoes the
  scale only up to its epsilon), so with ``--embeddings-scale true`` the decoder
  gets its own copy, pre-multiplied, and nothing is tied;
- ParlAI's ``transformer/generator`` sets the start token's logit to -1e20 in
  ``output``: exported as ``final_logits_bias`` (-1e20 there, 0 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import DistillationError
from .families import NEG_INF, Family

ATTENTION = (('q_proj', 'q_lin'), ('k_proj', 'k_lin'), ('v_proj', 'v_lin'))
ATTENTION += (('out_proj', 'out_lin'),)
PARAMS = ('weight', 'bias')


@dataclass(frozen=True)
class Layout:
    """What the mapping needs beyond the names."""

    family: Family
    n_encoder_layers: int
    n_decoder_layers: int
    start_id: int
    output_scaling: float = 1.0
    #: ParlAI ``--embeddings-scale`` (only matters for the untied xlm decoder).
    embeddings_scale: bool = False

    @property
    def untied(self) -> bool:
        """The decoder needs its own, pre-scaled embedding copy (xlm with scaling)."""
        return self.family.variant == 'xlm' and self.embeddings_scale


def layer_pairs(layout: Layout) -> list[tuple[str, str]]:
    """``(transformers name, ParlAI name)`` of every renamed module, without ``.weight``."""
    pairs = []
    for i in range(layout.n_encoder_layers):
        h, p = f'model.encoder.layers.{i}.', f'encoder.layers.{i}.'
        pairs += [(h + 'self_attn.' + a, p + 'attention.' + b) for a, b in ATTENTION]
        pairs += [
            (h + 'self_attn_layer_norm', p + 'norm1'),
            (h + 'fc1', p + 'ffn.lin1'),
            (h + 'fc2', p + 'ffn.lin2'),
            (h + 'final_layer_norm', p + 'norm2'),
        ]
    for i in range(layout.n_decoder_layers):
        h, p = f'model.decoder.layers.{i}.', f'decoder.layers.{i}.'
        pairs += [
            (h + 'self_attn.' + a, p + 'self_attention.' + b) for a, b in ATTENTION
        ]
        pairs += [
            (h + 'encoder_attn.' + a, p + 'encoder_attention.' + b)
            for a, b in ATTENTION
        ]
        pairs += [
            (h + 'self_attn_layer_norm', p + 'norm1'),
            (h + 'encoder_attn_layer_norm', p + 'norm2'),
            (h + 'fc1', p + 'ffn.lin1'),
            (h + 'fc2', p + 'ffn.lin2'),
            (h + 'final_layer_norm', p + 'norm3'),
        ]
    if layout.family.variant == 'aiayn':  # ParlAI builds no norm_embeddings
        return pairs
    norm = 'layer_norm' if layout.family.final_layer_norm else 'layernorm_embedding'
    pairs += [
        (f'model.encoder.{norm}', 'encoder.norm_embeddings'),
        (f'model.decoder.{norm}', 'decoder.norm_embeddings'),
    ]
    return pairs


def _encoder_output_norm(layout: Layout) -> str:
    """The ParlAI LayerNorm whose output is the encoder's output."""
    if layout.family.final_layer_norm or layout.n_encoder_layers == 0:
        return 'encoder.norm_embeddings'
    return f'encoder.layers.{layout.n_encoder_layers - 1}.norm2'


def _positions_to_hf(table: torch.Tensor, offset: int) -> torch.Tensor:
    return torch.cat([table.new_zeros(offset, table.size(1)), table], 0)


def parlai_to_hf(
    state: dict[str, torch.Tensor], layout: Layout
) -> dict[str, torch.Tensor]:
    """The transformers state dict of a ParlAI generator's ``state`` (tensors copied)."""
    state = {k: v.detach().float().clone() for k, v in state.items() if k != 'START'}
    scale_norm = _encoder_output_norm(layout)
    for suffix in PARAMS:
        state[f'{scale_norm}.{suffix}'] *= layout.output_scaling
    hf = {}
    for h, p in layer_pairs(layout):
        for suffix in PARAMS:
            hf[f'{h}.{suffix}'] = state.pop(f'{p}.{suffix}')
    embeddings = state.pop('embeddings.weight')
    state.pop('encoder.embeddings.weight', None)
    state.pop('decoder.embeddings.weight', None)
    hf['model.shared.weight'] = embeddings
    hf['model.encoder.embed_tokens.weight'] = embeddings.clone()
    hf['model.decoder.embed_tokens.weight'] = (
        embeddings * math.sqrt(embeddings.size(1))
        if layout.untied
        else embeddings.clone()
    )
    hf['lm_head.weight'] = embeddings.clone()
    encoder_positions = state.pop('encoder.position_embeddings.weight')
    segments = state.pop('encoder.segment_embeddings.weight', None)
    if segments is not None:
        encoder_positions = encoder_positions + segments[0]
    offset = layout.family.position_offset
    hf['model.encoder.embed_positions.weight'] = _positions_to_hf(
        encoder_positions, offset
    )
    hf['model.decoder.embed_positions.weight'] = _positions_to_hf(
        state.pop('decoder.position_embeddings.weight'), offset
    )
    bias = embeddings.new_zeros(1, embeddings.size(0))
    if layout.family.masks_start:
        bias[0, layout.start_id] = NEG_INF
    hf['final_logits_bias'] = bias
    if state:
        raise DistillationError(
            f'weights with no transformers counterpart: {sorted(state)[:3]}; '
            'nothing was written'
        )
    return hf


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def hf_to_parlai(
    hf: dict[str, torch.Tensor], layout: Layout, where: str
) -> dict[str, torch.Tensor]:
    """The ParlAI state dict of a transformers model's ``hf`` state dict.

    Raises :class:`DistillationError` (one line) when the transformers model
    has something ParlAI cannot hold: separate embedding matrices, an output
    bias other than the start token's mask, unknown weights.
    """
    hf = {k: v.detach().float().clone() for k, v in hf.items()}
    state = {}
    for h, p in layer_pairs(layout):
        for suffix in PARAMS:
            key = f'{h}.{suffix}'
            if key not in hf:
                raise DistillationError(
                    f'{where}: weight {key} is missing; nothing was written'
                )
            state[f'{p}.{suffix}'] = hf.pop(key)
    embeddings = hf.pop('model.shared.weight')
    d_model = embeddings.size(1)
    expected = {
        'model.encoder.embed_tokens.weight': embeddings,
        'model.decoder.embed_tokens.weight': (
            embeddings * math.sqrt(d_model) if layout.untied else embeddings
        ),
        'lm_head.weight': embeddings,
    }
    for key, value in expected.items():
        if key in hf and not _close(hf.pop(key), value):
            raise DistillationError(
                f'{where}: {key} differs from model.shared.weight; ParlAI uses one '
                'embedding matrix for both stacks and the output; nothing was written'
            )
    for name in ('embeddings', 'encoder.embeddings', 'decoder.embeddings'):
        state[f'{name}.weight'] = embeddings
    offset = layout.family.position_offset
    for stack in ('encoder', 'decoder'):
        table = hf.pop(f'model.{stack}.embed_positions.weight')
        state[f'{stack}.position_embeddings.weight'] = table[offset:].clone()
    bias = hf.pop('final_logits_bias', embeddings.new_zeros(1, embeddings.size(0)))
    if layout.family.masks_start:
        bias = torch.cat(
            [bias[:, : layout.start_id], bias[:, layout.start_id + 1 :]], 1
        )
    if bias.abs().max().item() > 0:
        raise DistillationError(
            f'{where}: final_logits_bias is not zero; ParlAI has no output bias; '
            'nothing was written'
        )
    if hf:
        raise DistillationError(
            f'{where}: weights with no ParlAI counterpart: {sorted(hf)[:3]}; '
            'nothing was written'
        )
    state['START'] = torch.LongTensor([layout.start_id])
    return state
