"""What a distillation step costs beyond its unavoidable parts (a benchmark, not a test).

    python -m anti_scaling.scripts.benchmark_step [--steps 30] [--batchsize 32]

On the same batches of real conversations (``anti_scaling.tasks.chitchat``,
contexts truncated to ``--text-truncate`` tokens, replies to
``--label-truncate``), it times in one run, interleaved step by step:

(a) a distillation training step of a narrow student with every loss term on
    (``DistillNarrowTransformerAgent``);
(b) a plain training step of the same student (``transformer/generator``, same
    shape and initial weights) plus a forward pass of the teacher without
    gradients: the parts no distillation can avoid.

and prints the ratio a/b (target: at most 1.15 for a student of about a quarter
of the teacher's compute). It then runs (a) and (b) each in a fresh process and
prints their peak resident memory: the teacher must add no gradients, optimizer
state or retained activations. Each runs twice, in float32 and in bfloat16
(``torch.autocast('cpu', dtype=torch.bfloat16)`` around the whole step; the
weights, gradients and optimizer states stay float32, the loss terms compute in
float32): both peaks and their ratio are printed. Teacher and students have
random weights: speed and memory do not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

TASK = 'anti_scaling.tasks.chitchat'
NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
#: How a step is timed: elapsed time, or this process's CPU time.
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}
ALL_TERMS = {
    'task_loss_coeff': 1.0,
    'encoder_loss_coeff': 1.0,
    'hidden_loss_coeff': 1.0,
    'pred_loss_coeff': 1.0,
    'embedding_loss_coeff': 1.0,
    'self_attn_loss_coeff': 1.0,
    'enc_dec_attn_loss_coeff': 1.0,
}


def _flag_args(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += ['--' + key.replace('_', '-'), str(value)]
    return out


def _parse(args: list[str]):
    from parlai.core.params import ParlaiParser

    return ParlaiParser(True, True).parse_args(args)


def prepare(workdir: str, cfg: argparse.Namespace) -> None:
    """Write the dictionary, a random teacher and the benchmark batches to ``workdir``."""
    from parlai.core.agents import create_agent
    from parlai.core.teachers import create_task_agent_from_taskname
    from parlai.scripts.build_dict import BuildDict

    datapath = os.path.join(workdir, 'data')
    BuildDict.main(
        task=TASK,
        dict_file=os.path.join(workdir, 'dict'),
        dict_tokenizer='re',
        dict_lower=True,
        dict_maxtokens=cfg.vocab,
        chitchat_max_conversations=500,
        datapath=datapath,
        loglevel='error',
    )
    teacher = create_agent(
        _parse(
            ['-m', 'transformer/generator', '-mf', os.path.join(workdir, 'teacher')]
            + ['--dict-file', os.path.join(workdir, 'dict'), '-dp', datapath]
            + ['--loglevel', 'error', '--lr-scheduler', 'none']
            + _flag_args({**teacher_shape(cfg), **text_options(cfg)})
        )
    )
    teacher.save(os.path.join(workdir, 'teacher'))

    task = create_task_agent_from_taskname(
        _parse(['-t', TASK, '-dt', 'train:ordered', '-dp', datapath])
    )[0]
    batches, observations = [], []
    count = max(cfg.steps + cfg.warmup, cfg.memory_steps)
    while len(batches) < count:
        message = task.act()
        observations.append(teacher.observe(message))
        teacher.self_observe({'text': message['labels'][0]})  # gold reply in history
        if message.get('episode_done'):
            teacher.reset()
        if len(observations) == cfg.batchsize:
            batch = teacher.batchify(observations)
            batches.append((batch.text_vec, batch.label_vec))
            observations = []
    torch.save(batches, os.path.join(workdir, 'batches.pt'))


def teacher_shape(cfg: argparse.Namespace) -> dict:
    return {
        'n_encoder_layers': getattr(cfg, 'encoder_layers', None) or cfg.layers,
        'n_decoder_layers': getattr(cfg, 'decoder_layers', None) or cfg.layers,
        'embedding_size': cfg.teacher_width,
        'ffn_size': 4 * cfg.teacher_width,
        'n_heads': cfg.heads,
    }


def text_options(cfg: argparse.Namespace) -> dict:
    return {
        'text_truncate': cfg.text_truncate,
        'label_truncate': cfg.label_truncate,
        'history_size': 4,
    }


def load_batches(workdir: str, count: int) -> list:
    from parlai.core.torch_agent import Batch

    pairs = torch.load(os.path.join(workdir, 'batches.pt'))[:count]
    return [
        Batch(
            text_vec=text,
            label_vec=label,
            batchsize=text.size(0),
            valid_indices=list(range(text.size(0))),
        )
        for text, label in pairs
    ]


def build_agents(workdir: str, cfg: argparse.Namespace, which: str = 'both'):
    """The distillation student and the plain student (same shape and weights)."""
    from parlai.core.agents import create_agent

    common = ['-dp', os.path.join(workdir, 'data'), '--loglevel', 'error']
    common += ['--optimizer', 'adam', '-lr', '1e-4', '--lr-scheduler', 'none']
    student_shape = {
        'embedding_size': cfg.student_width,
        'ffn_size': 4 * cfg.student_width,
        'n_heads': cfg.heads,
    }
    torch.manual_seed(0)
    distill = create_agent(
        _parse(
            [*common, '-m', NARROW, '--teacher-model', os.path.join(workdir, 'teacher')]
            + ['-mf', os.path.join(workdir, 'distill', 'model')]
            + _flag_args({**student_shape, **ALL_TERMS})
        )
    )
    teacher_model = distill.teacher.model
    if which == 'distill':
        return distill, None, teacher_model
    plain = create_agent(
        _parse(
            [*common, '-m', 'transformer/generator']
            + ['-mf', os.path.join(workdir, 'plain', 'model')]
            + ['--dict-file', os.path.join(workdir, 'dict')]
            + _flag_args({**teacher_shape(cfg), **student_shape, **text_options(cfg)})
        )
    )
    plain.model.load_state_dict(
        {
            k: v
            for k, v in distill.model.state_dict().items()
            if not k.startswith('distill_projections.')
        }
    )
    if which == 'baseline':
        return None, plain, teacher_model  # the distillation student is dropped
    return distill, plain, teacher_model


def distill_step(agent, batch) -> None:
    agent.train_step(batch)
    agent._local_metrics.clear()  # batch_act would hand these to the world


def baseline_step(plain, teacher_model, batch) -> None:
    plain.train_step(batch)
    plain._local_metrics.clear()
    with torch.no_grad():
        teacher_model(batch.text_vec, ys=batch.label_vec)


def forward_flops(model: torch.nn.Module, batch) -> float:
    """Approximate forward FLOPs: 2 * (matrix parameters used per token) per token."""
    tokens_enc = int((batch.text_vec != 0).sum())
    tokens_dec = int((batch.label_vec != 0).sum())
    enc = sum(
        p.numel() for n, p in model.encoder.layers.named_parameters() if p.dim() == 2
    )
    dec = sum(
        p.numel() for n, p in model.decoder.layers.named_parameters() if p.dim() == 2
    )
    out = model.embeddings.weight.numel()
    return 2 * (tokens_enc * enc + tokens_dec * (dec + out))


def time_steps(workdir: str, cfg: argparse.Namespace) -> dict:
    distill, plain, teacher_model = build_agents(workdir, cfg)
    batches = load_batches(workdir, cfg.steps + cfg.warmup)
    clock = CLOCKS[cfg.clock]
    a_times, b_times = [], []
    for i, batch in enumerate(batches):
        start = clock()
        distill_step(distill, batch)
        a = clock() - start
        start = clock()
        baseline_step(plain, teacher_model, batch)
        b = clock() - start
        if i >= cfg.warmup:
            a_times.append(a)
            b_times.append(b)
    batch = batches[0]
    teacher_flops = forward_flops(teacher_model, batch)
    student_flops = forward_flops(plain.model, batch)
    optimised = {id(p) for g in distill.optimizer.param_groups for p in g['params']}
    return {
        'a_median': statistics.median(a_times),
        'b_median': statistics.median(b_times),
        'ratio_of_sums': sum(a_times) / sum(b_times),
        'pairwise_ratio_median': statistics.median(
            x / y for x, y in zip(a_times, b_times)
        ),
        'student_compute_share': student_flops / teacher_flops,
        'context_tokens': float((batch.text_vec != 0).sum(1).float().mean()),
        'label_tokens': float((batch.label_vec != 0).sum(1).float().mean()),
        'teacher_grads': sum(p.grad is not None for p in teacher_model.parameters()),
        'teacher_params_in_optimizer': len(
            {id(p) for p in teacher_model.parameters()} & optimised
        ),
    }


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


#: Precisions of the memory runs: float32, and bfloat16 autocast on the CPU.
MEMORY_DTYPES = ('float32', 'bf16')


def _precision(dtype: str):  # noqa: ANN202
    """The context a step runs in: bfloat16 autocast, or nothing for float32."""
    if dtype == 'bf16':
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory(
    workdir: str, cfg: argparse.Namespace, mode: str, dtype: str = 'float32'
) -> dict:
    """Run ``mode`` ('distill' or 'baseline') steps in this process, each inside
    :func:`_precision` of ``dtype``; peak RSS in MB."""
    distill, plain, teacher_model = build_agents(workdir, cfg, which=mode)
    batches = load_batches(workdir, cfg.memory_steps)
    gc.collect()
    setup = _high_water_mb()
    for batch in batches:
        with _precision(dtype):
            if mode == 'distill':
                distill_step(distill, batch)
            else:
                baseline_step(plain, teacher_model, batch)
    return {'setup_mb': setup, 'peak_mb': _high_water_mb()}


def add_benchmark_args(
    parser: argparse.ArgumentParser,
    *,
    warmup: int = 3,
    heads: int = 8,
    teacher_width: int = 512,
    student_width: int = 256,
) -> None:
    """The batches, models and timing every benchmark builds (what :func:`prepare`,
    :func:`load_batches` and the agents read): steps, sizes, threads, clock."""
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=warmup)
    parser.add_argument('--batchsize', type=int, default=32)
    parser.add_argument('--text-truncate', type=int, default=128)
    parser.add_argument('--label-truncate', type=int, default=32)
    parser.add_argument('--vocab', type=int, default=8000)
    parser.add_argument('--heads', type=int, default=heads)
    parser.add_argument('--teacher-width', type=int, default=teacher_width)
    parser.add_argument('--student-width', type=int, default=student_width)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--clock',
        choices=list(CLOCKS),
        default='wall',
        help='wall: elapsed time; cpu: process CPU time (with --threads 1, robust '
        'to other processes sharing the machine)',
    )


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (also those of the memory runs it starts)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_benchmark_args(parser)
    parser.add_argument('--memory-steps', type=int, default=8)
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--memory-mode', choices=['distill', 'baseline'], default=None)
    parser.add_argument('--memory-dtype', choices=MEMORY_DTYPES, default='float32')
    parser.add_argument('--workdir', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--skip-memory', action='store_true')
    return parser


def main(argv: list[str] | None = None) -> int:
    cfg = build_parser().parse_args(argv)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    if cfg.memory_mode:
        print(
            json.dumps(peak_memory(cfg.workdir, cfg, cfg.memory_mode, cfg.memory_dtype))
        )
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        prepare(workdir, cfg)
        return run(workdir, cfg, argv if argv is not None else sys.argv[1:])


def run(workdir: str, cfg: argparse.Namespace, argv: list[str]) -> int:

    print(
        f'teacher {cfg.layers}+{cfg.layers} layers width {cfg.teacher_width}; student '
        f'width {cfg.student_width}; batch {cfg.batchsize}; {cfg.steps} timed steps '
        f'after {cfg.warmup} warm-up; {cfg.threads} threads; {cfg.clock} clock',
        flush=True,
    )
    r = time_steps(workdir, cfg)
    print(
        f"batches: {r['context_tokens']:.0f} context and {r['label_tokens']:.0f} "
        f"label tokens per example; student compute = "
        f"{100 * r['student_compute_share']:.0f}% of the teacher's (forward FLOPs)"
    )
    print(
        f"(a) distillation step, every term on: {1000 * r['a_median']:.1f} ms (median)"
    )
    print(
        f"(b) student step + teacher forward:   {1000 * r['b_median']:.1f} ms (median)"
    )
    print(
        f"ratio a/b: {r['ratio_of_sums']:.3f} (sum of times), "
        f"{r['pairwise_ratio_median']:.3f} (median of per-step ratios); target <= 1.15"
    )
    print(
        f"teacher parameters with gradients: {r['teacher_grads']}; "
        f"in the student's optimizer: {r['teacher_params_in_optimizer']}"
    )
    if cfg.skip_memory:
        return 0
    rows = {}
    for dtype in MEMORY_DTYPES:
        for mode in ('baseline', 'distill'):
            out = subprocess.run(
                [sys.executable, '-m', 'anti_scaling.scripts.benchmark_step', *argv]
                + ['--memory-mode', mode, '--memory-dtype', dtype]
                + ['--workdir', workdir],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[mode, dtype] = json.loads(out.stdout.strip().splitlines()[-1])
    print_memory(rows, cfg.memory_steps)
    return 0


def print_memory(rows: dict, steps: int) -> None:
    """Peak memory of (a) and (b) in float32 and bf16, and the ratios."""
    print(f'peak memory (fresh process each, {steps} steps; after set-up in brackets):')
    for mode, label in (('baseline', '(b)'), ('distill', '(a)')):
        f32, b16 = rows[mode, 'float32'], rows[mode, 'bf16']
        print(
            f"  {label} float32 {f32['peak_mb']:.0f} MB ({f32['setup_mb']:.0f}), "
            f"bf16 autocast {b16['peak_mb']:.0f} MB ({b16['setup_mb']:.0f}), "
            f"ratio bf16/float32 {b16['peak_mb'] / f32['peak_mb']:.3f}"
        )
    for dtype in MEMORY_DTYPES:
        a, b = rows['distill', dtype]['peak_mb'], rows['baseline', dtype]['peak_mb']
        print(f'  ratio a/b in {dtype}: {a / b:.3f}')


if __name__ == '__main__':
    sys.exit(main())
