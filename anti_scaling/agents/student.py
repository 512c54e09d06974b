"""Shape the student: checks against the teacher, teacher-weight copies, projections."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import parlai.utils.logging as logging
import torch
from torch import nn

from ..errors import DistillationError
from ..model_files import PROJECTION_PREFIX, PROJECTIONS_ATTR, freeze
from .plan_checks import check_plan

if TYPE_CHECKING:
    from .run_setup import RunSetup
    from .teacher import Teacher


def check_wide_student(
    opt: dict, teacher_opt: dict, layers: dict, teacher_layers: dict
):
    """A wide student keeps the teacher's width, FFN size and heads, and no more layers.

    ``layers``/``teacher_layers`` map ``'encoder'``/``'decoder'`` to layer counts.
    """
    for key, flag in (
        ('embedding_size', '--embedding-size'),
        ('ffn_size', '--ffn-size'),
        ('n_heads', '--n-heads'),
    ):
        if int(opt[key]) != int(teacher_opt[key]):
            raise DistillationError(
                f'{flag} {opt[key]} differs from the teacher\'s {teacher_opt[key]}: '
                'a wide (layer-removal) student keeps the teacher\'s width, FFN size '
                'and heads; use DistillNarrowTransformerAgent or DistillNarrowBartAgent '
                'for a narrower student'
            )
    for key in ('variant', 'activation'):
        if opt.get(key) != teacher_opt.get(key):
            raise DistillationError(
                f"--{key} {opt.get(key)} differs from the teacher's "
                f'{teacher_opt.get(key)}: a wide student copies the teacher\'s layers, '
                'so it must use the same'
            )
    for stack in ('encoder', 'decoder'):
        if layers[stack] > teacher_layers[stack]:
            raise DistillationError(
                f'the student has {layers[stack]} {stack} layers but the teacher only '
                f'{teacher_layers[stack]}: a wide student removes layers, so set '
                f'--n-{stack}-layers to at most {teacher_layers[stack]}'
            )


def check_attention_heads(
    student_heads: int, teacher_heads: int, coeffs: dict[str, float]
) -> None:
    """Attention-score losses compare scores head by head: head counts must match."""
    used = [k for k, v in coeffs.items() if v > 0]
    if used and student_heads != teacher_heads:
        flags = ' and '.join('--' + k.replace('_', '-') for k in used)
        raise DistillationError(
            f'{flags} compare attention scores head by head, but the student has '
            f'{student_heads} heads and the teacher {teacher_heads}: set --n-heads '
            f'{teacher_heads} (the width must stay a multiple of it) or set those '
            'coefficients to 0'
        )


_LAYER_KEY = re.compile(r'^(encoder|decoder)\.layers\.(\d+)\.(.*)$')


def teacher_key(student_key: str, init_maps: dict[str, list[int]]) -> str:
    """The teacher parameter a student parameter is copied from.

    ``encoder.layers.1.ffn.lin1.weight`` with encoder map ``[2, 5]`` ->
    ``encoder.layers.5.ffn.lin1.weight``; every other name (embeddings, position
    and segment embeddings, embedding and final LayerNorms) maps to itself.
    """
    match = _LAYER_KEY.match(student_key)
    if not match:
        return student_key
    stack, layer, rest = match.groups()
    return f'{stack}.layers.{init_maps[stack][int(layer)]}.{rest}'


@torch.no_grad()
def copy_teacher_weights(
    student: nn.Module, teacher: nn.Module, init_maps: dict[str, list[int]]
) -> list[str]:
    """Initialise every student tensor from its teacher tensor (:func:`teacher_key`).

    Copies bit for bit, parameters and buffers alike; projections are skipped.
    Returns the student names copied. Raises when a tensor is missing or differs
    in shape.
    """
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    copied = []
    for name, tensor in student_state.items():
        if name.startswith(PROJECTION_PREFIX):
            continue
        source = teacher_key(name, init_maps)
        if source not in teacher_state:
            raise DistillationError(
                f'cannot initialise the student from the teacher: the teacher has no '
                f'{source!r}; set --copy-teacher-weights false to train from scratch'
            )
        value = teacher_state[source]
        if value.shape != tensor.shape:
            raise DistillationError(
                f'cannot initialise student {name} {tuple(tensor.shape)} from teacher '
                f'{source} {tuple(value.shape)}: shapes differ'
            )
        tensor.copy_(value)
        copied.append(name)
    return copied


def build_projections(shapes: dict[str, tuple[int, int]]) -> nn.ModuleDict:
    """One ``Linear(student_width, teacher_width)`` per name, weights N(0, 0.02), bias 0."""
    projections = nn.ModuleDict()
    for name, (d_student, d_teacher) in shapes.items():
        layer = nn.Linear(d_student, d_teacher)
        nn.init.normal_(layer.weight, mean=0.0, std=0.02)
        nn.init.zeros_(layer.bias)
        projections[name] = layer
    return projections


def check_dictionary(dictionary: Any, teacher: Teacher, dict_file: str | None) -> None:
    """The student's dictionary (complete, fp16 padding included) is the teacher's.

    With a teacher-output cache the teacher is not built; the cache's own
    fingerprint (the dictionary's content and options) is checked instead.
    """
    if teacher.model is None or dictionary.tok2ind == teacher.dict.tok2ind:
        return
    raise DistillationError(
        f'the student dictionary ({dict_file}, {len(dictionary)} tokens) differs '
        f"from the teacher's ({teacher.opt.get('dict_file')}, {len(teacher.dict)} "
        "tokens): drop --dict-file to use the teacher's dictionary"
    )


def prepare_student_model(
    model: nn.Module,
    setup: RunSetup,
    opt: dict,
    wide: bool,
    dry_run: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Make a freshly built student ready to distil, before ParlAI loads anything.

    Checks the plan on one dry forward pass (``dry_run``: context and label ids)
    and completes ``setup.plan``; adds the projections; copies the teacher's
    weights into a new wide student; freezes the encoder if asked.
    """
    teacher = setup.teacher
    if setup.plan.module_terms:
        setup.plan = check_plan(setup.plan, model, teacher.model, dry_run)
    if setup.plan.projections:
        setattr(model, PROJECTIONS_ATTR, build_projections(setup.plan.projections))
    if wide and opt.get('copy_teacher_weights', True):
        if any(
            opt.get(k) and os.path.isfile(opt[k]) for k in ('init_model', 'model_file')
        ):
            logging.info('Resuming from a checkpoint: not copying teacher weights')
        else:
            copied = copy_teacher_weights(model, teacher.model, setup.init_layer_maps)
            logging.info(
                f'Initialised {len(copied)} student tensors from the teacher '
                f'(layers {setup.init_layer_maps})'
            )
    if opt.get('freeze_encoder'):
        count = freeze(model.encoder)
        logging.info(
            f'Froze the student encoder ({count} tensors, token embeddings '
            'included: ParlAI ties them to the decoder and output layer)'
        )
