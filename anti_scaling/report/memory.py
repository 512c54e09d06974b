"""Memory of a ParlAI transformer training step, computed from the shapes.

Formulas for ParlAI 1.7.2's ``TransformerGeneratorModel`` (``--variant
prelayernorm``, shared token embeddings, the ``transformer/generator`` loss),
written down from what its modules keep and checked against real models on the
CPU (``tests/test_memory_estimate.py``: parameter counts exactly, the bytes
autograd saves within 8 bytes, in float32 and float16).

Notation: ``B`` examples, ``S`` context and ``T`` label tokens (every one real,
the worst case of a padded batch), width ``d``, FFN size ``f``, ``h`` heads,
vocabulary ``V``; ``e`` bytes per activation element, ``m`` bytes per element of
a dropout mask, ``s`` bytes per LayerNorm statistic (see :class:`Precision`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DistillationError

#: ParlAI's ``TorchAgent.init_optim`` turns on AMSGrad for ``--optimizer adam``,
#: so Adam keeps three float32 tensors per parameter: both moments and the
#: running maximum of the second.
ADAM_STATES = 3
#: What ``--fp16`` / ``--fp16-impl`` keep per trainable parameter besides the
#: optimizer's states, in bytes: (weights, gradients, float32 master weights,
#: float32 master gradients). ParlAI's ``SafeFP16Optimizer`` copies every
#: parameter and its gradient to float32 (``_build_fp32_params``, with the
#: gradient allocated up front); ``MemoryEfficientFP16Optimizer`` keeps neither
#: and ``MemoryEfficientFP16Adam`` casts one parameter at a time to float32.
TRAINING_MODES = {
    'fp32': (4, 4, 0, 0),
    'safe': (2, 2, 4, 4),
    'mem_efficient': (2, 2, 0, 0),
}


@dataclass(frozen=True)
class Precision:
    """How a step stores its activations.

    ``element`` (``e``): bytes of an activation (2 for a ``--fp16`` model, 4 in
    float32). ``dropout_mask`` (``m``): bytes per element of a dropout mask; CUDA
    keeps a bool mask (1), the CPU kernel a scaled mask in the activation's dtype
    (``e``). ``norm_stat`` (``s``): bytes of LayerNorm's saved mean and inverse
    deviation; CUDA keeps them in float32 (4), the CPU in the activation's dtype.
    """

    name: str
    element: int
    dropout_mask: int
    norm_stat: int

    @property
    def softmax(self) -> int:
        """Bytes per attention weight kept without attention dropout: ParlAI's
        softmax runs in float32 (kept for its backward, 4) and is cast back to the
        model's dtype for the product with the values (kept too when it is a copy)."""
        return 4 + (self.element if self.element != 4 else 0)


def precision(dtype: str, device: str = 'cuda') -> Precision:
    """The :class:`Precision` of a ``dtype`` (``fp16``, ``bf16``, ``fp32``) model on
    ``device`` (``cuda`` or ``cpu``)."""
    element = {'fp16': 2, 'bf16': 2, 'fp32': 4}.get(dtype)
    if element is None or device not in ('cuda', 'cpu'):
        raise DistillationError(
            f'unknown precision {dtype!r} on {device!r}: use fp16, bf16 or fp32 on '
            'cuda or cpu'
        )
    if device == 'cuda':
        return Precision(f'{dtype} ({device})', element, 1, 4)
    return Precision(f'{dtype} ({device})', element, element, element)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a ParlAI ``TransformerGeneratorModel``."""

    n_encoder_layers: int
    n_decoder_layers: int
    embedding_size: int
    ffn_size: int
    n_heads: int
    vocab_size: int
    n_positions: int
    variant: str = 'prelayernorm'
    activation: str = 'gelu'
    learn_positional_embeddings: bool = False
    n_segments: int = 0

    @classmethod
    def from_opt(cls, opt: dict, vocab_size: int) -> ModelShape:
        """The shape a ParlAI ``.opt`` (or agent opt) describes, with ``vocab_size``
        tokens (the dictionary's length, fp16 padding included)."""

        def layers(key: str) -> int:
            value = int(opt.get(key) or -1)
            return value if value > 0 else int(opt['n_layers'])

        from parlai.agents.transformer.modules.functions import (
            get_n_positions_from_options,
        )

        return cls(
            n_encoder_layers=layers('n_encoder_layers'),
            n_decoder_layers=layers('n_decoder_layers'),
            embedding_size=int(opt['embedding_size']),
            ffn_size=int(opt['ffn_size']),
            n_heads=int(opt['n_heads']),
            vocab_size=int(vocab_size),
            n_positions=int(get_n_positions_from_options(opt)),
            variant=opt.get('variant') or 'aiayn',
            activation=opt.get('activation') or 'relu',
            learn_positional_embeddings=bool(opt.get('learn_positional_embeddings')),
            n_segments=int(opt.get('n_segments') or 0),
        )

    def encoder_layer_parameters(self) -> int:
        """``4(d^2 + d)`` attention, ``2df + f + d`` FFN, ``4d`` two LayerNorms."""
        d, f = self.embedding_size, self.ffn_size
        return 4 * (d * d + d) + 2 * d * f + f + d + 4 * d

    def decoder_layer_parameters(self) -> int:
        """Self- and encoder attention ``8(d^2 + d)``, the FFN, three LayerNorms ``6d``."""
        d, f = self.embedding_size, self.ffn_size
        return 8 * (d * d + d) + 2 * d * f + f + d + 6 * d

    def position_parameters(self) -> int:
        """``n_positions * d`` for the encoder and again for the decoder."""
        return 2 * self.n_positions * self.embedding_size

    def parameters(self) -> int:
        """Every parameter: ``Vd`` token embeddings (shared by encoder, decoder and
        output layer), positions, segments (encoder), one final LayerNorm per stack
        for the ``prelayernorm``/``xlm``/``bart`` variants, and the layers."""
        d = self.embedding_size
        norms = 2 * 2 * d if self.variant != 'aiayn' else 0
        return (
            self.vocab_size * d
            + self.position_parameters()
            + self.n_segments * d
            + norms
            + self.n_encoder_layers * self.encoder_layer_parameters()
            + self.n_decoder_layers * self.decoder_layer_parameters()
        )

    def trainable_parameters(self) -> int:
        """What the optimizer holds: ParlAI's sinusoidal position codes (the default,
        ``--learn-positional-embeddings false``) do not require gradients."""
        frozen = 0 if self.learn_positional_embeddings else self.position_parameters()
        return self.parameters() - frozen


@dataclass(frozen=True)
class StepBatch:
    """``size`` examples of ``text_length`` context and ``label_length`` label
    tokens, all real."""

    size: int
    text_length: int
    label_length: int


def training_state_bytes(
    trainable: int, frozen: int, mode: str, adam_states: int = ADAM_STATES
) -> dict[str, int]:
    """Bytes a trained model keeps between steps (:data:`TRAINING_MODES`).

    ``trainable`` parameters: weights, gradients, float32 master weights and
    gradients (``safe`` only) and ``4 * adam_states`` bytes of Adam state; the
    ``frozen`` ones only their weights. ``fp32``: ``(4 + 4 + 12) P`` = 20 bytes per
    parameter; ``safe``: ``(2 + 2 + 4 + 4 + 12) P`` = 24; ``mem_efficient``:
    ``(2 + 2 + 12) P`` = 16.
    """
    if mode not in TRAINING_MODES:
        raise DistillationError(
            f'unknown training mode {mode!r}: use one of {", ".join(TRAINING_MODES)}'
        )
    weight, grad, master, master_grad = TRAINING_MODES[mode]
    return {
        'weights': (trainable + frozen) * weight,
        'gradients': trainable * grad,
        'master weights': trainable * master,
        'master gradients': trainable * master_grad,
        'optimizer states': trainable * 4 * adam_states,
    }


@dataclass(frozen=True)
class Dropouts:
    """ParlAI's three dropout rates (``--dropout``, ``--attention-dropout``,
    ``--relu-dropout``); BlenderBot's are 0.1, 0 and 0."""

    residual: float = 0.1
    attention: float = 0.0
    relu: float = 0.0

    @classmethod
    def from_opt(cls, opt: dict) -> Dropouts:
        return cls(
            float(opt.get('dropout') or 0.0),
            float(opt.get('attention_dropout') or 0.0),
            float(opt.get('relu_dropout') or 0.0),
        )


def _attention_weights(p: Precision, drop: Dropouts) -> int:
    """Bytes kept per attention weight: the float32 softmax, and for the product
    with the values either its cast copy or, with attention dropout, the mask
    and the dropped-out weights."""
    if drop.attention > 0:
        return 4 + p.dropout_mask + p.element
    return p.softmax


def _ffn_hidden(shape: ModelShape, p: Precision, drop: Dropouts) -> int:
    """Bytes kept per FFN hidden unit: GELU keeps its input and the second linear
    its input (GELU's output); ReLU's output is both; relu dropout adds its mask
    and output."""
    e = p.element
    if drop.relu > 0:
        return 2 * e + p.dropout_mask
    return 2 * e if shape.activation == 'gelu' else e


def _require_prelayernorm(shape: ModelShape) -> None:
    if shape.variant != 'prelayernorm':
        raise DistillationError(
            f'activation memory is written down for --variant prelayernorm '
            f'(BlenderBot), not {shape.variant}'
        )


def encoder_layer_bytes(
    shape: ModelShape, batch: StepBatch, p: Precision, drop: Dropouts
) -> int:
    """Saved for backward by one encoder layer over ``L = S`` tokens::

        BLd (8e + 2m) + BLf k_ffn + BhL^2 k_att + BhL + 4BL s + BL e

    ``8e``: LayerNorm inputs and outputs (2 each), queries, keys, values and the
    attended values; ``2m``: the residual dropouts; ``k_ffn``/``k_att``: bytes per
    FFN hidden unit and attention weight; ``BhL``: the key mask (bool); ``4BL s``:
    two LayerNorms' statistics; ``BL e``: ParlAI's multiplication by the mask.
    """
    _require_prelayernorm(shape)
    B, L, d, f, h = (
        batch.size,
        batch.text_length,
        shape.embedding_size,
        shape.ffn_size,
        shape.n_heads,
    )
    m = p.dropout_mask if drop.residual > 0 else 0
    return (
        B * L * d * (8 * p.element + 2 * m)
        + B * L * f * _ffn_hidden(shape, p, drop)
        + B * h * L * L * _attention_weights(p, drop)
        + B * h * L
        + 4 * B * L * p.norm_stat
        + B * L * p.element
    )


def decoder_layer_bytes(
    shape: ModelShape, batch: StepBatch, p: Precision, drop: Dropouts
) -> int:
    """Saved for backward by one decoder layer over ``T`` labels and ``S`` context
    tokens (the encoder's output itself is counted once, in
    :func:`step_activation_bytes`)::

        BTd (12e + 3m) + 2BSd e + BTf k_ffn + Bh(T^2 + TS) k_att + BhT^2 + BhS + 6BT s

    ``12e``: three LayerNorms' inputs and outputs, both attentions' queries and
    attended values, the self-attention's keys and values; ``2BSd e``: the
    encoder attention's keys and values; ``BhT^2 + BhS``: the causal mask
    (repeated over heads, bool) and the key mask.
    """
    _require_prelayernorm(shape)
    B, S, T = batch.size, batch.text_length, batch.label_length
    d, f, h = shape.embedding_size, shape.ffn_size, shape.n_heads
    m = p.dropout_mask if drop.residual > 0 else 0
    return (
        B * T * d * (12 * p.element + 3 * m)
        + 2 * B * S * d * p.element
        + B * T * f * _ffn_hidden(shape, p, drop)
        + B * h * (T * T + T * S) * _attention_weights(p, drop)
        + B * h * T * T
        + B * h * S
        + 6 * B * T * p.norm_stat
    )


def step_activation_bytes(
    shape: ModelShape, batch: StepBatch, p: Precision, drop: Dropouts
) -> dict[str, int]:
    """What autograd keeps for the backward pass of ParlAI's training step.

    Besides the layers: token ids (8 bytes each; with learned positions also the
    encoder's ``B x S`` and the decoder's ``T`` position ids), the embedding dropout's mask, the encoder's mask multiplication,
    each stack's final LayerNorm (``BLd e + 2BL s``), the encoder output (kept
    once by the encoder attention), the output layer's input ``BTd e``, the
    argmax's indices and, for ParlAI's cross-entropy (float32 log-softmax under
    ``--fp16`` too), ``4BTV + 8BT``.
    """
    B, S, T, d = batch.size, batch.text_length, batch.label_length, shape.embedding_size
    e = p.element
    m = p.dropout_mask if drop.residual > 0 else 0
    ids = 2 if shape.learn_positional_embeddings else 1
    encoder_output = B * S * d * e if shape.n_decoder_layers > 0 else 0
    return {
        'encoder embeddings': B * S * (8 * ids + d * m + e),
        'encoder layers': shape.n_encoder_layers
        * encoder_layer_bytes(shape, batch, p, drop),
        'encoder output': B * S * d * e + 2 * B * S * p.norm_stat + encoder_output,
        'decoder embeddings': B * T * (8 + d * m) + (ids - 1) * 8 * T,
        'decoder layers': shape.n_decoder_layers
        * decoder_layer_bytes(shape, batch, p, drop),
        'decoder output': 2 * B * T * d * e + 2 * B * T * p.norm_stat,
        'loss': B * T * shape.vocab_size * 4 + 2 * 8 * B * T,
    }


def logits_bytes(shape: ModelShape, batch: StepBatch, p: Precision) -> int:
    """The output scores ``B T V e``: alive from the output layer until the loss has
    been computed (ParlAI's cross-entropy keeps its float32 log-softmax instead)."""
    return batch.size * batch.label_length * shape.vocab_size * p.element
