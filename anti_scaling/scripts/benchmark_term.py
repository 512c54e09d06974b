"""The prediction term alone: its peak memory, today's way and fused (a benchmark).

    python -m anti_scaling.scripts.benchmark_term [--vocab 50000] [--tokens 2048]
        [--mode unfused|fused] [--dtype float32|bf16|fp16] [--device cpu|cuda]

From both models' decoder states ``[N, D]`` (``--tokens`` label tokens, e.g. batch
16 x 128) to the loss and its backward pass: the teacher's output layer (no
gradient), the student's, ParlAI's cross-entropy and the forward KL at
temperature 2. ``unfused`` is the step without ``--fused-prediction`` (full
``[N, V]`` logits of both models, ParlAI's criterion, the objective on them);
``fused`` is :func:`anti_scaling.losses.fused_output.fused_output_loss` with
``--chunk-size`` rows at a time. Printed (one JSON line): the term's peak above
its inputs (states and weights) and the time of one forward and backward pass.
On the CPU the peak is the resident memory's high-water mark of this process
(Linux; start it with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors
leave it), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import sys
import time

import torch
import torch.nn.functional as F

from ..agents.teacher_targets import TeacherOutputs
from ..losses import prediction_kl
from ..losses.fused_output import fused_output_loss

DTYPES = {'float32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
TEMPERATURE = 2.0


def _resident_mb(key: str) -> float:
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak(device: str) -> float:
    """Forget the peak so far; what is held now (MB)."""
    gc.collect()
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with contextlib.suppress(OSError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')
    return _resident_mb('VmRSS:')


def _peak(device: str) -> float:
    if device == 'cuda':
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _resident_mb('VmHWM:')


def _precision(dtype: str, device: str):  # noqa: ANN202
    """bf16: autocast around float32 weights (as the benchmark's steps); fp16:
    half-precision weights and states (as ``--fp16``); float32: nothing."""
    if dtype == 'bf16':
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def term_step(mode: str, inputs: dict, chunk_size: int) -> torch.Tensor:
    """One forward pass of the term (task cross-entropy + forward KL), then backward."""
    h_s, w_s, h_t, w_t, labels = (
        inputs[k] for k in ('h_s', 'w_s', 'h_t', 'w_t', 'labels')
    )
    if mode == 'unfused':
        with torch.no_grad():
            teacher = F.linear(h_t, w_t)
        logits = F.linear(h_s, w_s)
        task = F.nll_loss(F.log_softmax(logits, -1, dtype=torch.float32), labels)
        every = torch.ones(1, labels.numel(), dtype=torch.bool, device=labels.device)
        pred = prediction_kl(logits[None], teacher[None], every, TEMPERATURE).mean()
        loss = task + pred
    else:
        teacher = TeacherOutputs([h_t], [lambda h: F.linear(h, w_t)], [1.0], True)
        count = labels.numel()

        def chunk_loss(z, start, end):  # noqa: ANN001, ANN202
            task = F.cross_entropy(z, labels[start:end], reduction='none')
            target, _ = teacher.logits(start, end, TEMPERATURE)
            every = torch.ones(end - start, 1, dtype=torch.bool, device=z.device)
            pred = prediction_kl(z[:, None], target[:, None], every, TEMPERATURE)
            return (task.sum() + pred.total.sum()) / count, ()

        loss = fused_output_loss(h_s, w_s, None, chunk_loss, chunk_size)[0]
    loss.backward()
    return loss.detach()


def make_inputs(cfg: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(0)
    dtype = DTYPES['fp16' if cfg.dtype == 'fp16' else 'float32']

    def randn(*shape: int, grad: bool = False) -> torch.Tensor:
        x = (torch.randn(*shape, generator=generator) / shape[-1] ** 0.5).to(
            cfg.device, dtype
        )
        return x.requires_grad_(grad)

    return {
        'h_s': randn(cfg.tokens, cfg.width, grad=True),
        'w_s': randn(cfg.vocab, cfg.width, grad=True),
        'h_t': randn(cfg.tokens, cfg.teacher_width),
        'w_t': randn(cfg.vocab, cfg.teacher_width),
        'labels': torch.randint(0, cfg.vocab, (cfg.tokens,), generator=generator).to(
            cfg.device
        ),
    }


def measure(cfg: argparse.Namespace) -> dict:
    torch.set_num_threads(cfg.threads)
    inputs = make_inputs(cfg)
    for _ in range(cfg.repeats):
        for key in ('h_s', 'w_s'):
            inputs[key].grad = None
        held = _reset_peak(cfg.device)
        start = time.perf_counter()
        with _precision(cfg.dtype, cfg.device):
            term_step(cfg.mode, inputs, cfg.chunk_size)
        if cfg.device == 'cuda':
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = _peak(cfg.device) - held
    return {'peak_mb': peak, 'seconds': seconds, 'repeats': cfg.repeats}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--mode', choices=['unfused', 'fused'], default='fused')
    parser.add_argument('--dtype', choices=list(DTYPES), default='float32')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--vocab', type=int, default=50000)
    parser.add_argument('--tokens', type=int, default=16 * 128)
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--teacher-width', type=int, default=512)
    parser.add_argument('--chunk-size', type=int, default=256)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    cfg = build_parser().parse_args(argv)
    if cfg.chunk_size <= 0:
        print(f'--chunk-size is {cfg.chunk_size}: it must be a positive integer')
        return 2
    print(json.dumps(measure(cfg)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
