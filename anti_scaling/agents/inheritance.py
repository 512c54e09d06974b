"""What a student's options become: its teacher's, or its own checkpoint's.

A student inherits the teacher's dictionary, architecture and text-processing
options unless the command line sets them; a resumed run reuses the
distillation options saved with its checkpoint.
"""

from __future__ import annotations

import os

from parlai.core.opt import Opt

from ..option_keys import GENERAL_TO_SPECIFIC, INHERITED_KEYS
from .options import distillation_option_names


def restore_checkpoint_options(opt: dict, user_set: set[str]) -> dict[str, object]:
    """When resuming from ``MODEL.checkpoint``, reuse its distillation options.

    ParlAI rebuilds the options of an interrupted run from the command line, so
    without this a resumed run would fall back to default layer maps. Options
    given on the command line still win. Returns what was restored.
    """
    init_model = opt.get('init_model') or ''
    model_file = opt.get('model_file') or ''
    if not (model_file and init_model == model_file + '.checkpoint'):
        return {}
    if not os.path.isfile(init_model + '.opt'):
        return {}
    saved = Opt.load(init_model + '.opt')
    restored = {}
    for key in distillation_option_names():
        if key in saved and key not in user_set and saved[key] != opt.get(key):
            opt[key] = restored[key] = saved[key]
    return restored


def inherit_teacher_options(
    opt: dict, teacher_opt: dict, user_set: set[str], teacher_dict_file: str
) -> dict[str, object]:
    """Copy the teacher's options into ``opt`` wherever the user did not set them.

    ``user_set`` holds the option names given on the command line (ParlAI's
    ``opt['override']``). Returns what was inherited. The student always reads
    the teacher's dictionary unless ``--dict-file`` was given.
    """
    blocked = set(user_set)
    for general, specific in GENERAL_TO_SPECIFIC.items():
        if general in user_set:
            for key in specific:
                if key not in user_set:
                    blocked.add(key)
                    if key in ('n_encoder_layers', 'n_decoder_layers'):
                        opt[key] = -1
                    else:
                        opt[key] = None
    inherited: dict[str, object] = {}
    for key in INHERITED_KEYS:
        if key in blocked or key not in teacher_opt:
            continue
        value = teacher_dict_file if key == 'dict_file' else teacher_opt[key]
        if opt.get(key) != value:
            inherited[key] = value
        opt[key] = value
    return inherited


def stack_layers(opt: dict, stack: str) -> int:
    """Layer count of ``stack`` ('encoder'/'decoder') as ParlAI resolves it."""
    specific = opt.get(f'n_{stack}_layers')
    if specific is not None and int(specific) > 0:
        return int(specific)
    return int(opt['n_layers'])
