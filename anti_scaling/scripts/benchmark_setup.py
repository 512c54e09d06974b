"""What every step benchmark builds: batches of real conversations, a random
teacher, the students of each variant, their steps and how they are timed.

Used by :mod:`.benchmark_step` and :mod:`.benchmark_methods`. The batches are
the first examples of ``anti_scaling.tasks.chitchat``'s train split; teacher
and students have random weights (speed and memory do not depend on them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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


def load_batches(workdir: str, count: int, device: str = 'cpu') -> list:
    from parlai.core.torch_agent import Batch

    pairs = torch.load(os.path.join(workdir, 'batches.pt'))[:count]
    return [
        Batch(
            text_vec=text.to(device),
            label_vec=label.to(device),
            batchsize=text.size(0),
            valid_indices=list(range(text.size(0))),
        )
        for text, label in pairs
    ]


def _device_args(cfg: argparse.Namespace, dtype: str) -> list[str]:
    """ParlAI options of the device and precision: ``--fp16`` on CUDA for float16
    (its ``--fp16-impl`` optimizer wrapper), ``--no-cuda`` on the CPU."""
    if cfg.device == 'cpu':
        return ['--no-cuda']
    if dtype == 'fp16':
        return ['--fp16', 'true', '--fp16-impl', cfg.fp16_impl]
    return []


#: The variants a run times, by name: the distillation flags they add.
VARIANTS = {
    'all': {**ALL_TERMS, 'fused_prediction': 'true'},
    'pred': {
        'task_loss_coeff': 1.0,
        'pred_loss_coeff': 1.0,
        'fused_prediction': 'true',
    },
    'all_unfused': ALL_TERMS,
}
#: ``only_<coefficient>``: the task and that one term (the per-term table).
SINGLE_TERMS = tuple(f'only_{dest}' for dest in ALL_TERMS if dest != 'task_loss_coeff')


def variant_flags(name: str) -> dict | None:
    """The flags of variant ``name`` (:data:`VARIANTS`, :data:`SINGLE_TERMS`)."""
    if name in SINGLE_TERMS:
        dest = name.removeprefix('only_')
        return {'task_loss_coeff': 1.0, dest: 1.0, 'fused_prediction': 'true'}
    return VARIANTS.get(name)


def _common(workdir: str, cfg: argparse.Namespace, dtype: str) -> list[str]:
    common = ['-dp', os.path.join(workdir, 'data'), '--loglevel', 'error']
    common += ['--optimizer', 'adam', '-lr', '1e-4', '--lr-scheduler', 'none']
    return common + _device_args(cfg, dtype)


def _student_shape(cfg: argparse.Namespace) -> dict:
    return {
        'embedding_size': cfg.student_width,
        'ffn_size': 4 * cfg.student_width,
        'n_heads': cfg.heads,
    }


def build_distill(workdir: str, cfg, dtype: str, name: str, extra=()):  # noqa: ANN001
    """A distillation student of variant ``name`` (same initial weights for all)."""
    from parlai.core.agents import create_agent

    torch.manual_seed(0)
    options = {**_student_shape(cfg), **(variant_flags(name) or {})}
    return create_agent(
        _parse(
            [*_common(workdir, cfg, dtype), '-m', NARROW]
            + ['--prediction-chunk-size', str(cfg.chunk_size)]
            + ['--teacher-model', os.path.join(workdir, 'teacher')]
            + ['-mf', os.path.join(workdir, name, 'model')]
            + _flag_args(options)
            + list(extra)
        )
    )


def build_plain(workdir: str, cfg, dtype: str, like):  # noqa: ANN001
    """The plain student, with the weights of the distillation student ``like``."""
    from parlai.core.agents import create_agent

    plain = create_agent(
        _parse(
            [*_common(workdir, cfg, dtype), '-m', 'transformer/generator']
            + ['-mf', os.path.join(workdir, 'plain', 'model')]
            + ['--dict-file', os.path.join(workdir, 'dict')]
            + _flag_args(
                {**teacher_shape(cfg), **_student_shape(cfg), **text_options(cfg)}
            )
        )
    )
    plain.model.load_state_dict(
        {
            k: v
            for k, v in like.model.state_dict().items()
            if not k.startswith('distill_projections.')
        }
    )
    return plain


def build_steps(
    workdir: str, cfg, dtype: str, names
) -> tuple[dict, dict]:  # noqa: ANN001
    """``({name: step(batch)}, {'teacher': model, name: agent})`` for ``names``
    among ``floor``, ``plain`` (the student alone), ``cached`` (from
    ``cfg.cache``) and :func:`variant_flags`'s."""
    agents = {}
    for name in names:
        if variant_flags(name) is not None:
            agents[name] = build_distill(workdir, cfg, dtype, name)
        elif name == 'cached':
            agents[name] = build_distill(
                workdir,
                cfg,
                dtype,
                name,
                ['--teacher-cache', cfg.cache, '-t', TASK]
                + ['--chitchat-max-conversations', str(CACHED_CONVERSATIONS)]
                + _flag_args({'pred_loss_coeff': 1.0, 'fused_prediction': 'true'}),
            )
    like = next(iter(agents.values()), None) or build_distill(
        workdir, cfg, dtype, 'init'
    )
    teacher = like.teacher.model
    if like.teacher.model is None:  # a cached run builds no teacher
        teacher = build_distill(workdir, cfg, dtype, 'init').teacher.model
    steps = {}
    for name in names:
        if name in ('floor', 'plain'):
            agents[name] = build_plain(workdir, cfg, dtype, like)
            model = teacher if name == 'floor' else None
            steps[name] = _plain_step(agents[name], model)
        else:
            steps[name] = _distill_step(agents[name])
    return steps, {'teacher': teacher, **agents}


def _distill_step(agent):  # noqa: ANN001, ANN202
    def step(batch) -> None:  # noqa: ANN001
        agent.train_step(batch)
        agent._local_metrics.clear()  # batch_act would hand these to the world

    return step


def _plain_step(plain, teacher_model):  # noqa: ANN001, ANN202
    def step(batch) -> None:  # noqa: ANN001
        plain.train_step(batch)
        plain._local_metrics.clear()
        if teacher_model is not None:
            with torch.no_grad():
                teacher_model(batch.text_vec, ys=batch.label_vec)

    return step


class StepTimer:
    """Seconds of one call: CUDA events after a synchronisation on CUDA, else the
    chosen clock (wall or this process's CPU time)."""

    def __init__(self, device: str, clock: str) -> None:
        self.device, self.clock = device, CLOCKS[clock]

    def __call__(self, step, batch) -> float:  # noqa: ANN001
        if self.device == 'cuda':
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            step(batch)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        begin = self.clock()
        step(batch)
        return self.clock() - begin


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


def time_variants(workdir: str, cfg, dtype: str, names) -> dict:  # noqa: ANN001
    """Median seconds of each variant, and each one's ratio over the first
    (sum of times and median of per-step ratios), interleaved on the same batches."""
    steps, agents = build_steps(workdir, cfg, dtype, names)
    count, warmup = cfg.steps, cfg.warmup
    if dtype == 'bf16' and cfg.device == 'cpu' and getattr(cfg, 'bf16_steps', None):
        # emulated on CPUs without bf16 units: several times a float32 step
        count, warmup = min(count, cfg.bf16_steps), min(warmup, 1)
    batches = load_batches(workdir, count + warmup, cfg.device)
    timer = StepTimer(cfg.device, cfg.clock)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, batch in enumerate(batches):
        for name in names:
            with _precision(dtype, cfg.device):
                elapsed = timer(steps[name], batch)
            if i >= warmup:
                times[name].append(elapsed)
    first = names[0]
    out = {'median_s': {n: statistics.median(t) for n, t in times.items()}}
    out['ratio'] = {n: sum(t) / sum(times[first]) for n, t in times.items()}
    out['pairwise'] = {
        n: statistics.median(x / y for x, y in zip(t, times[first], strict=True))
        for n, t in times.items()
    }
    teacher = agents['teacher']
    optimised = {
        id(p)
        for name, agent in agents.items()
        if name != 'teacher'
        for g in agent.optimizer.param_groups
        for p in g['params']
    }
    out['teacher_grads'] = sum(p.grad is not None for p in teacher.parameters())
    out['teacher_params_in_optimizer'] = len(
        {id(p) for p in teacher.parameters()} & optimised
    )
    if 'floor' in agents:
        batch = batches[0]
        out['student_compute_share'] = forward_flops(
            agents['floor'].model, batch
        ) / forward_flops(teacher, batch)
        out['context_tokens'] = float((batch.text_vec != 0).sum(1).float().mean())
        out['label_tokens'] = float((batch.label_vec != 0).sum(1).float().mean())
    return out


def build_cache(workdir: str, cfg: argparse.Namespace) -> tuple[str, float]:
    """Cache the teacher's top-k outputs on the benchmark's examples; ``(folder,
    kB per 1,000 label tokens)``."""
    from .cache_teacher_outputs import main as cache_main

    cache = f'{workdir}/cache'
    summary = cache_main(
        ['--teacher-model', f'{workdir}/teacher', '-t', TASK]
        + ['--chitchat-max-conversations', str(CACHED_CONVERSATIONS)]
        + ['--cache-dir', cache, '--top-k', str(cfg.top_k), '-dp', f'{workdir}/data']
        + ['-bs', str(cfg.batchsize), '--loglevel', 'error']
        + (['--no-cuda'] if getattr(cfg, 'device', 'cpu') == 'cpu' else [])
    )
    return cache, summary['bytes_per_1000_label_tokens'] / 1000


#: Precisions of a run, per device: bf16 is autocast around float32 weights; on
#: CUDA, fp16 is ParlAI's ``--fp16`` (half-precision weights, its optimizer wrappers).
DTYPES = {'cpu': ('float32', 'bf16'), 'cuda': ('fp16', 'bf16')}
#: The benchmark's batches are the first examples of the train split; the cache
#: covers the first conversations of it (the same order).
CACHED_CONVERSATIONS = 60


def _precision(dtype: str, device: str = 'cpu'):  # noqa: ANN202
    """The context a step runs in: bfloat16 autocast, or nothing."""
    if dtype == 'bf16':
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def add_benchmark_args(
    parser: argparse.ArgumentParser,
    *,
    warmup: int = 3,
    heads: int = 8,
    teacher_width: int = 512,
    student_width: int = 256,
    steps: int = 20,
    batchsize: int = 32,
) -> None:
    """The batches, models and timing every benchmark builds (what :func:`prepare`,
    :func:`load_batches` and the agents read): steps, sizes, threads, clock."""
    parser.add_argument('--steps', type=int, default=steps)
    parser.add_argument('--warmup', type=int, default=warmup)
    parser.add_argument('--batchsize', type=int, default=batchsize)
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
        'to other processes sharing the machine); CUDA runs use CUDA events',
    )
