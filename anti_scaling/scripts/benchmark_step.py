"""What a distillation step costs beyond its unavoidable parts (a benchmark, not a test).

    python -m anti_scaling.scripts.benchmark_step [--steps 10] [--device cpu|cuda]

On the same batches of real conversations (``anti_scaling.tasks.chitchat``,
contexts truncated to ``--text-truncate`` tokens, replies to
``--label-truncate``), interleaved step by step, in each precision (on the CPU
float32 and bf16 autocast; on CUDA float16 with ParlAI's ``--fp16`` optimizers
and bf16 autocast), it times:

- ``floor``: a plain training step of the narrow student (``transformer/generator``,
  same shape and initial weights) plus a forward pass of the teacher without
  gradients: the parts no distillation can avoid;
- ``all``: a distillation step of that student with every loss term on
  (``DistillNarrowTransformerAgent``, ``--fused-prediction true``);
- ``pred``: the same with only the task and prediction terms;
- ``all_unfused``: ``all`` without ``--fused-prediction`` (today's default);

and prints each over the floor (targets: ``all`` at most 1.05). Then a plain
student step alone against a step whose targets come from a top-k teacher cache
(target: at most 1.15); the peak memory of ``floor``, ``all`` and
``all_unfused`` steps, each in a fresh process (target: ``all`` at most 1.15 x
``floor``); and the prediction term alone on a vocabulary of 50,000 at 16 x 128
label tokens, today's way and fused (:mod:`.benchmark_term`; target: 4 x lower).
The teacher must hold no gradients and no optimizer state (checked). The last
line printed is one JSON object of every figure. Teacher and students have
random weights: speed and memory do not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

from .benchmark_setup import (
    DTYPES,
    SINGLE_TERMS,
    VARIANTS,
    _precision,
    add_benchmark_args,
    build_cache,
    build_steps,
    load_batches,
    prepare,
    time_variants,
)

__all__ = ['build_parser', 'main', 'prepare', 'print_memory']


def _high_water_mb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``; unlike ``getrusage``,
    it does not inherit the parent's peak across ``exec``)."""
    try:
        with open('/proc/self/status') as fh:
            for line in fh:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(workdir: str, cfg: argparse.Namespace, mode: str, dtype: str) -> dict:
    """Run ``mode`` steps (``floor`` or a variant) in this process; peak memory in
    MB (CPU: resident; CUDA: allocated) and what was held after set-up."""
    steps, _ = build_steps(workdir, cfg, dtype, [mode])
    batches = load_batches(workdir, cfg.memory_steps, cfg.device)
    gc.collect()
    if cfg.device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        setup = torch.cuda.memory_allocated() / 2**20
    else:
        setup = _high_water_mb()
    for batch in batches:
        with _precision(dtype, cfg.device):
            steps[mode](batch)
    if cfg.device == 'cuda':
        torch.cuda.synchronize()
        return {'setup_mb': setup, 'peak_mb': torch.cuda.max_memory_allocated() / 2**20}
    return {'setup_mb': setup, 'peak_mb': _high_water_mb()}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also those of the memory runs it starts)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_benchmark_args(parser, warmup=2, steps=10, batchsize=16)
    parser.add_argument('--memory-steps', type=int, default=3)
    parser.add_argument(
        '--bf16-steps',
        type=int,
        default=3,
        help='timed bf16 steps on the CPU (at most --steps, after one warm-up): '
        'without bf16 instructions a bf16 step takes several times a float32 one',
    )
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--encoder-layers', type=int, default=None)
    parser.add_argument('--decoder-layers', type=int, default=None)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--dtypes', nargs='+', default=None, help='default: per device')
    parser.add_argument('--fp16-impl', default='mem_efficient')
    parser.add_argument('--chunk-size', type=int, default=256)
    parser.add_argument('--top-k', type=int, default=32)
    parser.add_argument('--term-vocab', type=int, default=50000)
    parser.add_argument('--term-tokens', type=int, default=16 * 128)
    parser.add_argument('--skip-memory', action='store_true')
    parser.add_argument('--skip-term', action='store_true')
    parser.add_argument('--skip-cache', action='store_true')
    parser.add_argument(
        '--per-term',
        action='store_true',
        help='instead: each term alone (with the task) over the floor, time and '
        'peak memory, in the first precision',
    )
    parser.add_argument('--memory-mode', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--memory-dtype', default='float32', help=argparse.SUPPRESS)
    parser.add_argument('--workdir', default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    cfg = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # figures appear as they are made
        sys.stdout.reconfigure(line_buffering=True)
    if cfg.chunk_size <= 0:
        print(f'--chunk-size is {cfg.chunk_size}: it must be a positive integer')
        return 2
    if cfg.device == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: no CUDA device is available')
        return 2
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    if cfg.memory_mode:
        figures = peak_memory(cfg.workdir, cfg, cfg.memory_mode, cfg.memory_dtype)
        print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        prepare(workdir, cfg)
        figures = run(workdir, cfg, argv if argv is not None else sys.argv[1:])
    print(json.dumps(figures, sort_keys=True))
    return 0


def _subprocess_json(args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, '-m', *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(workdir: str, cfg: argparse.Namespace, argv: list[str]) -> dict:
    """Every measurement; prints each figure and returns them all."""
    dtypes = cfg.dtypes or DTYPES[cfg.device]
    figures: dict = {'device': describe_device(cfg.device), 'threads': cfg.threads}
    print(
        f"{figures['device']}; teacher {cfg.encoder_layers or cfg.layers}+"
        f'{cfg.decoder_layers or cfg.layers} layers width {cfg.teacher_width}; '
        f'student width {cfg.student_width}; batch {cfg.batchsize}; {cfg.steps} timed '
        f'steps after {cfg.warmup} warm-up ({min(cfg.steps, cfg.bf16_steps)} after 1 '
        f'in bf16 on the CPU); {cfg.threads} threads; '
        f"{'CUDA events' if cfg.device == 'cuda' else cfg.clock + ' clock'}",
        flush=True,
    )
    if cfg.per_term:
        return per_term_figures(workdir, cfg, argv, dtypes[0])
    for dtype in dtypes:
        r = time_variants(workdir, cfg, dtype, ['floor', *VARIANTS])
        if 'student_compute_share' in r and 'student_compute_share' not in figures:
            figures['student_compute_share'] = r['student_compute_share']
            print(
                f"batches: {r['context_tokens']:.0f} context and "
                f"{r['label_tokens']:.0f} label tokens per example; student compute "
                f"= {100 * r['student_compute_share']:.0f}% of the teacher's"
            )
        print(
            f"{dtype}: floor (student step + teacher forward) "
            f"{1000 * r['median_s']['floor']:.1f} ms (median)"
        )
        for name, key, target in (
            ('all', 'step_ratio', ' (target <= 1.05)'),
            ('pred', 'pred_step_ratio', ''),
            ('all_unfused', 'step_ratio_unfused', ''),
        ):
            figures[f'{key}_{dtype}'] = r['ratio'][name]
            figures[f'{key}_median_{dtype}'] = r['pairwise'][name]
            figures[f'step_ms_{name}_{dtype}'] = 1000 * r['median_s'][name]
            print(
                f"  {name:<12} {1000 * r['median_s'][name]:9.1f} ms   over the "
                f"floor: {r['ratio'][name]:.3f} (sum of times), "
                f"{r['pairwise'][name]:.3f} (median of per-step ratios){target}"
            )
        figures['teacher_grads'] = r['teacher_grads']
        figures['teacher_params_in_optimizer'] = r['teacher_params_in_optimizer']
        print(
            f"  teacher parameters with gradients: {r['teacher_grads']}; in the "
            f"students' optimizers: {r['teacher_params_in_optimizer']}"
        )
    if not cfg.skip_cache:
        cfg.cache, size = build_cache(workdir, cfg)
        r = time_variants(workdir, cfg, dtypes[0], ['plain', 'cached'])
        figures['cache_step_ratio'] = r['ratio']['cached']
        figures['cache_kb_per_1000_label_tokens'] = size
        print(
            f"cached teacher (top-{cfg.top_k}, pred_loss, fused) over a plain student "
            f"step, {dtypes[0]}: {r['ratio']['cached']:.3f} (sum of times), "
            f"{r['pairwise']['cached']:.3f} (median); target <= 1.15"
        )
    # The term's runs (long in bf16 on CPUs without bf16 instructions) go beside
    # the memory runs: peaks do not depend on what else the machine runs.
    with ThreadPoolExecutor(max_workers=1) as pool:
        term = None if cfg.skip_term else pool.submit(term_runs, cfg, dtypes)
        if not cfg.skip_memory:
            figures.update(memory_figures(workdir, cfg, argv, dtypes))
        if term is not None:
            figures.update(print_term(term.result(), cfg, dtypes))
    return figures


def per_term_figures(
    workdir: str, cfg, argv: list[str], dtype: str
) -> dict:  # noqa: ANN001
    """Where the time and memory go: each term alone over the floor."""
    names = ['floor', 'all', *SINGLE_TERMS]
    r = time_variants(workdir, cfg, dtype, names)
    peaks = {
        name: _subprocess_json(
            ['anti_scaling.scripts.benchmark_step', *argv]
            + ['--memory-mode', name, '--memory-dtype', dtype, '--workdir', workdir]
        )['peak_mb']
        for name in names
    }
    print(f'{dtype}, each term with the task loss (fused prediction), over the floor:')
    figures = {}
    for name in names[1:]:
        time_ratio, memory_ratio = r['ratio'][name], peaks[name] / peaks['floor']
        figures[f'per_term_step_ratio_{name}'] = time_ratio
        figures[f'per_term_memory_ratio_{name}'] = memory_ratio
        print(
            f'  {name:<32} time {time_ratio:.3f} ({1000 * r["median_s"][name]:.0f} '
            f'ms), peak memory {memory_ratio:.3f} ({peaks[name]:.0f} MB)'
        )
    return figures


def memory_figures(workdir: str, cfg, argv: list[str], dtypes) -> dict:  # noqa: ANN001
    """Peak memory of ``floor``, ``all`` and ``all_unfused``, each in a fresh process."""
    rows = {}
    for dtype in dtypes:
        for mode in ('floor', 'all', 'all_unfused'):
            rows[mode, dtype] = _subprocess_json(
                ['anti_scaling.scripts.benchmark_step', *argv]
                + ['--memory-mode', mode, '--memory-dtype', dtype]
                + ['--workdir', workdir]
            )
    return print_memory(rows, cfg.memory_steps, dtypes)


def print_memory(
    rows: dict, steps: int, dtypes=('float32', 'bf16')
) -> dict:  # noqa: ANN001
    """Peak memory of each mode per precision, and their ratios over the floor."""
    figures = {}
    print(f'peak memory (fresh process each, {steps} steps; after set-up in brackets):')
    for mode in ('floor', 'all', 'all_unfused'):
        print(
            f'  {mode:<12}'
            + ', '.join(
                f"{dtype} {rows[mode, dtype]['peak_mb']:.0f} MB "
                f"({rows[mode, dtype]['setup_mb']:.0f})"
                for dtype in dtypes
            )
        )
    for dtype in dtypes:
        floor = rows['floor', dtype]['peak_mb']
        for mode, key in (
            ('all', 'memory_ratio'),
            ('all_unfused', 'memory_ratio_unfused'),
        ):
            figures[f'{key}_{dtype}'] = rows[mode, dtype]['peak_mb'] / floor
            figures[f'peak_mb_{mode}_{dtype}'] = rows[mode, dtype]['peak_mb']
        figures[f'peak_mb_floor_{dtype}'] = floor
        print(
            f"  over the floor in {dtype}: all {figures[f'memory_ratio_{dtype}']:.3f} "
            f"(target <= 1.15), all_unfused {figures[f'memory_ratio_unfused_{dtype}']:.3f}"
        )
    return figures


def term_runs(cfg: argparse.Namespace, dtypes) -> dict:  # noqa: ANN001
    """The prediction term alone, unfused and fused (:mod:`.benchmark_term`), each
    in a fresh process; ``{(mode, dtype): figures}``."""
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'}
    return {
        (mode, dtype): _subprocess_json(
            ['anti_scaling.scripts.benchmark_term', '--mode', mode]
            + ['--dtype', dtype, '--device', cfg.device]
            + ['--vocab', str(cfg.term_vocab), '--tokens', str(cfg.term_tokens)]
            + ['--width', str(cfg.student_width)]
            + ['--teacher-width', str(cfg.teacher_width)]
            + ['--chunk-size', str(cfg.chunk_size), '--threads', str(cfg.threads)],
            env,
        )
        for dtype in dtypes
        for mode in ('unfused', 'fused')
    }


def print_term(rows: dict, cfg: argparse.Namespace, dtypes) -> dict:  # noqa: ANN001
    """The term's peaks, today's and fused, and their ratio."""
    figures = {}
    print(
        f'prediction term alone (task + forward KL, both output layers, backward), '
        f'vocabulary {cfg.term_vocab}, {cfg.term_tokens} label tokens:'
    )
    for dtype in dtypes:
        for mode in ('unfused', 'fused'):
            figures[f'term_peak_mb_{mode}_{dtype}'] = rows[mode, dtype]['peak_mb']
            figures[f'term_seconds_{mode}_{dtype}'] = rows[mode, dtype]['seconds']
        before, after = (
            rows['unfused', dtype]['peak_mb'],
            rows['fused', dtype]['peak_mb'],
        )
        figures[f'term_peak_ratio_{dtype}'] = before / after
        print(
            f'  {dtype}: peak {before:.0f} MB today, {after:.0f} MB fused: '
            f'{before / after:.1f} x lower (target >= 4)'
        )
    return figures


def describe_device(device: str) -> str:
    if device == 'cuda':
        return torch.cuda.get_device_name()
    try:
        with open('/proc/cpuinfo') as fh:
            for line in fh:
                if line.startswith('model name'):
                    return (
                        f"CPU ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
                    )
    except OSError:
        pass
    return 'CPU'


if __name__ == '__main__':
    sys.exit(main())
