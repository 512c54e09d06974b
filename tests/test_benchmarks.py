"""The benchmark scripts run end to end (tiny settings; their figures are not tested:
speed targets are read from the scripts' output, never asserted in tests)."""

from __future__ import annotations

import json

import pytest

from anti_scaling.scripts import benchmark_methods, benchmark_step, benchmark_term

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


def test_benchmark_step_prints_the_ratios_and_ends_with_json(capsys):
    args = [
        *TINY,
        '--skip-memory',
        '--skip-term',
        '--skip-cache',
        '--dtypes',
        'float32',
    ]
    assert benchmark_step.main(args) == 0
    out = capsys.readouterr().out
    assert 'over the floor' in out
    assert "teacher parameters with gradients: 0; in the students' optimizers: 0" in out
    figures = json.loads(out.strip().splitlines()[-1])
    for key in ('step_ratio_float32', 'pred_step_ratio_float32'):
        assert figures[key] > 0
    assert figures['step_ratio_unfused_float32'] > 0
    assert figures['teacher_grads'] == 0


def test_benchmark_step_memory_run_in_bf16(tmp_path, capsys):
    """One memory run of the fused distillation step under bf16 autocast."""
    cfg = benchmark_step.build_parser().parse_args([*TINY, '--memory-steps', '2'])
    benchmark_step.prepare(str(tmp_path), cfg)
    args = [*TINY, '--memory-steps', '2', '--memory-mode', 'all']
    args += ['--memory-dtype', 'bf16', '--workdir', str(tmp_path)]
    assert benchmark_step.main(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures['peak_mb'] >= figures['setup_mb'] > 0


def test_benchmark_step_prints_both_precisions_and_ratios(capsys):
    rows = {}
    for dtype, scale in (('float32', 1.0), ('bf16', 0.8)):
        for mode, peak in (('floor', 1000.0), ('all', 1100.0), ('all_unfused', 1500.0)):
            rows[mode, dtype] = {'peak_mb': peak * scale, 'setup_mb': 600.0}
    figures = benchmark_step.print_memory(rows, 8)
    out = capsys.readouterr().out
    assert '  floor       float32 1000 MB (600), bf16 800 MB (600)' in out
    assert (
        'over the floor in float32: all 1.100 (target <= 1.15), all_unfused 1.500'
        in out
    )
    assert figures['memory_ratio_bf16'] == pytest.approx(1.1)
    assert figures['memory_ratio_unfused_float32'] == pytest.approx(1.5)


@pytest.mark.parametrize('mode', ['unfused', 'fused'])
def test_benchmark_term_runs_both_ways(mode, capsys):
    args = ['--mode', mode, '--vocab', '300', '--tokens', '40', '--width', '8']
    assert (
        benchmark_term.main([*args, '--teacher-width', '8', '--chunk-size', '7']) == 0
    )
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures['peak_mb'] >= 0 and figures['seconds'] > 0


def test_benchmark_chunk_size_is_refused_in_one_line(capsys):
    assert benchmark_term.main(['--chunk-size', '0']) == 2
    assert benchmark_step.main(['--chunk-size', '-1']) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        '--chunk-size is 0: it must be a positive integer',
        '--chunk-size is -1: it must be a positive integer',
    ]


@pytest.mark.parametrize('kind', ['shared-encoder', 'on-policy', 'cache'])
def test_benchmark_methods_compare_variants(kind, capsys):
    assert benchmark_methods.main([kind, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count(' ms ') >= 2
    if kind == 'cache':
        assert 'kB per 1,000 label tokens' in out
