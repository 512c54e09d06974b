"""Check the report's model files and load them as ParlAI agents."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from parlai.core.opt import Opt

from ..errors import DistillationError
from ..model_files import (
    PROJECTION_PREFIX,
    load_generator_agent,
    model_file_opt,
    read_model_opt,
)


@dataclass
class Model:
    """A loaded model: its display label, file, ParlAI agent and parameter count."""

    label: str
    path: str
    agent: Any
    params: int
    is_teacher: bool = False
    #: ``'int8'`` for a quantised copy (see :mod:`.quantize`).
    quantized: str | None = None


def check_model_file(path: str, flag: str) -> Opt:
    """The saved options of ``path``; one-line error if it is no ParlAI model file."""
    if not os.path.isfile(path):
        raise DistillationError(
            f'{flag} {path}: model file not found (give the path of a model trained '
            'with parlai train_model)'
        )
    return read_model_opt(path, role='model')


def default_labels(paths: list[str]) -> list[str]:
    """Short unique labels: the parent folder when every file has the same name."""
    names = [os.path.basename(p.rstrip('/')) for p in paths]
    if len(set(names)) == len(names):
        return names
    parents = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    if len(set(parents)) == len(parents):
        return parents
    return list(paths)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of the model as deployed: shared tensors once, projections excluded.

    Projections (``distill_projections.*``) exist only while a narrow student
    trains; stripping removes them, so they are not counted.
    """
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith(PROJECTION_PREFIX)
    )


def load_agent(path: str, datapath: str, overrides: dict[str, Any]) -> Any:
    """Load ``path`` with ParlAI for evaluation (``datatype=valid``, CPU).

    ``overrides`` replace options saved with the model (e.g. ``label_truncate``).
    """
    options = {
        'datapath': datapath,
        'datatype': 'valid',
        'no_cuda': True,
        'interactive_mode': False,
        'skip_generation': True,
        **overrides,
    }
    return load_generator_agent(model_file_opt(path, datapath, options))


def evaluation_overrides(teacher_opt: dict) -> dict[str, Any]:
    """Options every model is evaluated with: the teacher's ``label_truncate``.

    The same references and the same maximum reply length for all.
    """
    label_truncate = teacher_opt.get('label_truncate') or teacher_opt.get('truncate')
    # ParlAI reads a missing or negative value as "no truncation".
    if label_truncate and label_truncate > 0:
        return {'label_truncate': label_truncate}
    return {'label_truncate': None}


def check_dictionary(student: Model, teacher: Model) -> None:
    """Refuse a student whose dictionary is not the teacher's (one line)."""
    ours, theirs = student.agent.dict, teacher.agent.dict
    if ours.tok2ind != theirs.tok2ind:
        raise DistillationError(
            f"student {student.path}: its dictionary ({len(ours)} tokens) differs "
            f"from the teacher's ({len(theirs)} tokens); the report compares models "
            "on the same tokens, so students must use the teacher's dictionary"
        )


def check_inputs(
    teacher: str, students: list[str], labels: list[str] | None
) -> list[tuple[str, str, Opt]]:
    """``(label, path, saved options)`` of the teacher (first) and each student.

    Raises :class:`DistillationError` for a missing or broken model file, or a
    wrong number of labels. Loads nothing.
    """
    paths = [teacher, *students]
    if labels is None:
        labels = default_labels(paths)
    if len(labels) != len(paths):
        raise DistillationError(
            f'--labels gives {len(labels)} names for {len(paths)} models '
            '(the teacher first, then each student)'
        )
    if len(set(labels)) != len(labels):
        raise DistillationError(f'--labels must be unique, got {labels}')
    opts = [check_model_file(teacher, '--teacher')]
    opts += [check_model_file(path, '--students') for path in students]
    return list(zip(labels, paths, opts))


def load_models(inputs: list[tuple[str, str, Opt]], datapath: str) -> list[Model]:
    """Load the models of :func:`check_inputs` (teacher first); check dictionaries.

    Every model is evaluated with :func:`evaluation_overrides`. Raises
    :class:`DistillationError` when a model does not load or a student's
    dictionary differs from the teacher's.
    """
    overrides = evaluation_overrides(inputs[0][2])
    models: list[Model] = []
    for i, (label, path, _) in enumerate(inputs):
        agent = load_agent(path, datapath, overrides)
        models.append(
            Model(label, path, agent, count_parameters(agent.model), is_teacher=i == 0)
        )
        if i:
            check_dictionary(models[-1], models[0])
    return models
