"""Which transformers model class each ParlAI generator is, and their two configs.

Three ParlAI layouts have an exact counterpart in ``transformers``:

=================================  =======================================
ParlAI                             transformers
=================================  =======================================
``transformer/generator``,         ``BlenderbotForConditionalGeneration``:
``--variant prelayernorm``         pre-LayerNorm layers; ParlAI's
                                   ``norm_embeddings`` is applied after the
                                   last layer (``encoder.layer_norm``,
                                   ``decoder.layer_norm``)
``transformer/generator``,         ``BlenderbotSmallForConditionalGeneration``:
``--variant xlm``                  post-LayerNorm layers; ``norm_embeddings``
                                   normalises the embeddings
                                   (``layernorm_embedding``), in the decoder
                                   before the positions are added
``bart`` (``--variant bart``)      ``BartForConditionalGeneration``:
                                   post-LayerNorm layers, ``layernorm_embedding``
                                   after the positions; position table offset
                                   by 2; decoding seeded with end, start
=================================  =======================================

``aiayn`` (post-LayerNorm without an embedding LayerNorm) has none and is
refused. Sizes (layers, width, FFN size, positions, vocabulary) are read from
the weights; the rest from the model's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import DistillationError

#: ParlAI's activations and their names in transformers (both exact: ``F.relu``,
#: ``F.gelu`` with the erf form).
ACTIVATIONS = {'relu': 'relu', 'gelu': 'gelu'}


@dataclass(frozen=True)
class Family:
    """One ParlAI layout and its transformers counterpart."""

    #: transformers ``model_type``.
    model_type: str
    #: transformers class (``config.architectures``).
    architecture: str
    #: ParlAI ``--variant``.
    variant: str
    #: ParlAI agent (``-m``).
    parlai_model: str
    #: LayerNorm after the last layer (pre-LN) instead of on the embeddings.
    final_layer_norm: bool
    #: Rows of the transformers position table before position 0.
    position_offset: int
    #: Decoder tokens before the first reply token: ``[start]`` or ``[end, start]``.
    decoder_prefix: int
    #: ParlAI's ``output`` sets the start token's logit to -1e20.
    masks_start: bool


BLENDERBOT = Family(
    'blenderbot',
    'BlenderbotForConditionalGeneration',
    'prelayernorm',
    'transformer/generator',
    final_layer_norm=True,
    position_offset=0,
    decoder_prefix=1,
    masks_start=True,
)
BLENDERBOT_SMALL = Family(
    'blenderbot-small',
    'BlenderbotSmallForConditionalGeneration',
    'xlm',
    'transformer/generator',
    final_layer_norm=False,
    position_offset=0,
    decoder_prefix=1,
    masks_start=True,
)
BART = Family(
    'bart',
    'BartForConditionalGeneration',
    'bart',
    'bart',
    final_layer_norm=False,
    position_offset=2,
    decoder_prefix=2,
    masks_start=False,
)
FAMILIES = (BLENDERBOT, BLENDERBOT_SMALL, BART)
#: ``--variant aiayn`` (post-LayerNorm, no embedding LayerNorm): no transformers
#: counterpart, but CTranslate2 expresses it (:mod:`anti_scaling.export.ct2`).
AIAYN = Family(
    '',
    '',
    'aiayn',
    'transformer/generator',
    final_layer_norm=False,
    position_offset=0,
    decoder_prefix=1,
    masks_start=True,
)
#: The value ParlAI writes into the start token's logit (``neginf`` in float32).
NEG_INF = -1e20


def family_of_opt(
    opt: dict,
    parlai_model: str,
    model_file: str,
    families: tuple[Family, ...] = FAMILIES,
    target: str = 'transformers',
) -> Family:
    """The family of a plain ParlAI model (``parlai_model``: ``bart`` or ``transformer/generator``).

    ``families``: those the ``target`` format expresses. Raises
    :class:`DistillationError` (one line) for a layout with no exact counterpart.
    """
    variant = opt.get('variant') or 'aiayn'
    for family in families:
        if family.parlai_model == parlai_model and family.variant == variant:
            break
    else:
        raise DistillationError(
            f'{model_file}: -m {parlai_model} --variant {variant} has no exact '
            f'{target} counterpart (supported: '
            + '; '.join(f'{f.parlai_model} --variant {f.variant}' for f in families)
            + '); nothing was written'
        )
    activation = opt.get('activation', 'relu')
    if activation not in ACTIVATIONS:
        raise DistillationError(
            f'{model_file}: --activation {activation} has no {target} '
            'counterpart (relu, gelu); nothing was written'
        )
    return family


def family_of_config(config: dict, where: str) -> Family:
    """The family of a transformers ``config.json`` (its ``model_type``)."""
    model_type = config.get('model_type')
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    raise DistillationError(
        f'{where}: model_type {model_type!r} is not supported (blenderbot, '
        'blenderbot-small, bart); nothing was written'
    )


@dataclass(frozen=True)
class Shape:
    """Sizes read from the weights, and the special token ids."""

    vocab_size: int
    d_model: int
    ffn_size: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int
    n_positions: int
    pad_id: int
    start_id: int
    end_id: int
    unk_id: int


def hf_config(family: Family, shape: Shape, opt: dict, untied: bool) -> dict[str, Any]:
    """The ``config.json`` fields of the exported model.

    ``untied``: the embeddings are stored apart (see :mod:`.weights`).
    """
    decoder_start = shape.end_id if family.decoder_prefix == 2 else shape.start_id
    return {
        'model_type': family.model_type,
        'architectures': [family.architecture],
        'vocab_size': shape.vocab_size,
        'd_model': shape.d_model,
        'encoder_layers': shape.n_encoder_layers,
        'decoder_layers': shape.n_decoder_layers,
        'encoder_attention_heads': shape.n_heads,
        'decoder_attention_heads': shape.n_heads,
        'encoder_ffn_dim': shape.ffn_size,
        'decoder_ffn_dim': shape.ffn_size,
        'max_position_embeddings': shape.n_positions,
        'activation_function': ACTIVATIONS[opt.get('activation', 'relu')],
        'scale_embedding': bool(opt.get('embeddings_scale', True)),
        'dropout': float(opt.get('dropout') or 0.0),
        'attention_dropout': float(opt.get('attention_dropout') or 0.0),
        'activation_dropout': float(opt.get('relu_dropout') or 0.0),
        'pad_token_id': shape.pad_id,
        'bos_token_id': shape.start_id,
        'eos_token_id': shape.end_id,
        'decoder_start_token_id': decoder_start,
        'forced_eos_token_id': shape.end_id,
        'tie_word_embeddings': not untied,
        'is_encoder_decoder': True,
        'use_cache': True,
    }


def parlai_architecture(family: Family, config: dict, where: str) -> dict[str, Any]:
    """ParlAI architecture options of a transformers config (one-line error if none fits)."""

    def same(a: str, b: str) -> Any:
        if config.get(a) != config.get(b):
            raise DistillationError(
                f'{where}: {a}={config.get(a)} differs from {b}={config.get(b)}; '
                'ParlAI uses one value for both stacks; nothing was written'
            )
        return config[a]

    activation = config.get('activation_function', 'gelu')
    if activation not in ACTIVATIONS.values():
        raise DistillationError(
            f'{where}: activation_function {activation!r} has no ParlAI '
            'counterpart (relu, gelu); nothing was written'
        )
    return {
        'variant': family.variant,
        'embedding_size': config['d_model'],
        'ffn_size': same('encoder_ffn_dim', 'decoder_ffn_dim'),
        'n_heads': same('encoder_attention_heads', 'decoder_attention_heads'),
        'n_layers': max(config['encoder_layers'], config['decoder_layers']),
        'n_encoder_layers': config['encoder_layers'],
        'n_decoder_layers': config['decoder_layers'],
        'n_positions': config['max_position_embeddings'],
        'activation': activation,
        'embeddings_scale': bool(config.get('scale_embedding', False)),
        'learn_positional_embeddings': True,
        'output_scaling': 1.0,
        'n_segments': 0,
        'dropout': float(config.get('dropout') or 0.0),
        'attention_dropout': float(config.get('attention_dropout') or 0.0),
        'relu_dropout': float(config.get('activation_dropout') or 0.0),
    }
