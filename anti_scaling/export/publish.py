"""Turn a stripped student into a zoo archive and its manifest entry.

    python -m anti_scaling.scripts.zoo publish MODEL_FILE --name NAME --output-dir DIR \\
        [--recipe R] [--teacher T] [--report REPORT.json] [--merge-into MANIFEST]

writes ``DIR/NAME.tar.gz`` (``model``, ``model.opt``, ``model.dict`` and, if
present, ``model.dict.opt`` and the files a BPE dictionary keeps beside it, at
the archive's top level) and ``DIR/NAME.json``,
a manifest holding the one entry: file name, SHA-256, size, the recipe and
teacher, the report figures. ``DIR/NAME.json`` is itself a user manifest: with
``ANTI_SCALING_ZOO_MANIFEST=DIR/NAME.json`` the model downloads from ``DIR`` (or
from wherever ``--base-url`` says it will be served, or from a mirror).

The archive is reproducible (sorted members, fixed owner and times). The
``.opt`` inside no longer names paths of the publishing machine
(``model_file``, ``dict_file``, ``init_model``, ``init_opt``, ``datapath``...):
ParlAI fills them in where the model is loaded. Unless ``keep_training_state``,
the checkpoint keeps only the weights (no optimizer or scheduler state), which
is all that loading and fine-tuning from ``--init-model`` need.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..agents.options import distillation_option_names
from ..agents.recipe_files import resolve_recipe
from ..dictionaries import side_files
from ..errors import DistillationError
from ..fileio import atomic_path, read_json, sha256_of
from ..model_files import (
    PROJECTION_PREFIX,
    find_dictionary,
    load_checkpoint,
    read_model_opt,
)
from ..option_keys import (
    ARCHITECTURE_KEYS,
    DICTIONARY_FILE_KEYS,
    MACHINE_ONLY_KEYS,
    MACHINE_PATH_KEYS,
)
from ..zoo.manifest import (
    NAME_PATTERN,
    ZooFile,
    ZooModel,
    manifest_json,
    merge_into_manifest,
    write_manifest,
)


@dataclass
class PublishResult:
    """What :func:`publish_model` wrote."""

    archive: str
    manifest: str
    model: ZooModel


def _check_stripped(model_file: str, opt: dict, states: dict[str, Any]) -> None:
    strip = f'python -m anti_scaling.scripts.remove_projection_matrices {model_file}'
    if any(k.startswith(PROJECTION_PREFIX) for k in states['model']):
        raise DistillationError(
            f'{model_file} still has projection matrices: run {strip} first'
        )
    leftover = distillation_option_names() & set(opt)
    if leftover or 'anti_scaling' in str(opt.get('model', '')):
        raise DistillationError(
            f'{model_file} is not stripped (its .opt names {opt.get("model")} and '
            f'distillation options): run {strip} (with --opt-only for a wide '
            'student) first'
        )


def _clean_opt(opt: dict) -> dict:
    new = {k: v for k, v in opt.items() if k not in MACHINE_ONLY_KEYS}
    for key in MACHINE_PATH_KEYS:
        new[key] = None
    for key in DICTIONARY_FILE_KEYS:
        # ParlAI reads the byte-level files beside the archive's model.dict.
        if new.get(key):
            new[key] = None
    return new


def _read_report(path: str) -> dict[str, Any]:
    report = read_json(path, 'report')
    if not isinstance(report, dict):
        raise DistillationError(f'report {path} must hold a JSON object')
    return report


def _write_archive(path: str, members: dict[str, str], mtime: int) -> None:
    """A reproducible ``.tar.gz`` of ``members`` (archive name -> source file)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as raw:
            with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0) as gz:
                with tarfile.open(
                    fileobj=gz, mode='w', format=tarfile.PAX_FORMAT
                ) as tar:
                    for arcname in sorted(members):
                        source = members[arcname]
                        info = tarfile.TarInfo(arcname)
                        info.size = os.path.getsize(source)
                        info.mtime = mtime
                        info.mode = 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ''
                        with open(source, 'rb') as fh:
                            tar.addfile(info, fh)


def publish_model(
    model_file: str,
    name: str,
    output_dir: str,
    *,
    recipe: str | None = None,
    teacher: str | None = None,
    report: str | None = None,
    description: str | None = None,
    kind: str = 'student',
    base_url: str | None = None,
    merge_into: str | None = None,
    keep_training_state: bool = False,
) -> PublishResult:
    """Write ``output_dir/NAME.tar.gz`` and ``output_dir/NAME.json`` for ``model_file``.

    ``model_file`` must be a stripped model (plain ``transformer/generator`` or
    ``bart`` ``.opt``, no projection matrices). ``recipe`` must be a known recipe;
    ``teacher`` is recorded as given (zoo name or path); ``report`` is a JSON
    file whose object is recorded as the entry's report figures. ``merge_into``
    also adds the entry to that manifest file. Every file is written atomically.
    Raises :class:`DistillationError` (nothing written) for bad input.
    """
    import torch

    if not NAME_PATTERN.match(name or ''):
        raise DistillationError(
            f'bad model name {name!r}: use letters, digits, "_" or "-" '
            '(it becomes zoo:anti_scaling/NAME/model)'
        )
    if recipe is not None:
        resolve_recipe(recipe)
    if kind not in ('student', 'teacher'):
        raise DistillationError(f'--kind {kind!r}: use student or teacher')
    report_data = _read_report(report) if report else None
    opt = read_model_opt(model_file, role='student')
    dict_file = find_dictionary(model_file, opt, 'a published model needs it')
    states = load_checkpoint(model_file)
    _check_stripped(model_file, opt, states)
    agent = str(opt['model'])  # a stripped model names its plain ParlAI agent

    os.makedirs(output_dir, exist_ok=True)
    archive = os.path.join(output_dir, f'{name}.tar.gz')
    manifest_path = os.path.join(output_dir, f'{name}.json')
    staging = tempfile.mkdtemp(prefix=f'.{name}.', suffix='.tmp', dir=output_dir)
    try:
        members = {'model.dict': dict_file}
        if os.path.isfile(dict_file + '.opt'):
            members['model.dict.opt'] = dict_file + '.opt'
        for suffix, path in side_files(dict_file).items():
            members['model.dict' + suffix] = path  # BPE codecs, vocabulary, merges
        if keep_training_state:
            members['model'] = model_file
        else:
            weights = os.path.join(staging, 'model')
            torch.save({'model': states['model']}, weights)
            members['model'] = weights
        opt_path = os.path.join(staging, 'model.opt')
        with open(opt_path, 'w', encoding='utf-8') as fh:
            json.dump(_clean_opt(opt), fh, indent=4)
            fh.write('\n')
        members['model.opt'] = opt_path
        _write_archive(archive, members, int(os.path.getmtime(model_file)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    parameters = sum(
        int(v.numel()) for v in states['model'].values() if hasattr(v, 'numel')
    )
    architecture = {k: opt[k] for k in ARCHITECTURE_KEYS if k in opt}
    if description is None:
        parts = [f'{kind} {name} ({parameters:,} parameters)']
        if recipe:
            parts.append(f'recipe {recipe}')
        if teacher:
            parts.append(f'teacher {teacher}')
        description = ', '.join(parts)
    model = ZooModel(
        name=name,
        description=description,
        kind=kind,
        files=(
            ZooFile(
                url=os.path.basename(archive),
                sha256=sha256_of(archive),
                size=os.path.getsize(archive),
                unpack=True,
            ),
        ),
        model_file='model',
        agent=agent,
        format='parlai',
        base_url=base_url,
        recipe=recipe,
        teacher=teacher,
        report=report_data,
        extra={
            'architecture': architecture,
            'parameters': parameters,
            'published_with': f'anti_scaling {__version__}',
        },
    )
    write_manifest(manifest_path, manifest_json([model]))
    if merge_into:
        merge_into_manifest(merge_into, model)
    return PublishResult(archive, manifest_path, model)
