"""Export a ParlAI generator to a Hugging Face transformers folder.

The folder holds what ``AutoModelForSeq2SeqLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``), plus ``parlai_inputs.py``/``parlai_inputs.json``
(ParlAI's way of building the input), ``README.md`` and, on request,
``verification.json`` and an int8 copy (``int8/model_int8.pt``). Every check
runs before anything is written, and the folder is written beside its place
and renamed into it at the end: a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import DistillationError
from ...fileio import atomic_directory
from ...model_files import (
    PROJECTION_PREFIX,
    load_checkpoint,
    load_generator_agent,
    model_file_opt,
    plain_model_name,
    read_model_opt,
)
from ...report.quantize import SCHEMES, quantize_int8
from . import parlai_inputs
from .families import Family, Shape, family_of_opt, hf_config
from .generation import generation_config
from .history import input_settings
from .readme import folder_readme
from .tokenizer import build_tokenizer, check_dictionary, tokenizer_config
from .weights import Layout, parlai_to_hf

INT8_DIR = 'int8'
INT8_FILE = 'model_int8.pt'


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


def load_for_export(model_file: str, datapath: str) -> tuple[Any, Family]:
    """Check ``model_file`` and load it as a plain ParlAI agent; and its family.

    Refuses (one line) a student with its projections still inside, a variant
    or activation with no transformers counterpart, and a dictionary no
    transformers tokenizer reproduces.
    """
    opt = read_model_opt(model_file, role='ParlAI')
    plain = plain_model_name(opt, model_file)
    if opt['model'] != plain:
        states = load_checkpoint(model_file)
        if any(k.startswith(PROJECTION_PREFIX) for k in states['model']):
            raise DistillationError(
                f'{model_file} still holds its training projections: strip it first '
                f'(python -m anti_scaling.scripts.remove_projection_matrices '
                f'{model_file}); nothing was written'
            )
    family = family_of_opt(opt, plain, model_file)
    check_dictionary(opt, model_file)
    overrides = {
        'model': plain,
        'no_cuda': True,
        'datatype': 'valid',
        'interactive_mode': False,
        'skip_generation': False,
    }
    agent = load_generator_agent(model_file_opt(model_file, datapath, overrides))
    agent.model.eval()
    return agent, family


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
    """The options :func:`.weights.parlai_to_hf` needs."""
    opt = agent.opt
    return Layout(
        family=family,
        n_encoder_layers=shape.n_encoder_layers,
        n_decoder_layers=shape.n_decoder_layers,
        start_id=shape.start_id,
        output_scaling=float(opt.get('output_scaling', 1.0) or 1.0),
        embeddings_scale=bool(opt.get('embeddings_scale', True)),
    )


def build_hf_model(agent: Any, family: Family) -> Any:
    """The transformers model holding ``agent``'s weights (eval mode, float32)."""
    import transformers

    shape = model_shape(agent)
    layout = model_layout(agent, family, shape)
    config = transformers.AutoConfig.for_model(
        **hf_config(family, shape, agent.opt, layout.untied)
    )
    model = getattr(transformers, family.architecture)(config)
    model.load_state_dict(parlai_to_hf(agent.model.state_dict(), layout), strict=True)
    model.generation_config = transformers.GenerationConfig(
        **generation_config(agent, family)
    )
    return model.eval()


def write_tokenizer(agent: Any, family: Family, folder: str) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` of the agent's dictionary."""
    tokenizer = build_tokenizer(agent.dict, agent.opt, family.decoder_prefix == 2)
    tokenizer.save(os.path.join(folder, 'tokenizer.json'))
    with open(
        os.path.join(folder, 'tokenizer_config.json'), 'w', encoding='utf-8'
    ) as fh:
        json.dump(
            tokenizer_config(agent.dict, agent.opt, agent.text_truncate), fh, indent=2
        )
        fh.write('\n')


def write_int8(model: Any, folder: str) -> str:
    """The int8 copy's weights (every encoder/decoder linear layer quantised)."""
    quantized = quantize_int8(model, scope='model')
    os.makedirs(os.path.join(folder, INT8_DIR), exist_ok=True)
    path = os.path.join(folder, INT8_DIR, INT8_FILE)
    torch.save(quantized.state_dict(), path)
    return path


@dataclass
class ExportResult:
    """Where the export went, as what, and what its verification found."""

    out_dir: str
    architecture: str
    verification: dict | None = None
    files: list[str] = field(default_factory=list)


def export_to_hf(
    model_file: str,
    out_dir: str,
    datapath: str,
    overwrite: bool = False,
    verify: bool = False,
    quantize: str | None = None,
    verify_options: dict[str, Any] | None = None,
) -> ExportResult:
    """Write ``model_file`` as a transformers folder ``out_dir`` (see the module doc).

    ``verify``: compare the written folder with ParlAI first
    (:func:`.verify.verify_export`, ``verify_options`` passed on); a failed
    check raises :class:`DistillationError` and nothing is written.
    """
    check_output_folder(out_dir, overwrite)
    if quantize is not None and quantize not in SCHEMES:
        raise DistillationError(f'--quantize {quantize}: choose one of {SCHEMES}')
    agent, family = load_for_export(model_file, datapath)
    model = build_hf_model(agent, family)
    settings = input_settings(agent, family)
    report = None
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        write_tokenizer(agent, family, tmp)
        shutil.copyfile(parlai_inputs.__file__, os.path.join(tmp, 'parlai_inputs.py'))
        with open(
            os.path.join(tmp, parlai_inputs.SETTINGS_FILE), 'w', encoding='utf-8'
        ) as fh:
            json.dump(settings, fh, indent=2)
            fh.write('\n')
        if quantize:
            write_int8(model, tmp)
        if verify:
            from .verify import verify_export

            report = verify_export(
                agent, tmp, family, datapath, **(verify_options or {})
            )
            with open(
                os.path.join(tmp, 'verification.json'), 'w', encoding='utf-8'
            ) as fh:
                json.dump(report, fh, indent=2)
                fh.write('\n')
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as fh:
            fh.write(
                folder_readme(
                    model_file,
                    family,
                    model.config,
                    model.generation_config,
                    settings,
                    report,
                    bool(quantize),
                )
            )
        files = sorted(os.listdir(tmp))
    return ExportResult(out_dir, family.architecture, report, files)
