"""Convert fairseq BART checkpoints into ParlAI ``bart`` teachers.

    python -m anti_scaling.scripts.convert_fairseq_bart CHECKPOINT \\
        --dict dict.txt --output MODEL [--trust-checkpoint] [--verify]

writes ``MODEL``, ``MODEL.opt`` (``model: bart``) and ``MODEL.dict``: a plain
ParlAI ``bart`` model that the distillation agents take as ``--teacher-model``.
The conversion is our own key mapping onto ParlAI's ``BartModel`` (ParlAI's
``convert_fairseq_to_parlai.py`` needs fairseq to unpickle, and downloads the
GPT-2 BPE files); it needs no network, and no fairseq for checkpoints whose
pickle holds only tensors, plain containers and ``argparse.Namespace`` (what
fairseq 0.12 writes for BART).

**What converts.** BART encoder-decoders (``--arch bart_base``, ``bart_large``,
also with other sizes): post-LayerNorm layers, learned positions, one embedding
matrix shared by encoder, decoder and output, ``gelu`` or ``relu``, the same
width, FFN size and heads in both stacks. Anything else (another architecture,
mBART's pre-LayerNorm, sinusoidal positions, untied embeddings, an unknown
parameter) is refused with one :class:`~anti_scaling.errors.DistillationError`
line before anything is written. ``classification_heads.*`` are dropped.

**Token ids.** fairseq's ``Dictionary`` holds ``<s> <pad> </s> <unk>`` at ids
0-3, then the lines of ``dict.txt`` in file order (and ``<mask>`` last when the
model was trained with the ``denoising`` task). ParlAI's ``DictionaryAgent``
holds ``__null__ __start__ __end__ __unk__`` at 0-3, then the lines of its
``.dict`` file in order. ``MODEL.dict`` is written from the same ``dict.txt``,
in the same order, so every word keeps its id; only ids 0 and 1 trade places
(ParlAI pads with 0 and starts with 1, fairseq the other way round), and the
embedding rows are swapped to match (:data:`FAIRSEQ_ID_OF_PARLAI_ID`). ParlAI
splits text with ``--dict-tokenizer`` (``space`` by default: text must be
tokenised as it was for ``fairseq-preprocess``, single spaces between tokens).

**Input format.** ParlAI's ``bart`` agent encodes ``__start__ x __end__`` and
starts decoding from ``__end__ __start__``: fairseq's ``<s> x </s>`` and
``</s> <s>``, as in BART pre-training. A model fine-tuned with fairseq's
``translation`` task sees that exact format when its source and target lines
start with ``<s>`` (``fairseq-preprocess`` maps the word ``<s>`` to id 0).

**Untrusted pickles.** A fairseq checkpoint is a pickle. By default it is read
with ``torch.load(weights_only=True)`` plus one allowed class,
``argparse.Namespace`` (fairseq's legacy model arguments): no code in the file
can run. A checkpoint that holds other objects (e.g. omegaconf configs written
by some fairseq versions) is refused, naming them; ``trust=True``
(``--trust-checkpoint``) unpickles it fully, for files the user trusts.
Unpickling fairseq or omegaconf objects that way, and checking logits against
fairseq's own model (``--verify``), need the ``fairseq`` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import parlai.utils.logging as logging
import torch

from .errors import DistillationError, describe_exception
from .fileio import atomic_path

INSTALL_HINT = "pip install 'anti-scaling[fairseq]'"
# Classes that the safe (weights-only) loader may build besides tensors and
# plain containers: fairseq's legacy model arguments.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# ParlAI id -> fairseq id of the same token: ParlAI's __null__ (0) is fairseq's
# <pad> (1), ParlAI's __start__ (1) is fairseq's <s> (0); every other id is equal.
FAIRSEQ_ID_OF_PARLAI_ID = {0: 1, 1: 0, 2: 2, 3: 3}
FAIRSEQ_SPECIALS = ('<s>', '<pad>', '</s>', '<unk>')
PARLAI_SPECIALS = ('__null__', '__start__', '__end__', '__unk__')
MASK_TOKEN = '<mask>'
# fairseq's learned positions start at padding_idx + 1 = 2.
POSITION_OFFSET = 2
DICT_TOKENIZERS = ('space', 'split', 're')
DEFAULT_TOLERANCE = 1e-4
BART_ARCH_PREFIXES = ('bart_', 'mbart_')
_UNSUPPORTED_TAIL = (
    'only BART encoder-decoders (--arch bart_base or bart_large, also resized) '
    'convert to ParlAI bart'
)


# fairseq, when it is needed -------------------------------------------------------


def require_fairseq(purpose: str) -> Any:
    """Import and return fairseq, or raise a one-line error naming the extra.

    ``purpose`` says what needs it (e.g. ``'--verify'``). fairseq 0.12.2, the last
    release of ``fairseq`` itself, installs on Python 3.11 but fails to import; the
    extra installs a build that works.
    """
    try:
        import fairseq
    except ImportError:
        raise DistillationError(
            f'{purpose} needs fairseq, which is not installed: {INSTALL_HINT}'
        ) from None
    except Exception as e:  # fairseq 0.12.2 on 3.11: ValueError (mutable default)
        raise DistillationError(
            f'{purpose} needs fairseq, but the installed one does not import on '
            f'this Python ({describe_exception(e)}): {INSTALL_HINT}'
        ) from None
    return fairseq


# reading the inputs ------------------------------------------------------------------


def read_fairseq_dict(path: str) -> list[tuple[str, int]]:
    """The ``(token, count)`` lines of a fairseq ``dict.txt``, in file order.

    These take fairseq ids 4, 5, ... Lines ending in ``#fairseq:overwrite`` are
    read as fairseq reads them. Raises :class:`DistillationError` for a missing or
    malformed file or a repeated token.
    """
    if not os.path.isfile(path):
        raise DistillationError(f'fairseq dictionary not found: {path}')
    entries: list[tuple[str, int]] = []
    seen: set[str] = set()
    try:
        with open(path, encoding='utf-8') as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DistillationError(
            f'{path} is not a readable fairseq dict.txt ({type(e).__name__})'
        ) from None
    for number, line in enumerate(lines, 1):
        parts = line.rstrip().rsplit(' ', 1)
        overwrite = False
        if len(parts) == 2 and parts[1] == '#fairseq:overwrite':
            overwrite = True
            parts = parts[0].rsplit(' ', 1)
        if len(parts) != 2 or not parts[0] or not parts[1].lstrip('-').isdigit():
            raise DistillationError(
                f'{path}:{number} is not a fairseq dict.txt line ("<token> <count>"): '
                f'{line[:60]!r}'
            )
        token, count = parts[0], int(parts[1])
        if token in seen and not overwrite:
            raise DistillationError(
                f'{path}:{number}: token {token!r} appears twice (fairseq refuses it '
                'too)'
            )
        seen.add(token)
        entries.append((token, count))
    return entries


_UNSUPPORTED_GLOBAL = re.compile(r'Unsupported global: GLOBAL ([\w.]+)')


def _unsafe_globals(path: str, error: BaseException) -> list[str]:
    """The globals outside :data:`SAFE_GLOBALS` that made a weights-only load fail."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or unreadable
        found = []
    found += _UNSUPPORTED_GLOBAL.findall(str(error))  # legacy (non-zip) files
    allowed = {f'{c.__module__}.{c.__qualname__}' for c in SAFE_GLOBALS}
    return [name for name in dict.fromkeys(found) if name not in allowed]


def _load_error_reason(error: BaseException) -> str:
    match = re.search(r'WeightsUnpickler error:\s*(\S.*)', str(error))
    if match:
        return f'{type(error).__name__}: {match.group(1).strip()[:160]}'
    return describe_exception(error)[:200]


def load_fairseq_checkpoint(path: str, trust: bool = False) -> dict[str, Any]:
    """Read a fairseq checkpoint onto the CPU.

    Without ``trust`` no code from the file can run (``weights_only`` loading,
    :data:`SAFE_GLOBALS` allowed); a file holding other objects is refused with
    their names. With ``trust`` the file is fully unpickled: only for files the
    user trusts. Raises :class:`DistillationError` (one line) for a missing,
    unreadable or non-fairseq file, and names the ``fairseq`` extra when the
    pickle needs fairseq or omegaconf and they are not installed.
    """
    if not os.path.isfile(path):
        raise DistillationError(f'fairseq checkpoint not found: {path}')
    try:
        if trust:
            logging.warning(
                f'Unpickling {path} with weights_only=False (--trust-checkpoint): '
                'only do this for files you trust'
            )
            state = torch.load(path, map_location='cpu', weights_only=False)
        else:
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                state = torch.load(path, map_location='cpu', weights_only=True)
    except ModuleNotFoundError as e:
        top = (e.name or '').split('.')[0]
        if top in ('fairseq', 'fairseq_cli', 'omegaconf', 'hydra'):
            raise DistillationError(
                f'{path} holds {e.name} objects and {top} is not installed: '
                f'{INSTALL_HINT}'
            ) from None
        raise DistillationError(
            f'{path} cannot be unpickled: module {e.name} is not installed'
        ) from None
    except Exception as e:
        unsafe = [] if trust else _unsafe_globals(path, e)
        if unsafe:
            raise DistillationError(
                f'{path} holds pickled objects outside the safe set '
                f'({", ".join(unsafe[:5])}{", ..." if len(unsafe) > 5 else ""}): '
                'unpickling them could run code from the file; if you trust it, '
                'rerun with --trust-checkpoint'
            ) from None
        raise DistillationError(
            f'{path} is not a readable torch checkpoint ({_load_error_reason(e)})'
        ) from None
    model = state.get('model') if isinstance(state, Mapping) else None
    if not isinstance(model, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in model.values()
    ):
        raise DistillationError(
            f'{path} is not a fairseq checkpoint (it has no "model" state dict of '
            'tensors)'
        )
    return dict(state)


def _plain_config(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    if isinstance(value, Mapping):
        if type(value).__module__.startswith('omegaconf'):
            from omegaconf import OmegaConf  # only a trusted load can produce these

            return OmegaConf.to_container(value, resolve=True)
        return dict(value)
    return None


def fairseq_model_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """The model arguments of a fairseq checkpoint as a plain dict.

    fairseq >= 0.10 keeps them in ``state['cfg']['model']`` (a ``Namespace`` for
    BART, whose arguments are still "legacy"), older versions in
    ``state['args']``. The task name is added as ``'task'`` when known.
    """
    cfg = state.get('cfg')
    config = None
    task = None
    if isinstance(cfg, Mapping):
        config = _plain_config(cfg.get('model'))
        task_cfg = _plain_config(cfg.get('task'))
        task = (task_cfg or {}).get('_name')
    args = _plain_config(state.get('args'))
    if config is None:
        config = args
    if config is None:
        raise DistillationError(
            'the checkpoint has no model configuration (neither cfg.model nor args)'
        )
    config.setdefault('task', task or (args or {}).get('task'))
    return config


# the architecture --------------------------------------------------------------------


@dataclass(frozen=True)
class BartArchitecture:
    """The shape of a convertible fairseq BART, in ParlAI's terms."""

    arch: str
    n_encoder_layers: int
    n_decoder_layers: int
    embedding_size: int
    ffn_size: int
    n_heads: int
    n_positions: int
    vocab_size: int
    activation: str
    variant: str
    embeddings_scale: bool
    dropout: float
    attention_dropout: float
    relu_dropout: float

    def parlai_options(self) -> dict[str, Any]:
        """The ParlAI options that build the same network."""
        return {
            'n_layers': self.n_encoder_layers,
            'n_encoder_layers': self.n_encoder_layers,
            'n_decoder_layers': self.n_decoder_layers,
            'embedding_size': self.embedding_size,
            'ffn_size': self.ffn_size,
            'n_heads': self.n_heads,
            'n_positions': self.n_positions,
            'n_segments': 0,
            'activation': self.activation,
            'variant': self.variant,
            'embeddings_scale': self.embeddings_scale,
            'learn_positional_embeddings': True,
            'share_word_embeddings': True,
            'output_scaling': 1.0,
            'dropout': self.dropout,
            'attention_dropout': self.attention_dropout,
            'relu_dropout': self.relu_dropout,
        }


def _unsupported(arch: str, reason: str) -> DistillationError:
    return DistillationError(
        f'fairseq architecture {arch!r} is not supported: {reason}; {_UNSUPPORTED_TAIL}'
    )


def check_architecture(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> BartArchitecture:
    """Check that a fairseq model converts exactly to ParlAI ``bart``; return its shape.

    ``config`` is :func:`fairseq_model_config`'s dict, ``state_dict`` the
    checkpoint's ``model``. Missing arguments take fairseq's BART defaults.
    Raises :class:`DistillationError` (one line, naming the architecture and the
    reason) for anything ParlAI's ``BartModel`` cannot reproduce.
    """
    arch = str(config.get('arch') or config.get('_name') or 'unknown')
    if not arch.startswith(BART_ARCH_PREFIXES):
        raise _unsupported(arch, 'it is not a BART model')

    def get(key: str, default: Any = None) -> Any:
        value = config.get(key)
        return default if value is None else value

    if get('encoder_normalize_before', False) or get('decoder_normalize_before', False):
        raise _unsupported(
            arch, 'pre-LayerNorm layers (as in mBART) have no ParlAI bart equivalent'
        )
    if (
        not get('encoder_learned_pos', True)
        or not get('decoder_learned_pos', True)
        or get('no_token_positional_embeddings', False)
        or any(k.endswith('embed_positions._float_tensor') for k in state_dict)
    ):
        raise _unsupported(arch, 'it needs learned position embeddings')
    activation = get('activation_fn', 'gelu')
    if activation not in ('gelu', 'relu'):
        raise _unsupported(arch, f'activation {activation!r} (ParlAI has relu, gelu)')
    width = get('encoder_embed_dim')
    ffn = get('encoder_ffn_embed_dim')
    heads = get('encoder_attention_heads')
    if width is None or ffn is None or heads is None:
        raise _unsupported(arch, 'its configuration lacks the model sizes')
    for key, value in (
        ('decoder_embed_dim', width),
        ('decoder_input_dim', width),
        ('decoder_output_dim', width),
        ('decoder_ffn_embed_dim', ffn),
        ('decoder_attention_heads', heads),
    ):
        if get(key, value) != value:
            raise _unsupported(
                arch,
                f'{key} {config.get(key)} differs from the encoder\'s {value} (ParlAI '
                'uses one width, FFN size and head count for both stacks)',
            )
    if not get('share_all_embeddings', True) or not get(
        'share_decoder_input_output_embed', True
    ):
        raise _unsupported(
            arch, 'its encoder, decoder and output embeddings are not shared'
        )
    if get('adaptive_softmax_cutoff') or get('adaptive_input', False):
        raise _unsupported(arch, 'adaptive input/softmax')
    if get('cross_self_attention', False) or get('no_cross_attention', False):
        raise _unsupported(arch, 'non-standard encoder-decoder attention')

    layers = {}
    for stack in ('encoder', 'decoder'):
        found = {
            int(m.group(1))
            for k in state_dict
            if (m := re.match(rf'{stack}\.layers\.(\d+)\.', k))
        }
        expected = get(f'{stack}_layers', len(found))
        if found != set(range(len(found))) or len(found) != expected:
            raise _unsupported(
                arch,
                f'its {stack} has layers {sorted(found)} but {stack}_layers is '
                f'{expected}',
            )
        layers[stack] = len(found)

    embed = state_dict.get('encoder.embed_tokens.weight')
    if embed is None or embed.dim() != 2 or embed.shape[1] != width:
        raise _unsupported(arch, 'encoder.embed_tokens.weight is missing or misshapen')
    for key in ('decoder.embed_tokens.weight', 'decoder.output_projection.weight'):
        other = state_dict.get(key)
        if other is not None and not torch.equal(other, embed):
            raise _unsupported(arch, f'{key} is not tied to the encoder embeddings')
    positions = []
    for stack in ('encoder', 'decoder'):
        weight = state_dict.get(f'{stack}.embed_positions.weight')
        if weight is None or weight.dim() != 2 or weight.shape[0] <= POSITION_OFFSET:
            raise _unsupported(arch, f'{stack}.embed_positions.weight is missing')
        positions.append(weight.shape[0] - POSITION_OFFSET)
    if width % heads:
        raise _unsupported(arch, f'width {width} is not a multiple of {heads} heads')
    norm_embedding = 'encoder.layernorm_embedding.weight' in state_dict
    if norm_embedding != ('decoder.layernorm_embedding.weight' in state_dict):
        raise _unsupported(arch, 'only one stack has an embedding LayerNorm')

    relu_dropout = get('activation_dropout', 0.0) or get('relu_dropout', 0.0)
    return BartArchitecture(
        arch=arch,
        n_encoder_layers=layers['encoder'],
        n_decoder_layers=layers['decoder'],
        embedding_size=int(width),
        ffn_size=int(ffn),
        n_heads=int(heads),
        n_positions=min(positions),
        vocab_size=int(embed.shape[0]),
        activation=activation,
        variant='bart' if norm_embedding else 'aiayn',
        embeddings_scale=not get('no_scale_embedding', True),
        dropout=float(get('dropout', 0.1)),
        attention_dropout=float(get('attention_dropout', 0.0)),
        relu_dropout=float(relu_dropout),
    )


# the weights ---------------------------------------------------------------------

# Attention projections: fairseq name -> ParlAI name.
_ATTENTION = {
    'q_proj': 'q_lin',
    'k_proj': 'k_lin',
    'v_proj': 'v_lin',
    'out_proj': 'out_lin',
}
# Per-layer modules: fairseq name -> ParlAI name.
_LAYER_MODULES = {
    'encoder': {
        'self_attn': 'attention',
        'self_attn_layer_norm': 'norm1',
        'fc1': 'ffn.lin1',
        'fc2': 'ffn.lin2',
        'final_layer_norm': 'norm2',
    },
    'decoder': {
        'self_attn': 'self_attention',
        'self_attn_layer_norm': 'norm1',
        'encoder_attn': 'encoder_attention',
        'encoder_attn_layer_norm': 'norm2',
        'fc1': 'ffn.lin1',
        'fc2': 'ffn.lin2',
        'final_layer_norm': 'norm3',
    },
}
_LAYER_KEY = re.compile(
    r'^(encoder|decoder)\.layers\.(\d+)\.(\w+?)(?:\.(\w+))?\.(weight|bias)$'
)
_IN_PROJ_KEY = re.compile(
    r'^(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.in_proj_(weight|bias)$'
)
_IGNORED = re.compile(r'^(encoder|decoder)\.version$|^classification_heads\.')
_TIED = ('decoder.embed_tokens.weight', 'decoder.output_projection.weight')


def parlai_key(fairseq_key: str) -> str | None:
    """The ParlAI ``BartModel`` name of a fairseq per-layer or stack-level parameter.

    ``encoder.layers.0.self_attn.q_proj.weight`` ->
    ``encoder.layers.0.attention.q_lin.weight``;
    ``decoder.layers.1.encoder_attn_layer_norm.bias`` ->
    ``decoder.layers.1.norm2.bias``; ``encoder.layernorm_embedding.weight`` ->
    ``encoder.norm_embeddings.weight``. ``None`` for names it does not know
    (embeddings and positions are converted by :func:`convert_state_dict`).
    """
    match = re.match(
        r'^(encoder|decoder)\.layernorm_embedding\.(weight|bias)$', fairseq_key
    )
    if match:
        return f'{match.group(1)}.norm_embeddings.{match.group(2)}'
    match = _LAYER_KEY.match(fairseq_key)
    if not match:
        return None
    stack, layer, module, sub, kind = match.groups()
    parlai_module = _LAYER_MODULES[stack].get(module)
    if parlai_module is None:
        return None
    if sub is not None:
        if module not in ('self_attn', 'encoder_attn') or sub not in _ATTENTION:
            return None
        parlai_module = f'{parlai_module}.{_ATTENTION[sub]}'
    elif module in ('self_attn', 'encoder_attn'):
        return None
    return f'{stack}.layers.{layer}.{parlai_module}.{kind}'


def parlai_order(vocab_size: int) -> torch.Tensor:
    """Index tensor ``i -> fairseq id of ParlAI id i`` (rows 0 and 1 swapped)."""
    order = torch.arange(vocab_size)
    for parlai_id, fairseq_id in FAIRSEQ_ID_OF_PARLAI_ID.items():
        order[parlai_id] = fairseq_id
    return order


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], arch: BartArchitecture
) -> dict[str, torch.Tensor]:
    """Map a fairseq BART state dict onto ParlAI ``BartModel`` names (float32).

    Embedding rows are reordered into ParlAI's ids (:func:`parlai_order`) and
    shared by ``embeddings``, ``encoder.embeddings`` and ``decoder.embeddings``;
    position rows drop fairseq's offset of 2 and keep ``arch.n_positions``;
    combined ``in_proj`` attention weights are split into q, k, v. Version
    counters and classification heads are dropped. Raises
    :class:`DistillationError` for any other parameter it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state_dict.items():
        value = value.detach().to(torch.float32)
        if key in _TIED or _IGNORED.match(key):
            if key.startswith('classification_heads.'):
                dropped.append(key)
            continue
        if key == 'encoder.embed_tokens.weight':
            embeddings = value[parlai_order(value.shape[0])].clone()
            for name in ('embeddings', 'encoder.embeddings', 'decoder.embeddings'):
                out[f'{name}.weight'] = embeddings
            continue
        match = re.match(r'^(encoder|decoder)\.embed_positions\.weight$', key)
        if match:
            rows = value[POSITION_OFFSET : POSITION_OFFSET + arch.n_positions]
            out[f'{match.group(1)}.position_embeddings.weight'] = rows.clone()
            continue
        match = _IN_PROJ_KEY.match(key)
        if match:
            stack, layer, module, kind = match.groups()
            target = _LAYER_MODULES[stack][module]
            for part, chunk in zip(('q_lin', 'k_lin', 'v_lin'), value.chunk(3, dim=0)):
                out[f'{stack}.layers.{layer}.{target}.{part}.{kind}'] = chunk.clone()
            continue
        name = parlai_key(key)
        if name is None:
            raise _unsupported(arch.arch, f'unexpected parameter {key}')
        out[name] = value
    if dropped:
        logging.info(f'Dropped {len(dropped)} classification-head tensors')
    return out


# the ParlAI side -----------------------------------------------------------------

# .opt keys that describe the converting process, not the model. Without a saved
# 'datatype' ('train'), `parlai eval_model -mf MODEL` builds no optimizer.
_RUNTIME_KEYS = (
    'datatype',
    'datapath',
    'parlai_home',
    'download_path',
    'override',
    'starttime',
    'model_file',
    'dict_file',
    'init_model',
    'init_opt',
)


def parlai_bart_opt(arch: BartArchitecture, dict_tokenizer: str) -> dict[str, Any]:
    """Every ParlAI ``bart`` option (as ``parlai train_model`` saves them) for ``arch``.

    Paths are left out (ParlAI finds ``MODEL.dict`` beside the model), fp16 and
    fp16 dictionary padding are off (the weights are float32 and the vocabulary
    is fairseq's), and truncation keeps every position inside ``n_positions``.
    """
    from parlai.core.params import ParlaiParser

    parsed = ParlaiParser(True, True).parse_args(['--model', 'bart'])
    opt = {k: v for k, v in parsed.items() if k not in _RUNTIME_KEYS}
    opt.update(arch.parlai_options())
    opt.update(
        {
            'model': 'bart',
            'dict_tokenizer': dict_tokenizer,
            'dict_lower': False,
            'dict_class': 'parlai.core.dict:DictionaryAgent',
            'force_fp16_tokens': False,
            'fp16': False,
            'init_fairseq_model': None,
            # text: __start__ + tokens + __end__; labels: + __end__, and the
            # decoder reads __end__ __start__ before them.
            'truncate': arch.n_positions,
            'text_truncate': arch.n_positions,
            'label_truncate': arch.n_positions - 1,
        }
    )
    return opt


def parlai_dict_text(tokens: list[tuple[str, int]]) -> str:
    """A ParlAI ``.dict`` file holding ParlAI's four specials, then ``tokens`` in order."""
    from parlai.core.dict import escape

    counts = (1000000003, 1000000002, 1000000001, 1000000000)
    lines = [f'{tok}\t{cnt}' for tok, cnt in zip(PARLAI_SPECIALS, counts)]
    lines += [f'{escape(tok)}\t{cnt}' for tok, cnt in tokens]
    return '\n'.join(lines) + '\n'


def _load_parlai_dict(path: str, opt: Mapping[str, Any]) -> Any:
    from parlai.core.dict import DictionaryAgent

    dict_opt = {k: v for k, v in opt.items() if k.startswith('dict_')}
    dict_opt.update(dict_file=path, force_fp16_tokens=False)
    return DictionaryAgent(dict_opt)


def vocabulary(
    dict_entries: list[tuple[str, int]], vocab_size: int, config: Mapping[str, Any]
) -> list[tuple[str, int]]:
    """The tokens at ids 4.. of the checkpoint, from its ``dict.txt`` entries.

    The embedding matrix has one row per id: ``4 + len(dict.txt)``, plus one for
    ``<mask>`` when the model was trained with fairseq's ``denoising`` task.
    """
    extra = vocab_size - len(FAIRSEQ_SPECIALS) - len(dict_entries)
    tokens = list(dict_entries)
    if extra == 1 and str(config.get('task') or '').endswith('denoising'):
        tokens.append((MASK_TOKEN, 0))
    elif extra != 0:
        raise DistillationError(
            f'the checkpoint has {vocab_size} embedding rows but its dict.txt gives '
            f'{len(FAIRSEQ_SPECIALS) + len(dict_entries)} ids (4 specials + '
            f'{len(dict_entries)} lines): give --dict the dict.txt the model was '
            'trained with'
        )
    return tokens


@dataclass
class ConvertedBart:
    """A converted model in memory: ParlAI options, dictionary text and model."""

    opt: dict[str, Any]
    dict_text: str
    model: Any  # parlai.agents.bart.modules.BartModel
    arch: BartArchitecture
    config: dict[str, Any]
    tokens: list[tuple[str, int]]


def build_parlai_bart(
    state: Mapping[str, Any],
    dict_entries: list[tuple[str, int]],
    dict_tokenizer: str = 'space',
) -> ConvertedBart:
    """Convert a loaded fairseq checkpoint into a ParlAI ``BartModel`` (eval mode).

    Checks the architecture, maps the weights and builds the dictionary; the
    model is loaded strictly, so every ParlAI parameter is accounted for.
    Nothing is written except a temporary dictionary (removed again).
    """
    from parlai.agents.bart.modules import BartModel

    if dict_tokenizer not in DICT_TOKENIZERS:
        raise DistillationError(
            f'--dict-tokenizer {dict_tokenizer} is not one of '
            f'{", ".join(DICT_TOKENIZERS)}'
        )
    config = fairseq_model_config(state)
    arch = check_architecture(config, state['model'])
    tokens = vocabulary(dict_entries, arch.vocab_size, config)
    weights = convert_state_dict(state['model'], arch)
    opt = parlai_bart_opt(arch, dict_tokenizer)
    dict_text = parlai_dict_text(tokens)
    with tempfile.TemporaryDirectory() as tmpdir:
        dict_path = os.path.join(tmpdir, 'model.dict')
        with open(dict_path, 'w', encoding='utf-8') as fh:
            fh.write(dict_text)
        logging.logger.mute()  # ParlAI would log the temporary path
        try:
            dictionary = _load_parlai_dict(dict_path, opt)
        finally:
            logging.logger.unmute()
    expected = list(PARLAI_SPECIALS) + [tok for tok, _ in tokens]
    for index, token in enumerate(expected):
        if dictionary.tok2ind.get(token) != index:
            raise DistillationError(
                f'dict.txt token {token!r} cannot keep id {index} in a ParlAI '
                'dictionary (it clashes with a ParlAI special token or an earlier '
                'line)'
            )
    if len(dictionary) != len(expected):
        raise DistillationError(
            f'the ParlAI dictionary has {len(dictionary)} ids, expected '
            f'{len(expected)}'
        )
    model = BartModel(opt, dictionary)
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k != 'START']
    if missing or result.unexpected_keys:
        names = (missing + list(result.unexpected_keys))[:3]
        raise _unsupported(
            arch.arch,
            f'its parameters do not fill a ParlAI bart model ({", ".join(names)})',
        )
    model.eval()
    return ConvertedBart(opt, dict_text, model, arch, config, tokens)


# checking against fairseq ------------------------------------------------------


def build_fairseq_model(state: Mapping[str, Any], dict_path: str) -> torch.nn.Module:
    """fairseq's own BART (eval mode) for a loaded checkpoint, without its data files."""
    require_fairseq('checking logits against fairseq')
    from fairseq.data import Dictionary
    from fairseq.models.bart import BARTModel

    dictionary = Dictionary.load(dict_path)
    config = fairseq_model_config(state)
    if len(dictionary) + 1 == state['model']['encoder.embed_tokens.weight'].shape[0]:
        dictionary.add_symbol(MASK_TOKEN)

    class _Task:
        source_dictionary = dictionary
        target_dictionary = dictionary

    args = argparse.Namespace(**config)
    model = BARTModel.build_model(args, _Task())
    model.load_state_dict(state['model'], strict=True)
    return model.eval()


@torch.no_grad()
def logits_max_abs_diff(
    fairseq_model: torch.nn.Module,
    parlai_model: torch.nn.Module,
    n_sequences: int = 8,
    max_length: int = 12,
    seed: int = 0,
) -> float:
    """Largest ``|fairseq logit - ParlAI logit|`` on random padded batches.

    Both models read the same tokens (in their own ids): encoder ``<s> w.. </s>``,
    decoder ``</s> <s> w..``, right-padded to different lengths. Logits are
    compared at every real decoder position, with ParlAI's columns put in
    fairseq's order.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = parlai_model.embeddings.weight.shape[0]
    limit = min(max_length, parlai_model.encoder.n_positions - 2)
    pad_f, bos, eos = 1, 0, 2
    lengths = torch.randint(1, limit + 1, (n_sequences,), generator=generator)
    src = torch.full((n_sequences, limit + 2), pad_f)
    prev = torch.full((n_sequences, limit + 2), pad_f)
    for i, n in enumerate(lengths.tolist()):
        words = torch.randint(len(FAIRSEQ_SPECIALS), vocab, (n,), generator=generator)
        src[i, : n + 2] = torch.cat([torch.tensor([bos]), words, torch.tensor([eos])])
        target = torch.randint(len(FAIRSEQ_SPECIALS), vocab, (n,), generator=generator)
        prev[i, : n + 2] = torch.cat([torch.tensor([eos, bos]), target])
    to_parlai = torch.arange(vocab)
    for parlai_id, fairseq_id in FAIRSEQ_ID_OF_PARLAI_ID.items():
        to_parlai[fairseq_id] = parlai_id
    fairseq_logits = fairseq_model(src, (src != pad_f).sum(1), prev)[0]
    encoded = parlai_model.encoder(to_parlai[src])
    latent, _ = parlai_model.decoder(to_parlai[prev], encoded)
    parlai_logits = parlai_model.output(latent)[:, :, parlai_order(vocab)]
    real = prev != pad_f
    return float((fairseq_logits - parlai_logits).abs()[real].max())


# the whole conversion ------------------------------------------------------------


@dataclass
class ConversionResult:
    """What :func:`convert_fairseq_bart` wrote."""

    model_file: str
    arch: BartArchitecture
    vocab_size: int
    max_abs_diff: float | None


def convert_fairseq_bart(
    checkpoint: str,
    dict_file: str,
    output: str,
    *,
    trust_checkpoint: bool = False,
    dict_tokenizer: str = 'space',
    verify: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> ConversionResult:
    """Write the ParlAI ``bart`` model ``output`` (+ ``.opt``, ``.dict``) of a fairseq BART.

    Every check (input files, pickle safety, architecture, vocabulary, and with
    ``verify`` the logits against fairseq's own model, within ``tolerance``)
    runs before anything is written; then the three files are each written to a
    temporary file and renamed into place, the model last. On any error nothing
    is left at ``output``. An existing ``output`` is replaced only with ``force``.
    """
    output = os.path.expanduser(output)
    if os.path.abspath(output) == os.path.abspath(checkpoint):
        raise DistillationError('--output must differ from the fairseq checkpoint')
    if os.path.exists(output) and not force:
        raise DistillationError(
            f'{output} already exists: pass --force to replace it, or choose '
            'another --output'
        )
    if os.path.isdir(output):
        raise DistillationError(f'--output {output} is a directory: name a file')
    if verify:
        require_fairseq('--verify')
    dict_entries = read_fairseq_dict(dict_file)
    state = load_fairseq_checkpoint(checkpoint, trust=trust_checkpoint)
    try:
        converted = build_parlai_bart(state, dict_entries, dict_tokenizer)
    except DistillationError as e:
        raise DistillationError(f'{checkpoint}: {e}') from None
    diff = None
    if verify:
        try:
            fairseq_model = build_fairseq_model(state, dict_file)
        except DistillationError:
            raise
        except Exception as e:
            raise DistillationError(
                f'{checkpoint}: fairseq could not rebuild the model for --verify '
                f'({describe_exception(e)[:200]})'
            ) from None
        diff = logits_max_abs_diff(fairseq_model, converted.model)
        if not math.isfinite(diff) or diff > tolerance:
            raise DistillationError(
                f'{checkpoint}: converted logits differ from fairseq\'s by up to '
                f'{diff:.3g} (> {tolerance:g}); nothing was written'
            )
        logging.info(f'Logits match fairseq within {diff:.3g}')

    states = {'model': converted.model.state_dict()}
    # All three are complete on disk before any is renamed: dict, opt, model last.
    with atomic_path(output) as model_tmp:
        with atomic_path(output + '.opt') as opt_tmp:
            with atomic_path(output + '.dict') as dict_tmp:
                with open(dict_tmp, 'w', encoding='utf-8') as fh:
                    fh.write(converted.dict_text)
                with open(opt_tmp, 'w', encoding='utf-8') as fh:
                    json.dump(converted.opt, fh, indent=4)
                    fh.write('\n')
                torch.save(states, model_tmp)
    return ConversionResult(output, converted.arch, len(converted.tokens) + 4, diff)
