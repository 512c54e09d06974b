"""The GPU checks of ``--fused-prediction`` and the step benchmark, in one run.

    make gpu-check                      # on the GPU machine (see the Makefile)
    python -m experiments.gpu_check [--device cuda|cpu] [--quick] [--out FILE]

1. The BlenderBot 2.7B replica of ``tests/test_blenderbot_replica.py``: its
   teacher trained with the published fine-tuning options (``--fp16 true``,
   ``--fp16-impl mem_efficient``), then distilled with ``--recipe
   blender_400Mdistill`` for a few ``--fp16`` steps, with and without
   ``--fused-prediction``: each run's first and last train reports and time.
2. ``anti_scaling.scripts.benchmark_step --device cuda`` (float16 through
   ParlAI's fp16 optimizer and bf16 autocast, CUDA events,
   ``torch.cuda.max_memory_allocated``) at shapes standing for the BlenderBot
   recipes scaled to one GPU; its JSON figures.
3. One distillation report (``anti_scaling.scripts.distill_report``: teacher and
   stripped student, greedy and beam generation), timed.

Every figure goes to ``--out`` (JSON), written after each part. ``--device
cpu --quick`` runs the same parts, small, on a machine without a GPU (ParlAI
then computes ``--fp16`` models in float32), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

TESTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'
)
#: The benchmark's shapes on a GPU: BlenderBot's stacks (2 encoder layers, a deep
#: decoder), its 8,008-token vocabulary cap and 128-token contexts and replies.
GPU_BENCH = [
    *('--encoder-layers', '2', '--decoder-layers', '12', '--teacher-width', '1024'),
    *('--student-width', '512', '--heads', '16', '--batchsize', '16'),
    *('--text-truncate', '128', '--label-truncate', '128', '--vocab', '8008'),
    *('--steps', '20', '--warmup', '5', '--memory-steps', '5', '--chunk-size', '1024'),
]
QUICK_BENCH = [
    *('--teacher-width', '32', '--student-width', '16', '--batchsize', '4'),
    *('--vocab', '400', '--text-truncate', '16', '--label-truncate', '8'),
    *('--steps', '2', '--warmup', '1', '--memory-steps', '2', '--chunk-size', '16'),
    *('--term-vocab', '300', '--term-tokens', '64', '--threads', '1', '--skip-memory'),
]


def environment(device: str) -> dict:
    import parlai

    out = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'parlai': getattr(parlai, '__version__', '?'),
        'device': device,
    }
    if device == 'cuda':
        out['gpu'] = torch.cuda.get_device_name()
        out['cuda'] = torch.version.cuda
    return out


def replica(root: str, device: str, quick: bool) -> dict:
    """Train the replica teacher, distil it twice (fused and not); reports and times."""
    sys.path.insert(0, TESTS)
    from dictionary_support import no_downloads, seeded_train, train_byte_level_bpe
    from helpers import train_reports
    from test_blenderbot_replica import (
        BLENDER_3B_FINE_TUNING,
        REPLICA_CHANGES,
        STUDENT_TRAINING,
        STUDENTS,
    )

    from anti_scaling.compat import compatible_lr_schedulers
    from anti_scaling.zoo.recipes import RECIPES

    datapath = os.path.join(root, 'data')
    vocab, merges = train_byte_level_bpe(os.path.join(root, 'bpe'), vocab_size=1000)
    device_options = {'no_cuda': True} if device == 'cpu' else {}
    steps = 4 if quick else 16
    teacher = os.path.join(root, 'teacher', 'model')
    options = {**BLENDER_3B_FINE_TUNING, **REPLICA_CHANGES, **device_options}
    options = {k: v for k, v in options.items() if v is not None}
    options.update(
        bpe_vocab=vocab, bpe_merge=merges, model_file=teacher, max_train_steps=steps
    )
    start = time.perf_counter()
    with no_downloads(), compatible_lr_schedulers():
        seeded_train(datapath, **options)
    out: dict = {'teacher_train_s': time.perf_counter() - start}
    recipe, sizes = STUDENTS['narrow']
    for fused in (False, True):
        student = os.path.join(root, f'narrow_fused_{fused}', 'model')
        training = {
            **STUDENT_TRAINING,
            'max_train_steps': steps,
            'log_every_n_steps': 1,
        }
        start = time.perf_counter()
        with no_downloads():
            seeded_train(
                datapath,
                model=RECIPES[recipe].agent,
                teacher_model=teacher,
                recipe=recipe,
                model_file=student,
                fp16=True,
                fused_prediction=fused,
                **training,
                **sizes,
                **device_options,
            )
        reports = train_reports(student)
        keys = ('loss', 'ppl', 'token_acc', 'pred_loss', 'distill_loss')
        out[f'fused_{fused}'] = {
            'train_s': time.perf_counter() - start,
            'first': {k: reports[0].get(k) for k in keys},
            'last': {k: reports[-1].get(k) for k in keys},
            'model_file': student,
        }
    out['paths'] = {'datapath': datapath, 'teacher': teacher}
    return out


def benchmark(device: str, quick: bool) -> dict:
    args = ['--device', device, *(QUICK_BENCH if quick else GPU_BENCH)]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, '-m', 'anti_scaling.scripts.benchmark_step', *args],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, flush=True)
    if result.returncode != 0:
        return {'error': result.stderr[-4000:], 'seconds': time.perf_counter() - start}
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {**figures, 'seconds': time.perf_counter() - start, 'args': args}


def report(root: str, paths: dict, student: str, quick: bool) -> dict:
    """Strip the fused student, build the distillation report; its time."""
    sys.path.insert(0, TESTS)
    from dictionary_support import no_downloads

    from anti_scaling.scripts.distill_report import main as report_main
    from anti_scaling.scripts.remove_projection_matrices import main as strip_main

    plain = os.path.join(root, 'plain', 'model')
    assert strip_main([student, '--output', plain]) == 0
    out = os.path.join(root, 'report')
    examples = '3' if quick else '32'
    start = time.perf_counter()
    with no_downloads():
        code = report_main(
            ['--teacher', paths['teacher'], '--students', plain]
            + ['--labels', 'blender_replica', 'narrow_400M_recipe_fused']
            + ['--out', out, '-t', 'anti_scaling.tasks.chitchat']
            + ['-dp', paths['datapath'], '--num-examples', examples]
            + ['--batchsize', '8', '--beam-size', '2', '--warmup', '1', '--quiet']
            + ['--', '--chitchat-max-conversations', '8']
        )
    seconds = time.perf_counter() - start
    with open(os.path.join(out, 'report.json')) as fh:
        models = json.load(fh)['models']
    return {
        'exit_code': code,
        'seconds': seconds,
        'mean_s_per_reply': {
            row['label']: {
                d: row['generation'][d]['mean_s_per_reply'] for d in row['generation']
            }
            for row in models
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--quick', action='store_true', help='small shapes, few steps')
    parser.add_argument('--out', default='runs/gpu_check.json')
    cfg = parser.parse_args(argv)
    if cfg.device == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: no CUDA device is available (use --device cpu --quick)')
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    figures: dict = {'environment': environment(cfg.device)}

    def save(part: str, value: dict) -> None:
        figures[part] = value
        with open(cfg.out, 'w') as fh:
            json.dump(figures, fh, indent=1, sort_keys=True)
        print(f'{part}: {json.dumps(value, sort_keys=True)}', flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        distilled = replica(root, cfg.device, cfg.quick)
        save('replica', distilled)
        save('benchmark', benchmark(cfg.device, cfg.quick))
        student = distilled['fused_True']['model_file']
        save('report', report(root, distilled['paths'], student, cfg.quick))
    figures['total_s'] = time.perf_counter() - start
    save('environment', figures['environment'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
