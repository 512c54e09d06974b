"""The benchmark scripts run end to end (tiny settings; their figures are not tested:
speed targets are read from the scripts' output, never asserted in tests)."""

from __future__ import annotations

import pytest

from anti_scaling.scripts import benchmark_methods, benchmark_step

TINY = [
    '--steps',
    '2',
    '--warmup',
    '1',
    '--batchsize',
    '4',
    '--vocab',
    '400',
    '--teacher-width',
    '32',
    '--student-width',
    '16',
    '--text-truncate',
    '16',
    '--label-truncate',
    '8',
    '--threads',
    '1',
]


def test_benchmark_step_prints_the_ratio(capsys):
    assert benchmark_step.main([*TINY, '--skip-memory']) == 0
    out = capsys.readouterr().out
    assert 'ratio a/b:' in out
    assert "teacher parameters with gradients: 0; in the student's optimizer: 0" in out


@pytest.mark.parametrize('kind', ['shared-encoder', 'on-policy', 'cache'])
def test_benchmark_methods_compare_variants(kind, capsys):
    assert benchmark_methods.main([kind, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count(' ms ') >= 2
    if kind == 'cache':
        assert 'kB per 1,000 label tokens' in out
