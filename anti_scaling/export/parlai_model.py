"""The one description of a ParlAI generator that every export format reads.

:func:`load_for_export` checks a model file and loads it as a plain ParlAI
agent (a student still holding its training projections is refused, or
stripped into a temporary copy when the format asks for it; the input file is
never changed); :func:`model_shape` reads its sizes from the weights and
:func:`model_layout` the options the weight mapping of :mod:`.hf.weights`
needs. The Hugging Face export (:mod:`.hf`) and the CTranslate2 export
(:mod:`.ct2`) both start here.

A model trained without ``--text-truncate`` (or with one longer than its
``--n-positions``) cannot read a longer context: ParlAI's position embedding
fails on it. :func:`load_for_export` therefore caps the loaded agent's text and
label truncation at the model's position count, which is what the exported
folders record and what their verification feeds both sides.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from ..errors import DistillationError
from ..model_files import (
    PROJECTION_PREFIX,
    load_checkpoint,
    load_generator_agent,
    model_file_opt,
    plain_model_name,
    read_model_opt,
)
from .hf.families import Family, Shape, family_of_opt
from .hf.tokenizer import check_dictionary
from .hf.weights import Layout

#: ``family_of(opt, parlai_model, model_file)``: the layout a format accepts.
FamilyOf = Callable[[dict, str, str], Family]


def check_output_folder(out_dir: str, overwrite: bool) -> None:
    """Refuse (one line) an existing output folder unless ``overwrite``."""
    if os.path.exists(out_dir) and not overwrite:
        raise DistillationError(
            f'{out_dir} exists: pass --overwrite to replace it, or choose another '
            'folder; nothing was written'
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DistillationError(
            f'{out_dir} exists and is not a folder; nothing was written'
        )


def _has_projections(model_file: str) -> bool:
    states = load_checkpoint(model_file)
    return any(k.startswith(PROJECTION_PREFIX) for k in states['model'])


def load_for_export(
    model_file: str,
    datapath: str,
    family_of: FamilyOf = family_of_opt,
    strip: bool = False,
) -> tuple[Any, Family]:
    """Check ``model_file`` and load it as a plain ParlAI agent (eval mode); and its family.

    Refuses (one line) a variant or activation ``family_of`` rejects, a
    dictionary no ``tokenizers`` tokenizer reproduces and, unless ``strip``, a
    student with its projections still inside. With ``strip`` such a student
    is stripped into a temporary folder (removed before returning) and loaded
    from there. Truncation is capped at the model's positions (module doc).
    """
    opt = read_model_opt(model_file, role='ParlAI')
    plain = plain_model_name(opt, model_file)
    family = family_of(opt, plain, model_file)
    check_dictionary(opt, model_file)
    unstripped = opt['model'] != plain and _has_projections(model_file)
    if unstripped and not strip:
        raise DistillationError(
            f'{model_file} still holds its training projections: strip it first '
            f'(python -m anti_scaling.scripts.remove_projection_matrices '
            f'{model_file}); nothing was written'
        )
    overrides = {
        'model': plain,
        'no_cuda': True,
        'datatype': 'valid',
        'interactive_mode': False,
        'skip_generation': False,
    }
    if unstripped:
        from .strip import remove_projection_matrices

        with tempfile.TemporaryDirectory(prefix='anti_scaling_strip_') as tmp:
            copy = remove_projection_matrices(
                model_file, output=os.path.join(tmp, 'model'), backup=False
            ).model_file
            agent = load_generator_agent(model_file_opt(copy, datapath, overrides))
    else:
        agent = load_generator_agent(model_file_opt(model_file, datapath, overrides))
    agent.model.eval()
    cap_truncation(agent)
    return agent, family


def positions_of(agent: Any) -> int:
    """How many positions the loaded model's encoder and decoder can read."""
    model = agent.model
    return min(
        model.encoder.position_embeddings.weight.size(0),
        model.decoder.position_embeddings.weight.size(0),
    )


def cap_truncation(agent: Any) -> None:
    """Cut ``agent``'s text and label truncation (and its opt's) to its positions.

    The opt is changed too, so that agents built from ``agent.share()`` (as the
    verification builds them) truncate the same way.
    """
    limit = positions_of(agent)
    for key in ('text_truncate', 'label_truncate'):
        value = getattr(agent, key, None)
        if value is None or value > limit:
            setattr(agent, key, limit)
            agent.opt[key] = limit


def model_shape(agent: Any) -> Shape:
    """Sizes from the loaded model's weights; special ids from its dictionary."""
    model, d = agent.model, agent.dict
    encoder, decoder = model.encoder, model.decoder
    if len(encoder.layers) == 0 or len(decoder.layers) == 0:
        raise DistillationError(
            'a model with no encoder or decoder layer cannot be exported'
        )
    return Shape(
        vocab_size=model.embeddings.weight.size(0),
        d_model=model.embeddings.weight.size(1),
        ffn_size=encoder.layers[0].ffn.lin1.weight.size(0),
        n_heads=encoder.n_heads,
        n_encoder_layers=len(encoder.layers),
        n_decoder_layers=len(decoder.layers),
        n_positions=encoder.position_embeddings.weight.size(0),
        pad_id=d[d.null_token],
        start_id=d[d.start_token],
        end_id=d[d.end_token],
        unk_id=d[d.unk_token],
    )


def model_layout(agent: Any, family: Family, shape: Shape) -> Layout:
    """The options :func:`.hf.weights.parlai_to_hf` needs."""
    opt = agent.opt
    return Layout(
        family=family,
        n_encoder_layers=shape.n_encoder_layers,
        n_decoder_layers=shape.n_decoder_layers,
        start_id=shape.start_id,
        output_scaling=float(opt.get('output_scaling', 1.0) or 1.0),
        embeddings_scale=bool(opt.get('embeddings_scale', True)),
    )
