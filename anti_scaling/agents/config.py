"""``--distill-config FILE``: distillation terms as module mappings (BMCook style).

A JSON or YAML file with a list of terms::

    terms:
      - student: encoder.layers.1[post]     # a module by its name in the model
        teacher: encoder.layers.3[post]     # [pre]: its input, [post]: its output
        loss: cosine                        # see docs/methods.md
        weight: 2.0
      - student: decoder.layers.0.encoder_attention.k_lin
        teacher: decoder.layers.5.encoder_attention.k_lin
        loss: relation_kl
        relation_heads: 8
        weight: 1.0
        schedule: [[0, 1.0], [2000, 0.0]]   # weight by training step (linear)

Keys of a term: ``student``, ``teacher`` (required); ``loss`` (default ``mse``);
``weight`` (default 1); ``index`` (element of a tuple input/output; attention
scores are element 2 of ParlAI's attention output, taken by default for
attention losses); ``projection``: ``auto`` (default: a trained linear map
from student to teacher width when they differ), ``student`` (always project
the student), ``teacher`` (project the teacher to the student's width), or
``none`` (widths must match); ``positions``: ``encoder``, ``decoder`` or
``cross`` (inferred from the module names); ``heads`` (value relations),
``relation_heads`` (relation KL; relation objectives never get a projection:
they compare position-by-position relations, whatever the widths); ``metric``:
the reported name (terms sharing a metric are averaged); ``schedule``.

The command-line coefficients are shorthand for terms of this same structure
(:func:`anti_scaling.agents.plan.plan_from_options`); both are computed by
:mod:`anti_scaling.agents.term_values`. A shared module (the token embeddings
serve encoder and decoder) is named through its caller: ``encoder.embeddings``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..errors import DistillationError, describe_exception
from .capture import CapturePoint
from .objectives import MODULE_OBJECTIVES, objective
from .plan import POSITIONS, DistillTerm, StatePair

_MODULE = re.compile(r'^\s*([A-Za-z0-9_.]+?)\s*(?:\[(pre|post)\])?\s*$')
TERM_KEYS = {
    'student',
    'teacher',
    'loss',
    'weight',
    'index',
    'projection',
    'positions',
    'heads',
    'relation_heads',
    'metric',
    'schedule',
}
PROJECTIONS = ('auto', 'student', 'teacher', 'none')


def read_config(path: str) -> dict[str, Any]:
    """Parse a JSON or YAML config file into a dict with a ``terms`` list."""
    if not os.path.isfile(path):
        raise DistillationError(f'--distill-config {path}: file not found')
    with open(path, encoding='utf-8') as fh:
        text = fh.read()
    try:
        if path.endswith(('.yaml', '.yml')):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        kind = 'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'
        raise DistillationError(
            f'--distill-config {path}: not valid {kind} ({describe_exception(e)})'
        ) from None
    if isinstance(data, list):
        data = {'terms': data}
    if not isinstance(data, dict) or not isinstance(data.get('terms'), list):
        raise DistillationError(
            f'--distill-config {path}: expected a list of terms (or a mapping with '
            "a 'terms' list)"
        )
    return data


def _point(text: Any, index: Any, loss: str, where_from: str) -> CapturePoint:
    match = _MODULE.match(str(text)) if isinstance(text, str) else None
    if not match:
        raise DistillationError(
            f'{where_from}: {text!r} is not a module name such as '
            'encoder.layers.3 or encoder.layers.3[pre]'
        )
    module, side = match.group(1), match.group(2) or 'post'
    if index is None and objective(loss).compares == 'scores' and side == 'post':
        index = 2  # ParlAI's MultiHeadAttention returns (out, cache, scores)
    if index is not None and not isinstance(index, int):
        raise DistillationError(
            f'{where_from}: index must be an integer, not {index!r}'
        )
    return CapturePoint(module, 'input' if side == 'pre' else 'output', index)


def infer_positions(point: CapturePoint, loss: str) -> str:
    """Which tokens a tensor lives on, from its module's name."""
    name = point.module
    if '.encoder_attention' in name:
        if objective(loss).compares == 'scores':
            return 'cross'
        if name.endswith(('.k_lin', '.v_lin')):
            return 'encoder'
        return 'decoder'
    return 'decoder' if name.startswith('decoder') else 'encoder'


def _schedule(raw: Any, where_from: str) -> tuple[tuple[int, float], ...] | None:
    if raw is None:
        return None
    try:
        points = tuple((int(step), float(weight)) for step, weight in raw)
    except (TypeError, ValueError):
        raise DistillationError(
            f'{where_from}: schedule must be a list of [step, weight] pairs'
        ) from None
    if not points:
        raise DistillationError(f'{where_from}: schedule is empty')
    return points


def terms_from_config(data: dict[str, Any], path: str) -> list[DistillTerm]:
    """Turn a parsed config into terms; projections are named ``cfg<i>``.

    Projection shapes are not known here: they are inferred from one dry
    forward pass (:func:`anti_scaling.agents.plan_checks.check_plan`), where
    ``projection: auto`` pairs whose widths match get no projection.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(data['terms']):
        where_from = f'--distill-config {path}, term {i + 1}'
        if not isinstance(raw, dict):
            raise DistillationError(f'{where_from}: expected a mapping')
        unknown = set(raw) - TERM_KEYS
        if unknown:
            raise DistillationError(
                f'{where_from}: unknown key(s) {sorted(unknown)} (known: '
                f'{", ".join(sorted(TERM_KEYS))})'
            )
        for key in ('student', 'teacher'):
            if key not in raw:
                raise DistillationError(f'{where_from}: {key!r} is required')
        loss = raw.get('loss', 'mse')
        if loss not in MODULE_OBJECTIVES:
            raise DistillationError(
                f'{where_from}: unknown loss {loss!r} (known: '
                f'{", ".join(MODULE_OBJECTIVES)})'
            )
        projection = raw.get('projection', 'auto')
        if projection not in PROJECTIONS:
            raise DistillationError(
                f'{where_from}: projection must be one of {", ".join(PROJECTIONS)}'
            )
        if objective(loss).compares == 'relations' and projection in (
            'student',
            'teacher',
        ):
            raise DistillationError(
                f'{where_from}: {loss} compares relations between positions, which '
                'need no projection (any widths work): remove projection'
            )
        student = _point(raw['student'], raw.get('index'), loss, where_from)
        teacher = _point(raw['teacher'], raw.get('index'), loss, where_from)
        positions = raw.get('positions') or infer_positions(student, loss)
        if positions not in POSITIONS:
            raise DistillationError(
                f'{where_from}: positions must be one of {", ".join(POSITIONS)}'
            )
        try:
            weight = float(raw.get('weight', 1.0))
        except (TypeError, ValueError):
            raise DistillationError(f'{where_from}: weight must be a number') from None
        if weight < 0:
            raise DistillationError(f'{where_from}: weight must be >= 0')
        if loss == 'relation_kl' and not raw.get('relation_heads'):
            raise DistillationError(f'{where_from}: relation_kl needs relation_heads')
        if loss == 'value_relation' and not raw.get('heads'):
            raise DistillationError(f'{where_from}: value_relation needs heads')
        params = {k: raw[k] for k in objective(loss).params if raw.get(k)}
        pair = StatePair(
            student,
            teacher,
            loss,
            positions,
            projection=None if projection == 'none' else f'cfg{i}:{projection}',
            project_teacher=projection == 'teacher',
            params=tuple(params.items()),
        )
        metric = raw.get('metric') or f'cfg{i}_{loss}_loss'
        schedule = _schedule(raw.get('schedule'), where_from)
        group = grouped.setdefault(
            metric, {'pairs': [], 'weight': weight, 'schedule': schedule}
        )
        if group['weight'] != weight or group['schedule'] != schedule:
            raise DistillationError(
                f'{where_from}: terms sharing metric {metric!r} must share weight '
                'and schedule'
            )
        group['pairs'].append(pair)
    return [
        DistillTerm(metric, tuple(g['pairs']), g['weight'], schedule=g['schedule'])
        for metric, g in grouped.items()
        if g['weight'] > 0 or g['schedule']
    ]
