"""Strip a narrow student of what only training needed, and make it a plain ParlAI model.

Removes the projection matrices and their optimizer state, and rewrites the
``.opt`` so the model loads with plain ``-m transformer/generator`` (or ``bart``):
the model class becomes the ParlAI base agent and every distillation option,
including the teacher's path, is dropped. In place by default, keeping the
originals as ``MODEL.orig`` and ``MODEL.opt.orig``; ``output`` writes a new
model (with its ``.opt``, ``.dict`` and the files a BPE dictionary keeps beside
it: ``.dict.codecs``, ``.dict-vocab.json``, ``.dict-merges.txt``) and leaves the
original untouched. ``--bpe-vocab``/``--bpe-merge`` then name those copies. Every
file is written to a temporary file first and renamed, so a failure never
leaves a half-written model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..agents.options import distillation_option_names
from ..dictionaries import side_files
from ..errors import DistillationError
from ..fileio import atomic_copy, atomic_path, atomic_write
from ..model_files import (
    OPTIMIZER_PARAM_NAMES,
    PROJECTION_PREFIX,
    find_dictionary,
    load_checkpoint,
    plain_model_name,
    read_model_opt,
)

BACKUP_SUFFIX = '.orig'
#: The option naming each byte-level BPE file ParlAI keeps beside a dictionary.
BPE_FILE_OPTIONS = {'-vocab.json': 'bpe_vocab', '-merges.txt': 'bpe_merge'}


def strip_optimizer_state(
    optimizer: dict[str, Any], names: list[str], removed: set[str]
) -> dict[str, Any]:
    """Drop the optimizer entries of ``removed`` parameters and renumber the rest.

    ``names[i]`` is the parameter the optimizer knows as index ``i``.
    """
    keep = [i for i, name in enumerate(names) if name not in removed]
    renumber = {old: new for new, old in enumerate(keep)}
    state = {
        renumber[int(i)]: value
        for i, value in optimizer.get('state', {}).items()
        if int(i) in renumber
    }
    groups = []
    for group in optimizer.get('param_groups', []):
        group = dict(group)
        group['params'] = [renumber[i] for i in group['params'] if i in renumber]
        groups.append(group)
    return {**optimizer, 'state': state, 'param_groups': groups}


def strip_states(states: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``states`` without projections; returns it and the removed names."""
    model = states['model']
    removed = [k for k in model if k.startswith(PROJECTION_PREFIX)]
    stripped = dict(states)
    stripped['model'] = {k: v for k, v in model.items() if k not in removed}
    names = stripped.pop(OPTIMIZER_PARAM_NAMES, None)
    if 'optimizer' in stripped and isinstance(stripped['optimizer'], dict):
        optimizer = stripped['optimizer']
        count = sum(len(g['params']) for g in optimizer.get('param_groups', []))
        if names is not None and count != len(names):
            # ParlAI's SafeFP16Optimizer (--fp16 true) keeps one flattened float32
            # copy of all parameters: the projections' slots cannot be cut out of
            # it, so the optimizer state goes (the weights are all a plain model
            # needs; fine-tuning it starts a fresh optimizer).
            del stripped['optimizer']
            stripped.pop('optimizer_type', None)
            return stripped, removed
        if names is None:
            # Projections are registered after the model is built, so they are the
            # optimizer's last parameters.
            names = [f'param{i}' for i in range(count - len(removed))] + removed
        stripped['optimizer'] = strip_optimizer_state(optimizer, names, set(removed))
    return stripped, removed


def plain_opt(opt: dict, model_file: str, output: str) -> dict:
    """The ``.opt`` of the stripped model: a plain ParlAI model, no teacher, no flags."""
    new = {k: v for k, v in opt.items() if k not in distillation_option_names()}
    new['model'] = plain_model_name(opt, model_file)
    new['model_file'] = output
    new['dict_file'] = output + '.dict'
    new['init_model'] = None
    new['init_opt'] = None
    new['allow_missing_init_opts'] = False
    new.pop('override', None)
    # Without a saved datatype, ParlAI takes the script's own (eval: valid), so
    # evaluating builds no optimizer; a saved 'train' would build one, and ParlAI's
    # default LR scheduler crashes on torch >= 2.7.
    new.pop('datatype', None)
    return new


@dataclass
class StripResult:
    """Where the stripped model is, what it loads as, and which tensors went."""

    model_file: str
    model: str
    removed: list[str]


def remove_projection_matrices(
    model_file: str,
    output: str | None = None,
    backup: bool = True,
    opt_only: bool = False,
) -> StripResult:
    """Strip ``model_file`` (in place, or into ``output``).

    Raises :class:`DistillationError`, before writing anything, when the file is
    missing, not a ParlAI model, unreadable, or has no projections (unless
    ``opt_only``: then only the ``.opt`` of a wide student is rewritten).
    """
    opt = read_model_opt(model_file, role='student')
    states = load_checkpoint(model_file)
    stripped, removed = strip_states(states)
    is_student = bool(distillation_option_names() & set(opt))
    if not removed and not opt_only:
        hint = (
            ' (a wide student has none: it already loads with -m '
            'transformer/generator; pass --opt-only to rewrite just its .opt)'
            if is_student
            else ''
        )
        raise DistillationError(
            f'{model_file} has no projection matrices to remove{hint}; '
            'nothing was changed'
        )
    if opt_only and not is_student:
        raise DistillationError(
            f'{model_file} is not a distillation student (its .opt has no '
            'distillation options); nothing was changed'
        )
    target = output or model_file
    dict_source = find_dictionary(model_file, opt, 'nothing was changed')
    if backup and output is None:
        for path in (model_file + BACKUP_SUFFIX, model_file + '.opt' + BACKUP_SUFFIX):
            if os.path.exists(path):
                raise DistillationError(
                    f'backup {path} already exists: move it away or pass --no-backup; '
                    'nothing was changed'
                )
    new_opt = plain_opt(opt, model_file, target)
    for suffix in side_files(dict_source):
        # The byte-level vocabulary and merges now sit beside the new dictionary.
        key = BPE_FILE_OPTIONS.get(suffix)
        if key and new_opt.get(key):
            new_opt[key] = target + '.dict' + suffix

    if backup and output is None:
        atomic_copy(model_file, model_file + BACKUP_SUFFIX)
        atomic_copy(model_file + '.opt', model_file + '.opt' + BACKUP_SUFFIX)
    if os.path.abspath(dict_source) != os.path.abspath(target + '.dict'):
        atomic_copy(dict_source, target + '.dict')
        if os.path.isfile(dict_source + '.opt'):
            atomic_copy(dict_source + '.opt', target + '.dict.opt')
        for suffix, path in side_files(dict_source).items():
            atomic_copy(path, target + '.dict' + suffix)
    if removed or output is not None:
        with atomic_path(target) as tmp:
            torch.save(stripped, tmp)
    atomic_write(
        target + '.opt',
        lambda fh: (json.dump(new_opt, fh, indent=4), fh.write('\n')),
    )
    return StripResult(target, new_opt['model'], removed)
