"""Recipes from files: ``--recipe FILE.json`` (or ``.yaml``) besides registered names.

A recipe file holds one mapping; ``agent`` and ``options`` are required::

    agent: anti_scaling.distillation:DistillNarrowTransformerAgent
    options: {n_encoder_layers: 1, n_decoder_layers: 2, embedding_size: 128,
              ffn_size: 512, n_heads: 4, pred_loss_coeff: 16, pred_loss_type: kl}
    name: my_student              # default: the file name without its suffix
    description: ...
    teacher: runs/teacher/model   # what it was written for (informative)
    teacher_shape: {n_encoder_layers: 2, n_decoder_layers: 6, embedding_size: 256,
                    ffn_size: 1024, n_heads: 4}   # warns when a teacher differs
    student_shape: {...}
    sources: [...]
    notes: [...]

Options are checked as the command line checks flags, before anything loads:
each must be a flag of ``agent`` that a recipe may set (the shape, layer maps,
loss weights and objectives; not a path, the teacher or another recipe), and
its value must parse with the flag's type and be one of its choices. The
search (:mod:`anti_scaling.search`) writes such files for the students it
finds.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import DistillationError
from ..fileio import read_json_or_yaml
from ..model_files import model_class_of
from ..option_keys import SHAPE_KEYS, TEACHER_AND_FILE_KEYS
from ..zoo.recipes import AGENT_PREFIX, RECIPE_KEYS, Recipe, get_recipe
from .options import distillation_option_names

RECIPE_FILE_SUFFIXES = ('.json', '.yaml', '.yml')
AGENTS = tuple(
    AGENT_PREFIX + name
    for name in (
        'DistillTransformerAgent',
        'DistillNarrowTransformerAgent',
        'DistillBartAgent',
        'DistillNarrowBartAgent',
    )
)
#: Distillation options that name files or teachers: never part of a recipe.
NOT_IN_RECIPES = frozenset(TEACHER_AND_FILE_KEYS)
_FIELDS = {
    'agent',
    'options',
    'name',
    'description',
    'teacher',
    'teacher_shape',
    'sources',
    'notes',
}


def is_recipe_file(name: Any) -> bool:
    """Whether ``--recipe`` names a file (by its suffix) rather than a recipe."""
    return isinstance(name, str) and name.endswith(RECIPE_FILE_SUFFIXES)


def agent_actions(agent: str) -> dict[str, Any]:
    """``(parser, action)`` of every option of ``agent``'s ParlAI parser, by dest."""
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser(False, False)
    model_class_of({'model': agent}, agent).add_cmdline_args(parser, partial_opt=None)
    return {action.dest: (parser, action) for action in parser._actions}


def _allowed_keys() -> set[str]:
    return (set(RECIPE_KEYS) | distillation_option_names()) - NOT_IN_RECIPES


def _checked_value(where: str, key: str, value: Any, parser: Any, action: Any) -> Any:
    """``value`` parsed as the flag ``key`` would parse it; one line if it does not."""
    flag = '--' + key.replace('_', '-')
    if value is None or isinstance(value, (dict, list)):
        raise DistillationError(f'{where}: option {key} needs one value, not {value!r}')
    kind = action.type
    convert = parser._registry_get('type', kind, kind) if kind is not None else str
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        parsed = convert(text) if callable(convert) else text
    except (TypeError, ValueError):
        name = getattr(convert, '__name__', str(kind))
        raise DistillationError(
            f'{where}: option {key} = {value!r} is not a valid {name} (as {flag})'
        ) from None
    if action.choices is not None and parsed not in action.choices:
        choices = ', '.join(str(c) for c in action.choices)
        raise DistillationError(
            f'{where}: option {key} = {value!r} is not one of {flag}\'s choices '
            f'({choices})'
        )
    return parsed


def _shape(where: str, field: str, value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(value) <= set(SHAPE_KEYS):
        raise DistillationError(
            f'{where}: {field} must map some of {", ".join(SHAPE_KEYS)} to integers'
        )
    try:
        return {k: int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise DistillationError(f'{where}: {field} values must be integers') from None


def _texts(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in (value if isinstance(value, list) else [value]))


def load_recipe_file(path: str) -> Recipe:
    """The :class:`Recipe` written in ``path`` (see the module doc for the format).

    Raises :class:`DistillationError` (one line naming the file) for a missing
    or unparsable file, an unknown field or agent, an option that is no flag a
    recipe may set, or a value the flag would refuse.
    """
    where = f'recipe file {path}'
    data = read_json_or_yaml(path, 'recipe file')
    if not isinstance(data, dict):
        raise DistillationError(f'{where}: expected a mapping with agent and options')
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise DistillationError(
            f'{where}: unknown field {unknown[0]!r} (fields: {", ".join(sorted(_FIELDS))})'
        )
    agent = data.get('agent')
    if agent not in AGENTS:
        raise DistillationError(
            f'{where}: agent must be one of {", ".join(AGENTS)}, not {agent!r}'
        )
    options = data.get('options')
    if not isinstance(options, dict) or not options:
        raise DistillationError(f'{where}: options must be a non-empty mapping')
    actions = agent_actions(agent)
    allowed = _allowed_keys()
    checked = {}
    for key, value in options.items():
        if key not in allowed or key not in actions:
            raise DistillationError(
                f'{where}: option {key!r} cannot be set by a recipe of '
                f'{agent.split(":")[-1]} (use option dests such as n_decoder_layers, '
                'pred_loss_coeff, pred_loss_type)'
            )
        checked[key] = _checked_value(where, key, value, *actions[key])
    name = str(data.get('name') or os.path.splitext(os.path.basename(path))[0])
    return Recipe(
        name=name,
        description=str(data.get('description') or f'recipe file {path}'),
        agent=agent,
        teacher=str(data.get('teacher') or ''),
        options=checked,
        teacher_shape=_shape(where, 'teacher_shape', data.get('teacher_shape')),
        sources=_texts(data.get('sources')) or (path,),
        notes=_texts(data.get('notes')),
    )


def resolve_recipe(name: str) -> Recipe:
    """``--recipe``: the recipe file ``name`` (``.json``/``.yaml``), else the
    registered recipe ``name`` (one line naming the known ones otherwise)."""
    if is_recipe_file(name):
        return load_recipe_file(name)
    return get_recipe(name)
