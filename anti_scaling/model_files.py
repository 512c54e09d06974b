"""ParlAI model files: find, read and load them, with one error message for each fault.

A ParlAI model is ``MODEL`` (a torch checkpoint with a ``model`` state dict),
``MODEL.opt`` (its options, naming its agent class in ``model``) and usually
``MODEL.dict``. A distillation student's checkpoint also holds its training-only
projections under :data:`PROJECTION_PREFIX` and the names of its optimised
parameters under :data:`OPTIMIZER_PARAM_NAMES`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from typing import Any

import torch
from parlai.core.opt import Opt

from .dictionaries import check_tokenizer_installed, side_files
from .errors import DistillationError, describe_exception
from .fileio import atomic_write

ZOO_PREFIXES = ('zoo:', 'models:', 'izoo:')
#: Attribute of a student model holding its projections (an ``nn.ModuleDict``).
PROJECTIONS_ATTR = 'distill_projections'
#: Prefix of the projections' keys in a student's state dict.
PROJECTION_PREFIX = PROJECTIONS_ATTR + '.'
#: Checkpoint key listing the names of the optimised parameters in optimizer
#: order, so that projections and their optimizer state can be stripped exactly.
OPTIMIZER_PARAM_NAMES = 'optimizer_param_names'


def resolve_model_file(path: str, datapath: str | None) -> str:
    """Map a ``zoo:`` path to its file (ParlAI downloads it if needed); else return as is."""
    if path.startswith(ZOO_PREFIXES):
        from parlai.core.build_data import modelzoo_path

        return modelzoo_path(datapath, path)
    return os.path.expanduser(path)


def read_model_opt(model_file: str, role: str = 'teacher') -> Opt:
    """Read ``MODEL.opt`` after checking that ``model_file`` is a ParlAI model file.

    ``role`` names the file in messages (``teacher``, ``student``, ``model``).
    Raises :class:`DistillationError` (one line) when the file or its ``.opt`` is
    missing or unreadable, or when the package its ``--dict-tokenizer`` needs
    cannot be imported.
    """
    if not os.path.isfile(model_file):
        hint = (
            ' (give --teacher-model the path of a trained ParlAI model file, or a '
            'zoo: path)'
            if role == 'teacher'
            else ''
        )
        raise DistillationError(f'{role} model file not found: {model_file}{hint}')
    optfile = model_file + '.opt'
    if not os.path.isfile(optfile):
        raise DistillationError(
            f'{model_file} is not a ParlAI model: {optfile} is missing (a model '
            'trained with parlai train_model has both MODEL and MODEL.opt)'
        )
    try:
        opt = Opt.load(optfile)
    except (json.JSONDecodeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DistillationError(
            f'{model_file} is not a ParlAI model: {optfile} is unreadable '
            f'({type(e).__name__})'
        ) from None
    if not isinstance(opt, dict) or not opt.get('model'):
        raise DistillationError(
            f'{model_file} is not a ParlAI model: {optfile} does not name a model '
            "class ('model' key)"
        )
    check_tokenizer_installed(opt, f'{role} {model_file}')
    return opt


def model_class_of(opt: dict, model_file: str) -> type:
    """The ParlAI agent class named in a model's options."""
    from parlai.core.loader import load_agent_module

    try:
        return load_agent_module(opt['model'])
    except Exception as e:  # ParlAI raises several types for an unknown model
        raise DistillationError(
            f"{model_file}: cannot load its model class {opt['model']!r} "
            f'({describe_exception(e)})'
        ) from None


def plain_model_name(opt: dict, model_file: str) -> str:
    """The ParlAI model a distilled student loads as: ``bart`` or ``transformer/generator``."""
    from parlai.agents.bart.bart import BartAgent

    if issubclass(model_class_of(opt, model_file), BartAgent):
        return 'bart'
    return 'transformer/generator'


def find_dictionary(model_file: str, opt: dict, consequence: str) -> str:
    """``MODEL.dict``, else the ``dict_file`` its options name; one-line
    :class:`DistillationError` ending with ``consequence`` if neither exists."""
    for path in (model_file + '.dict', opt.get('dict_file')):
        if path and os.path.isfile(path):
            return path
    raise DistillationError(
        f'no dictionary found for {model_file} ({model_file}.dict is missing); '
        f'{consequence}'
    )


def load_checkpoint(model_file: str) -> dict[str, Any]:
    """Read a ParlAI checkpoint (the user's own file: it is unpickled as ParlAI does)."""
    import parlai.utils.pickle

    try:
        with open(model_file, 'rb') as fh:
            states = torch.load(
                fh, map_location='cpu', pickle_module=parlai.utils.pickle
            )
    except Exception as e:
        raise DistillationError(
            f'{model_file} is not a readable ParlAI checkpoint ({type(e).__name__}); '
            'nothing was changed'
        ) from None
    if not isinstance(states, dict) or not isinstance(states.get('model'), dict):
        raise DistillationError(
            f"{model_file} holds no model weights ('model' key); nothing was changed"
        )
    return states


def model_file_opt(
    path: str, datapath: str | None, overrides: dict[str, Any] | None = None
) -> Opt:
    """Options that load the model saved in ``path`` with ``overrides`` applied."""
    from parlai.core.agents import add_datapath_and_model_args

    opt = Opt(
        {'model_file': path, 'datapath': datapath, 'override': dict(overrides or {})}
    )
    add_datapath_and_model_args(opt)
    return opt


def load_generator_agent(opt: Opt, role: str = 'model') -> Any:
    """Build the ParlAI generator agent saved in ``opt['model_file']``.

    As ParlAI does for ``-mf``: the model's ``.opt`` is read, ``opt['override']``
    applied on top, and the other keys of ``opt`` fill in what the file lacks (use
    :func:`model_file_opt` to load a file with a few overrides). Raises
    :class:`DistillationError` (one line naming ``role`` and the path) when the
    file is missing, ParlAI cannot build it, or it is not a generator with a
    torch model.
    """
    from parlai.core.agents import create_agent_from_opt_file
    from parlai.core.torch_generator_agent import TorchGeneratorAgent

    path = opt.get('model_file')
    if not path:
        raise DistillationError(f'no {role} model file given')
    read_model_opt(path, role)
    try:
        agent = create_agent_from_opt_file(opt)
    except DistillationError:
        raise
    except Exception as e:
        raise DistillationError(
            f'could not load {role} {path}: {describe_exception(e)}'
        ) from None
    if not isinstance(agent, TorchGeneratorAgent) or not isinstance(
        getattr(agent, 'model', None), torch.nn.Module
    ):
        raise DistillationError(
            f'{path} is not a ParlAI generator model (transformer/generator, bart...)'
        )
    return agent


def freeze(module: torch.nn.Module) -> int:
    """Stop training ``module``'s parameters; returns how many tensors were frozen."""
    params = list(module.parameters())
    for param in params:
        param.requires_grad_(False)
    return len(params)


def write_dictionary(dictionary: Any, path: str) -> bool:
    """Make ``path`` hold ``dictionary`` (a ParlAI ``DictionaryAgent``), atomically,
    with the files a BPE dictionary keeps beside it (codecs, vocabulary, merges).

    Returns whether anything changed (identical files are kept).
    """
    changed = False
    with tempfile.TemporaryDirectory() as tmpdir:
        fresh = os.path.join(tmpdir, 'dict')
        dictionary.save(fresh, sort=False)
        targets = {fresh: path}
        targets.update(
            {side: path + suffix for suffix, side in side_files(fresh).items()}
        )
        for source, target in targets.items():
            with open(source, 'rb') as fh:
                content = fh.read()
            if os.path.isfile(target):
                with open(target, 'rb') as fh:
                    if fh.read() == content:
                        continue
            atomic_write(target, lambda fh, c=content: fh.write(c), mode='wb')
            changed = True
    return changed
