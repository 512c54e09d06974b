"""Export a ParlAI generator as a CTranslate2 model folder.

The folder holds CTranslate2's ``model.bin``, ``config.json`` and
``shared_vocabulary.json`` (written by its converter API from the
specification of :mod:`.spec`), the tokenizer and history settings the
Hugging Face export writes (``tokenizer.json``, ``parlai_inputs.json``: ParlAI's
token ids and history formatting), ``ct2_generation.json`` (:mod:`.generation`),
``README.md`` and, with ``verify``, ``verification.json``. Every check runs
before anything is written; the folder is built beside its place and renamed
into it at the end, so a failure leaves nothing behind. A student that still
holds its projections is stripped on the fly (the input file is not changed).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ...errors import DistillationError
from ...fileio import atomic_directory
from ..hf.families import AIAYN, FAMILIES, Family, family_of_opt
from ..hf.history import input_settings
from ..hf.parlai_inputs import SETTINGS_FILE
from ..hf.tokenizer import build_tokenizer
from ..parlai_model import check_output_folder, load_for_export
from .generation import GENERATION_FILE, generation_settings
from .readme import folder_readme
from .spec import converter
from .weight_types import QUANTIZATIONS

#: The layouts CTranslate2 expresses (transformers' three and ``aiayn``).
CT2_FAMILIES = (*FAMILIES, AIAYN)


def require_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or one line naming the extra that installs it."""
    try:
        import ctranslate2
    except ImportError:
        raise DistillationError(
            "ctranslate2 is not installed: pip install -c constraints.txt -e '.[serve]'"
        ) from None
    return ctranslate2


def check_quantization(quantization: str, device: str) -> None:
    """Refuse (one line) a weight type unknown, or one ``device`` cannot run."""
    ctranslate2 = require_ctranslate2()
    if quantization not in QUANTIZATIONS:
        raise DistillationError(
            f'--quantization {quantization}: choose one of {", ".join(QUANTIZATIONS)}'
        )
    if device == 'cuda' and ctranslate2.get_cuda_device_count() == 0:
        raise DistillationError(
            f'--device cuda: no CUDA device here (needed for --quantization '
            f'{quantization}); nothing was written'
        )
    supported = ctranslate2.get_supported_compute_types(device)
    if quantization not in supported:
        raise DistillationError(
            f'--quantization {quantization} cannot run on {device} (it runs: '
            f'{", ".join(sorted(supported))}); nothing was written'
        )


def ct2_family(opt: dict, parlai_model: str, model_file: str) -> Family:
    """The model's layout, refused in one line if CTranslate2 cannot express it."""
    return family_of_opt(opt, parlai_model, model_file, CT2_FAMILIES, 'CTranslate2')


@dataclass
class Ct2ExportResult:
    """Where the export went, its weight type, and what its verification found."""

    out_dir: str
    variant: str
    quantization: str
    verification: dict | None = None
    files: list[str] = field(default_factory=list)


def _write_json(path: str, value: Any) -> None:
    with open(path, 'w', encoding='utf-8') as fh:
        json.dump(value, fh, indent=2)
        fh.write('\n')


def write_folder(agent: Any, family: Family, folder: str, quantization: str) -> None:
    """The model, tokenizer and settings of ``agent`` in ``folder`` (replaced)."""
    converter(agent, family).convert(folder, quantization=quantization, force=True)
    tokenizer = build_tokenizer(agent.dict, agent.opt, family.decoder_prefix == 2)
    tokenizer.save(os.path.join(folder, 'tokenizer.json'))
    _write_json(os.path.join(folder, SETTINGS_FILE), input_settings(agent, family))
    _write_json(os.path.join(folder, GENERATION_FILE), generation_settings(agent))


def export_to_ct2(
    model_file: str,
    out_dir: str,
    datapath: str,
    quantization: str = 'float32',
    overwrite: bool = False,
    verify: bool = False,
    device: str = 'cpu',
    verify_options: dict[str, Any] | None = None,
) -> Ct2ExportResult:
    """Write ``model_file`` as a CTranslate2 folder ``out_dir`` (see the module doc).

    ``quantization``: the stored weight type, refused in one line when
    ``device`` cannot run it. ``verify``: compare with ParlAI first
    (:func:`.verify.verify_folder`, on a float32 copy; ``verify_options``
    passed on); a failed check raises :class:`DistillationError` and nothing is
    written.
    """
    check_output_folder(out_dir, overwrite)
    check_quantization(quantization, device)
    agent, family = load_for_export(model_file, datapath, ct2_family, strip=True)
    report = None
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_folder(agent, family, tmp, quantization)
        if verify:
            from .verify import verify_folder

            with tempfile.TemporaryDirectory(prefix='anti_scaling_ct2_') as scratch:
                float_folder, quantized = tmp, None
                if quantization != 'float32':
                    float_folder, quantized = os.path.join(scratch, 'f32'), tmp
                    write_folder(agent, family, float_folder, 'float32')
                options = {'device': device, **(verify_options or {})}
                report = verify_folder(
                    agent, float_folder, datapath, quantized, **options
                )
            _write_json(os.path.join(tmp, 'verification.json'), report)
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as fh:
            fh.write(folder_readme(model_file, family, quantization, tmp, report))
        files = sorted(os.listdir(tmp))
    return Ct2ExportResult(out_dir, family.variant, quantization, report, files)
