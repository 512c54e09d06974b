"""Load the teacher: once per process, frozen, checked before anything else runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import parlai.utils.logging as logging
from parlai.core.dict import DictionaryAgent
from parlai.core.opt import Opt
from parlai.core.torch_generator_agent import TorchGeneratorModel

from ..errors import DistillationError, describe_exception
from ..model_files import (
    freeze,
    load_generator_agent,
    model_class_of,
    model_file_opt,
    read_model_opt,
    resolve_model_file,
)


@dataclass
class Teacher:
    """A frozen teacher: its model (eval mode, no gradients), dictionary and options."""

    path: str
    model: TorchGeneratorModel | None
    dict: DictionaryAgent
    opt: Opt
    agent_class: type

    def _layers(self, stack: str) -> int:
        if self.model is not None:
            return len(getattr(self.model, stack).layers)
        specific = self.opt.get(f'n_{stack}_layers')
        if specific is not None and int(specific) > 0:
            return int(specific)
        return int(self.opt['n_layers'])

    @property
    def n_encoder_layers(self) -> int:
        return self._layers('encoder')

    @property
    def n_decoder_layers(self) -> int:
        return self._layers('decoder')

    @property
    def width(self) -> int:
        return int(self.opt['embedding_size'])

    @property
    def n_heads(self) -> int:
        return int(self.opt['n_heads'])


_CACHE: dict[tuple, Teacher] = {}


def check_teacher_kind(agent_class: type, expected: type, excluded: tuple, path: str):
    """Refuse a teacher of the wrong family (a BART teacher for a transformer agent...)."""
    if not issubclass(agent_class, expected) or issubclass(agent_class, excluded):
        name = getattr(expected, '__name__', str(expected))
        raise DistillationError(
            f'teacher {path} is a {agent_class.__name__} model, but this agent '
            f'distils {name} teachers: use the matching agent (DistillBartAgent / '
            'DistillNarrowBartAgent for bart teachers, DistillTransformerAgent / '
            'DistillNarrowTransformerAgent for transformer/generator teachers)'
        )


def load_teacher(
    model_file: str,
    *,
    datapath: str | None,
    expected: type,
    excluded: tuple = (),
    overrides: dict[str, Any] | None = None,
    weights: bool = True,
    half: bool = False,
) -> Teacher:
    """Load (or reuse) the teacher model of ``model_file``.

    The teacher is built with ``datatype=valid`` (no optimizer), put in eval mode
    with every parameter frozen, in half precision if ``half`` (a ``--fp16``
    student's; ParlAI itself halves only teachers trained with ``--fp16``), and
    cached for the process: later calls with the same file (same modification
    time), overrides and precision return the same object. With
    ``weights=False`` only its options and dictionary are read (a run that takes
    its targets from a teacher-output cache needs no teacher model).
    """
    path = resolve_model_file(model_file, datapath)
    opt = read_model_opt(path)
    agent_class = model_class_of(opt, path)
    check_teacher_kind(agent_class, expected, excluded, path)
    if not weights:
        return _teacher_without_weights(path, opt, agent_class, datapath)
    overrides = dict(overrides or {})
    stat = os.stat(path)
    key = (
        os.path.realpath(path),
        stat.st_mtime_ns,
        stat.st_size,
        tuple(sorted(overrides.items())),
        half,
    )
    if key in _CACHE:
        return _CACHE[key]
    logging.info(f'Loading teacher from {path}')
    agent = load_generator_agent(
        model_file_opt(path, datapath, {'datatype': 'valid', **overrides}),
        role='teacher',
    )
    model = agent.model
    model.eval()
    freeze(model)
    if half:
        model.half()
    teacher = Teacher(path, model, agent.dict, agent.opt, agent_class)
    _CACHE[key] = teacher
    return teacher


def _teacher_without_weights(
    path: str, opt: Opt, agent_class: type, datapath: str | None
) -> Teacher:
    """A teacher's options and dictionary, without building its model."""
    dict_opt = Opt(opt)
    # ParlAI never saves datapath; the gpt2 dictionary reads DATAPATH/gpt2.
    dict_opt['datapath'] = datapath
    if os.path.isfile(path + '.dict'):
        dict_opt['dict_file'] = path + '.dict'
    try:
        dictionary = agent_class.dictionary_class()(dict_opt)
    except Exception as e:
        raise DistillationError(
            f'could not read the dictionary of teacher {path}: {describe_exception(e)}'
        ) from None
    return Teacher(
        path,
        None,
        dictionary,
        Opt({**opt, 'dict_file': dict_opt['dict_file']}),
        agent_class,
    )


def clear_teacher_cache() -> None:
    """Forget every loaded teacher (for tests and long-lived processes)."""
    _CACHE.clear()
