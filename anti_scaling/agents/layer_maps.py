"""Which teacher layer each student layer learns from (and is initialised from)."""

from __future__ import annotations

from ..errors import DistillationError


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
