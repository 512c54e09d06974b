"""The benchmark scripts run end to end (tiny settings; their figures are not tested:
speed targets are read from the scripts' output, never asserted in tests)."""

from __future__ import annotations

import json

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


def test_benchmark_step_memory_run_in_bf16(tmp_path, capsys):
    """One memory run of the distillation step under bf16 autocast, in process."""
    cfg = benchmark_step.build_parser().parse_args([*TINY, '--memory-steps', '2'])
    benchmark_step.prepare(str(tmp_path), cfg)
    args = [*TINY, '--memory-steps', '2', '--memory-mode', 'distill']
    args += ['--memory-dtype', 'bf16', '--workdir', str(tmp_path)]
    assert benchmark_step.main(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures['peak_mb'] >= figures['setup_mb'] > 0


def test_benchmark_step_prints_both_precisions_and_ratios(capsys):
    rows = {
        ('baseline', 'float32'): {'peak_mb': 1000.0, 'setup_mb': 600.0},
        ('distill', 'float32'): {'peak_mb': 1500.0, 'setup_mb': 600.0},
        ('baseline', 'bf16'): {'peak_mb': 800.0, 'setup_mb': 600.0},
        ('distill', 'bf16'): {'peak_mb': 1200.0, 'setup_mb': 600.0},
    }
    benchmark_step.print_memory(rows, 8)
    out = capsys.readouterr().out
    assert (
        '(b) float32 1000 MB (600), bf16 autocast 800 MB (600), ratio bf16/float32 0.800'
        in out
    )
    assert (
        '(a) float32 1500 MB (600), bf16 autocast 1200 MB (600), ratio bf16/float32 0.800'
        in out
    )
    assert 'ratio a/b in float32: 1.500' in out
    assert 'ratio a/b in bf16: 1.500' in out


@pytest.mark.parametrize('kind', ['shared-encoder', 'on-policy', 'cache'])
def test_benchmark_methods_compare_variants(kind, capsys):
    assert benchmark_methods.main([kind, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count(' ms ') >= 2
    if kind == 'cache':
        assert 'kB per 1,000 label tokens' in out
