"""Export a ParlAI generator to a Hugging Face transformers folder.

The folder holds what ``AutoModelForSeq2SeqLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``), plus ``parlai_inputs.py``/``parlai_inputs.json``
(ParlAI's way of building the input), ``README.md`` and, on request,
``verification.json`` and an int8 copy (``int8/model_int8.pt``). Every check
runs before anything is written, and the folder is written beside its place
and renamed into it at the end: a failure leaves nothing behind. The model is
loaded and described by :mod:`..parlai_model`, which the CTranslate2 export
shares.
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
from ...report.quantize import SCHEMES, quantize_int8
from ..parlai_model import (
    check_output_folder,
    load_for_export,
    model_layout,
    model_shape,
)
from . import parlai_inputs
from .families import Family, hf_config
from .generation import generation_config
from .history import input_settings
from .readme import folder_readme
from .tokenizer import build_tokenizer, tokenizer_config
from .weights import parlai_to_hf

INT8_DIR = 'int8'
INT8_FILE = 'model_int8.pt'


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
