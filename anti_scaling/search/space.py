"""The search space: what may vary, written on the command line or in a YAML/JSON file.

A space maps parameter names to specs. Names are the student's shape
(:data:`SHAPE_PARAMS`: ``kind`` = ``wide`` or ``narrow``, the layer counts,
and for narrow students ``embedding_size``, ``ffn_size`` or ``ffn_ratio``,
``n_heads``) and any option of the distillation agents a recipe may set, by
its dest (``pred_loss_coeff``, ``hidden_loss_coeff``, ``distill_temperature``,
``pred_loss_type``, ``jsd_beta``, ...; see :func:`searchable_flags`). Types and
allowed choices are read from the agents' own parser, so an objective added to
``--pred-loss-type`` is a valid choice here by its name, with no change to the
search.

Spec forms (file / command line ``--param NAME=SPEC``):

- a fixed value: ``4`` / ``n_heads=4``;
- choices: ``[0, 0.25, 1]`` / ``hidden_loss_coeff=0,0.25,1``;
- a range, integer for integer options: ``{low: 1, high: 6}`` / ``1:6``;
  ``log: true`` / ``1:64:log`` samples on a log scale; ``optional: true`` /
  ``:optional`` also tries 0 (term off) through a ``use_NAME`` switch.

Later sources replace earlier ones name by name: the defaults derived from the
teacher (:func:`default_space`), then ``--space FILE``, then ``--param``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DistillationError
from ..fileio import read_json_or_yaml
from ..option_keys import TEACHER_AND_FILE_KEYS

KINDS = ('wide', 'narrow')
#: Shape parameters: name -> type. The last four exist for narrow students only.
SHAPE_PARAMS = {
    'kind': 'str',
    'n_encoder_layers': 'int',
    'n_decoder_layers': 'int',
    'embedding_size': 'int',
    'ffn_size': 'int',
    'ffn_ratio': 'float',
    'n_heads': 'int',
}
NARROW_ONLY = ('embedding_size', 'ffn_size', 'ffn_ratio', 'n_heads')
#: Agent options a search never varies: paths, teachers, layer maps (they
#: follow the layer counts) and the wide-only initialisation switches.
NOT_SEARCHED = frozenset(
    {
        *TEACHER_AND_FILE_KEYS,
        'encoder_layer_map',
        'decoder_layer_map',
        'encoder_init_layer_map',
        'decoder_init_layer_map',
        'copy_teacher_weights',
        'share_teacher_encoder',
    }
)


@dataclass(frozen=True)
class Flag:
    """A searchable agent option: its value type and, if restricted, its choices."""

    kind: str
    choices: tuple | None = None


@dataclass(frozen=True)
class TeacherShape:
    """The teacher's shape, from which default spaces and checks derive."""

    n_encoder_layers: int
    n_decoder_layers: int
    embedding_size: int
    ffn_size: int
    n_heads: int
    vocab: int
    family: str = 'transformer'  # or 'bart'

    def as_dict(self) -> dict[str, Any]:
        """The shape as JSON-ready data."""
        return dict(self.__dict__)


def searchable_flags(family: str = 'transformer') -> dict[str, Flag]:
    """Every distillation option a space may name, with its type and choices.

    Read from the narrow agent's real ParlAI parser (it has every option but
    the wide-only switches, which are not searched).
    """
    from ..agents.options import distillation_option_names
    from ..agents.recipe_files import agent_actions
    from ..zoo.recipes import AGENT_PREFIX

    narrow = (
        'DistillNarrowBartAgent'
        if family == 'bart'
        else 'DistillNarrowTransformerAgent'
    )
    actions = agent_actions(AGENT_PREFIX + narrow)
    flags = {}
    for dest in sorted(distillation_option_names() - NOT_SEARCHED):
        if dest not in actions:
            continue
        _, action = actions[dest]
        kind = {int: 'int', float: 'float', 'bool': 'bool'}.get(action.type, 'str')
        choices = tuple(action.choices) if action.choices is not None else None
        flags[dest] = Flag(kind, choices)
    return flags


def _typed(name: str, kind: str, value: Any) -> Any:
    """``value`` as a ``kind`` (from YAML/JSON data or command-line text)."""
    try:
        if kind == 'bool':
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ('true', 'false'):
                return text == 'true'
            raise ValueError
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            raise ValueError
        if kind == 'int':
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind == 'float':
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        return str(value).strip()
    except (TypeError, ValueError):
        raise DistillationError(
            f'search space: {name} = {value!r} is not a valid {kind}'
        ) from None


@dataclass(frozen=True)
class ParamSpec:
    """What one parameter may be: a list of choices, or a range ``[low, high]``.

    A fixed value is a single choice. ``optional`` ranges may also be 0 (the
    term off), decided by a ``use_<name>`` switch before the value is sampled.
    """

    name: str
    kind: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    optional: bool = False

    @property
    def fixed(self) -> bool:
        """Whether there is nothing to choose."""
        return self.choices is not None and len(set(self.choices)) == 1

    def values(self) -> tuple:
        """The choices; for a range, its ends (and 0 if optional)."""
        if self.choices is not None:
            return self.choices
        return ((0,) if self.optional else ()) + (self.low, self.high)

    def can_be(self, predicate: Any) -> bool:
        """Whether some value of the spec satisfies ``predicate``.

        For ranges, ``predicate`` is asked of both ends and of 0 if optional
        (enough for the monotone questions the checks ask).
        """
        return any(predicate(v) for v in self.values())

    def as_data(self) -> Any:
        """The spec in the file format (a value, a list or a mapping)."""
        if self.choices is not None:
            return self.choices[0] if self.fixed else list(self.choices)
        data: dict[str, Any] = {'low': self.low, 'high': self.high}
        if self.log:
            data['log'] = True
        if self.optional:
            data['optional'] = True
        return data

    def describe(self) -> str:
        """Short text: ``4``, ``{0, 0.25, 1}`` or ``[1, 64] log, optional``."""
        if self.choices is not None:
            if self.fixed:
                return str(self.choices[0])
            return '{' + ', '.join(str(c) for c in self.choices) + '}'
        extras = [x for x, on in (('log', self.log), ('or 0', self.optional)) if on]
        return f'[{self.low}, {self.high}]' + (
            ' ' + ', '.join(extras) if extras else ''
        )


def _range(name: str, kind: str, data: Mapping[str, Any]) -> ParamSpec:
    unknown = set(data) - {'low', 'high', 'log', 'optional'}
    if unknown or 'low' not in data or 'high' not in data:
        raise DistillationError(
            f'search space: {name}: a range is {{low: L, high: H}} with optional '
            f'log and optional flags (got {dict(data)!r})'
        )
    if kind not in ('int', 'float'):
        raise DistillationError(
            f'search space: {name} is a {kind} option: give choices, not a range'
        )
    low, high = _typed(name, kind, data['low']), _typed(name, kind, data['high'])
    log = _typed(name, 'bool', data.get('log', False))
    optional = _typed(name, 'bool', data.get('optional', False))
    if low > high:
        raise DistillationError(f'search space: {name}: low {low} > high {high}')
    if log and low <= 0:
        raise DistillationError(f'search space: {name}: a log range needs low > 0')
    return ParamSpec(name, kind, None, low, high, log, optional)


def parse_spec(name: str, kind: str, data: Any) -> ParamSpec:
    """A spec from file data: a value, a list of choices, or a range mapping."""
    if isinstance(data, Mapping):
        if set(data) == {'choices'}:
            data = data['choices']
            if not isinstance(data, list):
                data = [data]
        else:
            return _range(name, kind, data)
    choices = data if isinstance(data, (list, tuple)) else [data]
    if not choices:
        raise DistillationError(f'search space: {name} has no choices (empty list)')
    typed = tuple(_typed(name, kind, c) for c in choices)
    return ParamSpec(name, kind, tuple(dict.fromkeys(typed)))


def parse_cli_spec(text: str, kinds: Mapping[str, str]) -> ParamSpec:
    """A spec from ``NAME=SPEC`` (see the module doc for the forms)."""
    name, sep, spec = text.partition('=')
    name = name.strip().replace('-', '_')
    if not sep or not name:
        raise DistillationError(
            f'--param {text!r}: write NAME=SPEC, e.g. n_decoder_layers=1:4, '
            'pred_loss_type=kl,jsd or hidden_loss_coeff=0.1:10:log:optional'
        )
    kind = param_kind(name, kinds)
    spec = spec.strip()
    if not spec:
        raise DistillationError(f'--param {name}: no value given')
    if ':' in spec:
        parts = [p.strip() for p in spec.split(':')]
        flags = set(parts[2:])
        if len(parts) < 2 or not flags <= {'log', 'optional'}:
            raise DistillationError(
                f'--param {name}={spec}: a range is LOW:HIGH[:log][:optional]'
            )
        data = {'low': parts[0], 'high': parts[1]}
        data.update({flag: True for flag in flags})
        return _range(name, kind, data)
    choices = [c for c in (p.strip() for p in spec.split(','))]
    if any(c == '' for c in choices):
        raise DistillationError(f'--param {name}={spec}: an empty choice')
    return parse_spec(name, kind, choices)


def param_kind(name: str, kinds: Mapping[str, str]) -> str:
    """The type of parameter ``name``; a one-line error naming the known ones."""
    if name in kinds:
        return kinds[name]
    raise DistillationError(
        f'search space: unknown parameter {name!r}; known: ' + ', '.join(kinds)
    )


def parameter_kinds(flags: Mapping[str, Flag]) -> dict[str, str]:
    """Every parameter name a space may use, with its type (shape first)."""
    return {**SHAPE_PARAMS, **{name: flag.kind for name, flag in flags.items()}}


def read_space_file(path: str, kinds: Mapping[str, str]) -> dict[str, ParamSpec]:
    """The specs of a YAML/JSON space file (a mapping of names to specs)."""
    data = read_json_or_yaml(path, 'search space file')
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise DistillationError(
            f'search space file {path}: expected a mapping of parameter names to '
            'specs'
        )
    return {
        name: parse_spec(name, param_kind(name, kinds), spec)
        for name, spec in data.items()
    }


def _widths(teacher: TeacherShape) -> tuple[int, ...]:
    """Narrow widths to try: a quarter, half and all of the teacher's width."""
    heads = teacher.n_heads
    options = [teacher.embedding_size // k for k in (4, 2, 1)]
    return tuple(
        dict.fromkeys(w for w in options if w >= heads and w % heads == 0)
    ) or (teacher.embedding_size,)


def _layers(name: str, n: int) -> ParamSpec:
    if n <= 1:
        return ParamSpec(name, 'int', (1,))
    return ParamSpec(name, 'int', None, 1, n)


def default_space(
    teacher: TeacherShape, flags: Mapping[str, Flag]
) -> dict[str, ParamSpec]:
    """The space searched unless told otherwise, derived from the teacher's shape.

    Shapes: wide or narrow; 1 to the teacher's layer count per stack; narrow
    widths of a quarter, half and all of the teacher's (multiples of its head
    count), its FFN ratio and head count. Losses: the task term fixed at 1,
    the prediction term's weight {1, 4, 16, 64}, temperature {1, 2, 4} and
    objective {kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, taid} (those
    the agents accept); the hidden, embedding and attention terms off or at
    the scale measured on the chitchat teacher (pre-LayerNorm, width 256;
    docs/chitchat_results.md), which other teachers may need rescaled.
    """
    space = {
        'kind': ParamSpec('kind', 'str', KINDS),
        'n_encoder_layers': _layers('n_encoder_layers', teacher.n_encoder_layers),
        'n_decoder_layers': _layers('n_decoder_layers', teacher.n_decoder_layers),
        'embedding_size': ParamSpec('embedding_size', 'int', _widths(teacher)),
        'ffn_ratio': ParamSpec(
            'ffn_ratio', 'float', (teacher.ffn_size / teacher.embedding_size,)
        ),
        'n_heads': ParamSpec('n_heads', 'int', (teacher.n_heads,)),
    }
    losses: dict[str, tuple] = {
        'task_loss_coeff': (1.0,),
        'pred_loss_coeff': (1.0, 4.0, 16.0, 64.0),
        'distill_temperature': (1.0, 2.0, 4.0),
        'pred_loss_type': (
            'kl',
            'reverse_kl',
            'jsd',
            'skew_kl',
            'skew_reverse_kl',
            'taid',
        ),
        'hidden_loss_coeff': (0.0, 0.25, 1.0),
        'encoder_loss_coeff': (0.0,),
        'embedding_loss_coeff': (0.0, 4.0),
        'self_attn_loss_coeff': (0.0, 0.1),
        'enc_dec_attn_loss_coeff': (0.0, 4.0),
    }
    for name, choices in losses.items():
        flag = flags.get(name)
        if flag is None:
            continue
        if flag.choices is not None:
            choices = tuple(c for c in choices if c in flag.choices)
        if choices:
            space[name] = ParamSpec(name, flag.kind, choices)
    return space


def build_space(
    teacher: TeacherShape,
    flags: Mapping[str, Flag],
    file_specs: Mapping[str, ParamSpec] | None = None,
    cli_specs: Iterable[ParamSpec] = (),
) -> dict[str, ParamSpec]:
    """The defaults, replaced name by name by the file's specs, then the CLI's.

    Setting ``ffn_size`` drops the default ``ffn_ratio`` (and the reverse),
    unless both are given explicitly (a contradiction the checks report); a
    space of wide students only drops the default narrow shape.
    """
    space = default_space(teacher, flags)
    given: dict[str, ParamSpec] = dict(file_specs or {})
    for spec in cli_specs:
        given[spec.name] = spec
    for a, b in (('ffn_size', 'ffn_ratio'), ('ffn_ratio', 'ffn_size')):
        if a in given and b not in given:
            space.pop(b, None)
    space.update(given)
    kind = space.get('kind')
    if kind is not None and 'narrow' not in kind.values():
        for name in NARROW_ONLY:
            if name not in given:
                space.pop(name, None)
    return space


def space_data(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The space in the file format (what a study records and compares)."""
    return {name: spec.as_data() for name, spec in space.items()}
