"""What the faster distillation methods save (a benchmark, not a test).

    python -m anti_scaling.scripts.benchmark_methods shared-encoder [--steps 20]
    python -m anti_scaling.scripts.benchmark_methods on-policy [--steps 20]
    python -m anti_scaling.scripts.benchmark_methods cache [--steps 20] [--top-k 32]

On the same batches of real conversations, interleaved step by step, it times
training steps of several variants of one student and prints the median step
time of each and its ratio to the first:

- ``shared-encoder``: a BlenderBot-shaped teacher (2 encoder, 8 decoder layers)
  and a wide student keeping its encoder (2 + 2 layers); the student's own
  encoder and the teacher's, versus one frozen encoder run once per step
  (``--share-teacher-encoder true --freeze-encoder true``).
- ``on-policy``: a narrow student with a prediction-layer loss, on the labels
  versus on replies sampled from itself (``--on-policy-fraction 1``): the cost of
  an on-policy step.
- ``cache``: a narrow student of under a quarter of the teacher's compute with a
  prediction-layer loss, the live teacher versus a top-k teacher-output cache
  (``--teacher-cache``, built first with ``cache_teacher_outputs``); also the
  cache's size per 1,000 label tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch

from .benchmark_setup import (
    CACHED_CONVERSATIONS,
    CLOCKS,
    _flag_args,
    _parse,
    add_benchmark_args,
    build_cache,
    load_batches,
    prepare,
)

WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
TASK = 'anti_scaling.tasks.chitchat'
NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'


def variants(kind: str, cfg: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, agent arguments) of each variant compared by ``kind``."""
    if kind == 'shared-encoder':
        base = ['-m', WIDE, '--n-decoder-layers', '2']
        base += _flag_args({'pred_loss_coeff': 1.0, 'hidden_loss_coeff': 1.0})
        return [
            ('own encoders (student trains its encoder)', base),
            (
                'frozen student encoder, teacher re-encodes',
                base + ['--freeze-encoder', 'true'],
            ),
            (
                'shared frozen encoder, run once',
                base + ['--freeze-encoder', 'true', '--share-teacher-encoder', 'true'],
            ),
        ]
    base = ['-m', NARROW, '--embedding-size', str(cfg.student_width)]
    base += ['--ffn-size', str(4 * cfg.student_width), '--n-heads', str(cfg.heads)]
    if kind == 'cache':
        base += ['--n-layers', '2', '--pred-loss-coeff', '1']
        base += ['-t', TASK, '--chitchat-max-conversations', str(CACHED_CONVERSATIONS)]
        return [
            ('live teacher', base),
            (f'teacher cache (top-{cfg.top_k})', base + ['--teacher-cache', cfg.cache]),
        ]
    base += _flag_args({'pred_loss_coeff': 1.0, 'pred_loss_type': 'jsd'})
    length = ['--on-policy-max-length', str(cfg.label_truncate)]
    return [
        ('on the labels (off-policy)', base),
        (
            'on student samples (on-policy)',
            base + ['--on-policy-fraction', '1', *length],
        ),
    ]


def build(workdir: str, args: list[str], name: str):
    from parlai.core.agents import create_agent

    common = ['-dp', f'{workdir}/data', '--loglevel', 'error', '--optimizer', 'adam']
    common += ['-lr', '1e-4', '--lr-scheduler', 'none', '--teacher-model']
    common += [f'{workdir}/teacher', '-mf', f'{workdir}/{name}/model']
    torch.manual_seed(0)
    return create_agent(_parse([*common, *args]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('kind', choices=['shared-encoder', 'on-policy', 'cache'])
    parser.add_argument('--top-k', type=int, default=32)
    add_benchmark_args(parser, warmup=2, heads=4, teacher_width=256, student_width=128)
    cfg = parser.parse_args(argv)
    cfg.layers, cfg.memory_steps = 4, 0
    if cfg.kind == 'shared-encoder':
        cfg.encoder_layers, cfg.decoder_layers = 2, 8
    if cfg.kind == 'cache':
        cfg.student_width = min(cfg.student_width, cfg.teacher_width * 3 // 8)
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as workdir:
        prepare(workdir, cfg)
        batches = load_batches(workdir, cfg.steps + cfg.warmup)
        if cfg.kind == 'cache':
            cfg.cache, size = build_cache(workdir, cfg)
        agents = [
            (name, build(workdir, args, f'v{i}'))
            for i, (name, args) in enumerate(variants(cfg.kind, cfg))
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in agents}
        clock = CLOCKS[cfg.clock]
        for step, batch in enumerate(batches):
            for name, agent in agents:
                start = clock()
                agent.train_step(batch)
                elapsed = clock() - start
                agent._local_metrics.clear()  # batch_act would hand these to the world
                if step >= cfg.warmup:
                    times[name].append(elapsed)
    print(
        f'{cfg.kind}: {cfg.steps} timed steps after {cfg.warmup} warm-up, batch '
        f'{cfg.batchsize}, contexts up to {cfg.text_truncate} tokens, {cfg.threads} '
        f'threads, {cfg.clock} clock'
    )
    first = statistics.median(times[agents[0][0]])
    for name, _ in agents:
        median = statistics.median(times[name])
        print(
            f'  {name:<48} {1000 * median:8.1f} ms   x{median / first:.3f} time, '
            f'x{first / median:.2f} steps per second'
        )
    if cfg.kind == 'cache':
        print(f'  cache size: {size:.1f} kB per 1,000 label tokens')
    return 0


if __name__ == '__main__':
    sys.exit(main())
