"""A ParlAI generator as a CTranslate2 ``TransformerSpec`` (CTranslate2's own specification API).

The weights are first renamed by the mapping the Hugging Face export uses
(:func:`anti_scaling.export.hf.weights.parlai_to_hf`: segments and
``--output-scaling`` folded in, the start token's mask as an output bias), then
placed in the specification:

============================  ===============================================
ParlAI                        CTranslate2
============================  ===============================================
``--variant prelayernorm``    ``pre_norm=True``; ``norm_embeddings`` is each
                              stack's final ``layer_norm``
``--variant aiayn``           ``pre_norm=False``, no embedding LayerNorm
``--variant xlm``             ``pre_norm=False``; the encoder normalises
                              embeddings plus positions
                              (``layernorm_embedding``); the decoder normalises
                              the token embedding alone, before positions:
                              that LayerNorm depends on the token only, so it
                              is applied to the decoder's own embedding table
                              at export (``scale_embeddings`` off there)
``bart``                      ``pre_norm=False``, ``layernorm_embedding`` on
                              both stacks; the 2 unused position rows dropped;
                              decoding starts from the end token with the start
                              token as target prefix
learned or sinusoidal         learned position tables (``position_encodings``)
positions
``--embeddings-scale``        ``scale_embeddings`` (sqrt of the width)
one embedding matrix          encoder and decoder embeddings and the output
                              projection (CTranslate2 shares equal tables)
start token's logit -1e20     the output projection's bias
============================  ===============================================

LayerNorm epsilon is ParlAI's (1e-5); activations ``relu`` and ``gelu`` (erf).
"""

from __future__ import annotations

from typing import Any

import torch

from ..hf.families import Family
from ..hf.weights import parlai_to_hf
from ..parlai_model import model_layout, model_shape

#: ParlAI's LayerNorm epsilon (``parlai.agents.transformer.modules.LAYER_NORM_EPS``).
LAYER_NORM_EPS = 1e-5


def vocabulary(agent: Any, size: int) -> list[str]:
    """The token of each id (ids the dictionary lacks get a placeholder)."""
    d = agent.dict
    return [d.ind2tok.get(i, f'<anti_scaling_unused_{i}>') for i in range(size)]


def _np(t: torch.Tensor) -> Any:
    return t.detach().float().contiguous().numpy()


def _linear(spec: Any, hf: dict, name: str) -> None:
    spec.weight = _np(hf.pop(f'{name}.weight'))
    spec.bias = _np(hf.pop(f'{name}.bias'))


def _norm(spec: Any, hf: dict, name: str) -> None:
    spec.gamma = _np(hf.pop(f'{name}.weight'))
    spec.beta = _np(hf.pop(f'{name}.bias'))


def _fused(spec: Any, hf: dict, names: list[str]) -> None:
    weights = [hf.pop(f'{n}.weight') for n in names]
    biases = [hf.pop(f'{n}.bias') for n in names]
    spec.weight = _np(torch.cat(weights, 0))
    spec.bias = _np(torch.cat(biases, 0))


def _attention(spec: Any, hf: dict, prefix: str, self_attention: bool) -> None:
    q, k, v = (f'{prefix}.{p}_proj' for p in 'qkv')
    if self_attention:
        _fused(spec.linear[0], hf, [q, k, v])
    else:
        _fused(spec.linear[0], hf, [q])
        _fused(spec.linear[1], hf, [k, v])
    _linear(spec.linear[-1], hf, f'{prefix}.out_proj')


def _layers(spec: Any, hf: dict, stack: str, count: int) -> None:
    for i in range(count):
        layer, h = spec.layer[i], f'model.{stack}.layers.{i}'
        _attention(layer.self_attention, hf, f'{h}.self_attn', True)
        _norm(layer.self_attention.layer_norm, hf, f'{h}.self_attn_layer_norm')
        if stack == 'decoder':
            _attention(layer.attention, hf, f'{h}.encoder_attn', False)
            _norm(layer.attention.layer_norm, hf, f'{h}.encoder_attn_layer_norm')
        _linear(layer.ffn.linear_0, hf, f'{h}.fc1')
        _linear(layer.ffn.linear_1, hf, f'{h}.fc2')
        _norm(layer.ffn.layer_norm, hf, f'{h}.final_layer_norm')


def build_spec(agent: Any, family: Family) -> Any:
    """The ``ctranslate2.specs.TransformerSpec`` of a loaded ParlAI agent (weights set).

    ``family``: from :func:`anti_scaling.export.parlai_model.load_for_export`
    (prelayernorm, aiayn, xlm or bart).
    """
    from ctranslate2.specs import common_spec, transformer_spec

    shape = model_shape(agent)
    layout = model_layout(agent, family, shape)
    hf = parlai_to_hf(agent.model.state_dict(), layout)
    variant = family.variant
    pre_norm = variant == 'prelayernorm'
    activation = {
        'relu': common_spec.Activation.RELU,
        'gelu': common_spec.Activation.GELU,
    }[agent.opt.get('activation', 'relu')]
    encoder = transformer_spec.TransformerEncoderSpec(
        shape.n_encoder_layers,
        shape.n_heads,
        pre_norm=pre_norm,
        activation=activation,
        layernorm_embedding=variant in ('xlm', 'bart'),
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        shape.n_decoder_layers,
        shape.n_heads,
        pre_norm=pre_norm,
        activation=activation,
        layernorm_embedding=variant == 'bart',
    )
    spec = transformer_spec.TransformerSpec(encoder, decoder)
    scale = bool(agent.opt.get('embeddings_scale', True))
    offset = family.position_offset
    embeddings = hf.pop('model.shared.weight')
    hf.pop('model.encoder.embed_tokens.weight')
    hf.pop('lm_head.weight')
    decoder_table = hf.pop('model.decoder.embed_tokens.weight')
    encoder.embeddings[0].weight = _np(embeddings)
    encoder.scale_embeddings = scale
    encoder.position_encodings.encodings = _np(
        hf.pop('model.encoder.embed_positions.weight')[offset:]
    )
    decoder.position_encodings.encodings = _np(
        hf.pop('model.decoder.embed_positions.weight')[offset:]
    )
    if pre_norm:
        _norm(encoder.layer_norm, hf, 'model.encoder.layer_norm')
        _norm(decoder.layer_norm, hf, 'model.decoder.layer_norm')
    if variant in ('xlm', 'bart'):
        _norm(encoder.layernorm_embedding, hf, 'model.encoder.layernorm_embedding')
    if variant == 'xlm':
        weight = hf.pop('model.decoder.layernorm_embedding.weight')
        bias = hf.pop('model.decoder.layernorm_embedding.bias')
        table = torch.nn.functional.layer_norm(
            decoder_table, (decoder_table.size(1),), weight, bias, LAYER_NORM_EPS
        )
        decoder.embeddings.weight = _np(table)
        decoder.scale_embeddings = False
    else:
        decoder.embeddings.weight = _np(embeddings)
        decoder.scale_embeddings = scale
        if variant == 'bart':
            _norm(decoder.layernorm_embedding, hf, 'model.decoder.layernorm_embedding')
    _layers(encoder, hf, 'encoder', shape.n_encoder_layers)
    _layers(decoder, hf, 'decoder', shape.n_decoder_layers)
    decoder.projection.weight = _np(embeddings)
    bias = hf.pop('final_logits_bias')[0]
    if bias.abs().max().item() > 0:
        decoder.projection.bias = _np(bias)
    if hf:
        raise ValueError(f'weights left unplaced: {sorted(hf)[:3]}')
    tokens = vocabulary(agent, shape.vocab_size)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    d = agent.dict
    config = spec.config
    config.unk_token = d.unk_token
    config.bos_token = d.start_token
    config.eos_token = d.end_token
    config.decoder_start_token = (
        d.end_token if family.decoder_prefix == 2 else d.start_token
    )
    config.layer_norm_epsilon = LAYER_NORM_EPS
    return spec


def converter(agent: Any, family: Family) -> Any:
    """A ``ctranslate2.converters.Converter`` whose model is ``agent``'s."""
    from ctranslate2.converters import Converter

    class ParlaiConverter(Converter):
        """CTranslate2's converter API over :func:`build_spec`."""

        def _load(self) -> Any:
            return build_spec(agent, family)

    return ParlaiConverter()
