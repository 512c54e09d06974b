"""Layer maps: the default uniform map and explicit lists."""

from __future__ import annotations

import pytest

from anti_scaling.agents.layer_maps import (
    format_layer_map,
    parse_layer_map,
    uniform_layer_map,
)
from anti_scaling.errors import DistillationError


@pytest.mark.parametrize(
    'n_student, n_teacher, expected',
    [
        (2, 6, [2, 5]),
        (3, 6, [1, 3, 5]),
        (1, 4, [3]),
        (4, 4, [0, 1, 2, 3]),
        (12, 24, list(range(1, 24, 2))),
        (3, 8, [1, 4, 7]),  # floor(8/3)-1, floor(16/3)-1, floor(24/3)-1
    ],
)
def test_uniform_map(n_student, n_teacher, expected):
    layer_map = uniform_layer_map(n_student, n_teacher)
    assert layer_map == expected
    assert layer_map[-1] == n_teacher - 1  # the last teacher layer is always used


def test_parse_explicit_and_default():
    assert parse_layer_map('0, 3,5', 3, 6, 'encoder-layer-map') == [0, 3, 5]
    assert parse_layer_map(None, 2, 6, 'encoder-layer-map') == [2, 5]
    assert parse_layer_map('', 2, 6, 'encoder-layer-map') == [2, 5]
    assert format_layer_map([0, 3, 5]) == '0,3,5'


@pytest.mark.parametrize(
    'text, message',
    [
        ('1,3', 'lists 2 layers but the student has 3'),
        ('0,3,6', r'teacher layer\(s\) \[6\]'),
        ('-1,2,4', r'teacher layer\(s\) \[-1\]'),
        ('3,1,5', 'not strictly increasing'),
        ('1,1,5', 'not strictly increasing'),
        ('a,b,c', 'comma-separated teacher layer indices'),
    ],
)
def test_bad_explicit_maps(text, message):
    with pytest.raises(DistillationError, match=message) as info:
        parse_layer_map(text, 3, 6, 'decoder-layer-map')
    assert '\n' not in str(info.value)
    assert '--decoder-layer-map' in str(info.value)


def test_more_student_than_teacher_layers_has_no_default_map():
    with pytest.raises(DistillationError, match='has 4 layers but the teacher only 2'):
        parse_layer_map(None, 4, 2, 'encoder-layer-map')
