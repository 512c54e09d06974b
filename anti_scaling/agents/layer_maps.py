"""Which teacher layer each student layer learns from (and is initialised from)."""

from __future__ import annotations

import parlai.utils.logging as logging

from ..errors import DistillationError
from ..loss_terms import LOSS_TERMS

STACKS = ('encoder', 'decoder')


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Default map: student layer ``i`` of ``n`` takes teacher layer ``floor((i+1)*N/n) - 1``.

    Integer arithmetic, so the teacher's last layer is always used; for ``n <= N``
    the map is strictly increasing. Example: 2 of 6 -> ``[2, 5]``.
    """
    if n_student < 0 or n_teacher < 1:
        raise ValueError(f'bad layer counts: student {n_student}, teacher {n_teacher}')
    return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]


def format_layer_map(layer_map: list[int]) -> str:
    """``[2, 5]`` -> ``'2,5'``, the form the command-line flags and ``.opt`` files use."""
    return ','.join(str(i) for i in layer_map)


def parse_layer_map(
    text: str | list[int] | None, n_student: int, n_teacher: int, flag: str
) -> list[int]:
    """Read an explicit map (``'0,3,5'``) or build the uniform one when ``text`` is empty.

    Raises :class:`DistillationError` when the list has the wrong length, names a
    layer the teacher does not have, or is not strictly increasing.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        if n_student > n_teacher:
            raise DistillationError(
                f'--{flag}: the student has {n_student} layers but the teacher only '
                f'{n_teacher}; layer-wise terms map each student layer to a distinct '
                'teacher layer, so use at most as many student layers'
            )
        layer_map = uniform_layer_map(n_student, n_teacher)
        source = (
            f'the default map for {n_student} student and {n_teacher} teacher layers'
        )
    else:
        if isinstance(text, list | tuple):
            items = list(text)
        else:
            items = [x.strip() for x in str(text).replace(' ', ',').split(',') if x]
        try:
            layer_map = [int(x) for x in items]
        except ValueError:
            raise DistillationError(
                f'--{flag} {text!r}: expected comma-separated teacher layer indices '
                'such as 1,3,5'
            ) from None
        source = f'--{flag}'
        if len(layer_map) != n_student:
            raise DistillationError(
                f'--{flag} {text!r} lists {len(layer_map)} layers but the student has '
                f'{n_student}: give one teacher layer per student layer'
            )
    bad = [i for i in layer_map if not 0 <= i < n_teacher]
    if bad:
        raise DistillationError(
            f'{source} uses teacher layer(s) {bad}, but the teacher has {n_teacher} '
            f'layers (valid indices 0..{n_teacher - 1})'
        )
    if any(b <= a for a, b in zip(layer_map, layer_map[1:])):
        raise DistillationError(
            f'{source} gives {format_layer_map(layer_map)}, which is not strictly '
            'increasing: each student layer must map to a later teacher layer than '
            'the one before it (a student cannot have more layers than its teacher '
            'for layer-wise terms)'
        )
    return layer_map


def resolve_layer_maps(
    opt: dict, layers: dict[str, int], teacher_layers: dict[str, int], wide: bool
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """The supervision maps and (wide students) the init maps, checked and logged.

    Both are written back into ``opt`` (``--encoder-layer-map`` ...), so they are
    saved in the student's ``.opt`` and reused on resume. A stack gets a
    supervision map when a layer-wise term is on, the user gave one, or the
    student is wide (whose init maps default to the supervision maps).
    """
    layerwise = any(
        term.layerwise and float(opt.get(term.dest) or 0) > 0 for term in LOSS_TERMS
    )
    maps: dict[str, list[int]] = {}
    for stack in STACKS:
        key = f'{stack}_layer_map'
        if layerwise or opt.get(key) or wide:
            maps[stack] = parse_layer_map(
                opt.get(key), layers[stack], teacher_layers[stack], f'{stack}-layer-map'
            )
            opt[key] = format_layer_map(maps[stack])
        else:
            maps[stack] = []
    init_maps: dict[str, list[int]] = {}
    if wide:
        for stack in STACKS:
            key = f'{stack}_init_layer_map'
            init_maps[stack] = parse_layer_map(
                opt.get(key) or opt[f'{stack}_layer_map'],
                layers[stack],
                teacher_layers[stack],
                f'{stack}-init-layer-map',
            )
            opt[key] = format_layer_map(init_maps[stack])
    if layerwise or wide:
        init = (
            '; init ' + '; '.join(f'{s} {init_maps[s]}' for s in STACKS) if wide else ''
        )
        logging.info(
            'Layer maps (student layer -> teacher layer): '
            + '; '.join(f'{s} {maps[s]}' for s in STACKS)
            + init
        )
    return maps, init_maps
