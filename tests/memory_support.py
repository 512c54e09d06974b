"""Measuring memory on the CPU, for tests/test_memory_estimate.py.

- :class:`SavedTensors`: every distinct storage autograd saves for the backward
  pass (``torch.autograd.graph.saved_tensors_hooks``), parameters left out;
- :func:`blender_like_teacher`: a random teacher file with BlenderBot 2.7B's
  options except its sizes (no training: memory does not depend on the weights);
- run as a script (``python tests/memory_support.py peak ...``) in a fresh process
  started with ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor is its own mapping,
  returned to the system when freed), it measures the peak resident memory of
  one distillation training step above what persists between steps (Linux:
  ``/proc/self/clear_refs`` resets the peak), or of the top-k cache term, and
  prints it with the estimate.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys

import torch

BLENDER_OPTIONS = [
    '--variant',
    'prelayernorm',
    '--activation',
    'gelu',
    '--dropout',
    '0.1',
    '--attention-dropout',
    '0',
    '--relu-dropout',
    '0',
    '--n-positions',
    '128',
]


class SavedTensors:
    """Distinct storages saved for backward inside the block (parameters excluded)."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.excluded = {
            p.untyped_storage().data_ptr() for m in modules for p in m.parameters()
        }
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def storage_bytes(tensors, exclude: set[int] = frozenset()) -> int:  # noqa: ANN001
    """Bytes of the distinct storages of ``tensors`` not in ``exclude``."""
    seen = {}
    for tensor in tensors:
        if torch.is_tensor(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in exclude:
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _parse(args: list[str]):
    from parlai.core.params import ParlaiParser

    return ParlaiParser(True, True).parse_args(args)


def blender_like_teacher(
    folder: str, vocab: int, width: int, heads: int, decoder_layers: int = 4
) -> str:
    """A random 2-encoder-layer teacher with BlenderBot's options; its model file."""
    from parlai.core.agents import create_agent
    from parlai.core.dict import DictionaryAgent
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser(False, False)
    DictionaryAgent.add_cmdline_args(parser)
    dict_file = os.path.join(folder, 'dict')
    dictionary = DictionaryAgent(parser.parse_args(['--dict-file', dict_file]))
    for i in range(vocab - len(dictionary)):
        dictionary.add_token(f'w{i}')
        dictionary.freq[f'w{i}'] = 1
    dictionary.save(dict_file)
    model_file = os.path.join(folder, 'teacher')
    teacher = create_agent(
        _parse(
            ['-m', 'transformer/generator', '-mf', model_file, '--dict-file', dict_file]
            + ['--n-encoder-layers', '2', '--n-decoder-layers', str(decoder_layers)]
            + ['--embedding-size', str(width), '--ffn-size', str(4 * width)]
            + ['--n-heads', str(heads), '-dp', folder, '--lr-scheduler', 'none']
            + BLENDER_OPTIONS
        )
    )
    teacher.save(model_file)
    return model_file


def student_agent(folder: str, teacher: str, recipe: str, *args: str):
    """A distillation agent of ``recipe`` (its sizes overridden by ``args``)."""
    from parlai.core.agents import create_agent

    agent = (
        'DistillNarrowTransformerAgent'
        if '400M' in recipe
        else 'DistillTransformerAgent'
    )
    return create_agent(
        _parse(
            ['-m', f'anti_scaling.distillation:{agent}', '--recipe', recipe]
            + ['--teacher-model', teacher, '-mf', os.path.join(folder, 'student')]
            + ['-dp', folder, '--optimizer', 'adam', '--lr-scheduler', 'none']
            + ['-lr', '1e-5', *args]
        )
    )


def full_batch(size: int, text: int, label: int, vocab: int, seed: int = 0):
    """A ParlAI batch of random tokens without padding (every token real)."""
    from parlai.core.torch_agent import Batch

    generator = torch.Generator().manual_seed(seed)
    text_vec = torch.randint(5, vocab, (size, text), generator=generator)
    label_vec = torch.randint(5, vocab, (size, label), generator=generator)
    return Batch(
        text_vec=text_vec,
        label_vec=label_vec,
        batchsize=size,
        valid_indices=list(range(size)),
    )


def _resident(key: str) -> int:
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{key} not in /proc/self/status')


def _reset_peak() -> None:
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')


def measure_peak(folder: str, recipe: str, size: int, length: int) -> dict:
    """Peak resident bytes of one training step above what persists between steps
    (weights, optimizer states; gradients released), and the estimate's phases."""
    from anti_scaling.report.memory import (
        Dropouts,
        ModelShape,
        StepBatch,
        logits_bytes,
        precision,
        step_activation_bytes,
    )
    from anti_scaling.report.memory_terms import term_memory

    torch.set_num_threads(1)
    teacher = blender_like_teacher(folder, 8000, 256, 8)
    args = ['--n-decoder-layers', '2']
    if '400M' in recipe:
        args += ['--embedding-size', '128', '--ffn-size', '512', '--n-heads', '8']
    agent = student_agent(folder, teacher, recipe, *args)
    vocab = len(agent.dict)
    batch = full_batch(size, length, length, vocab)
    agent.train_step(batch)  # the optimizer makes its states
    agent._local_metrics.clear()
    agent.zero_grad()
    _reset_peak()
    before = _resident('VmRSS:')
    agent.train_step(batch)
    peak = _resident('VmHWM:') - before
    student = ModelShape.from_opt(agent.opt, vocab)
    shape = StepBatch(size, length, length)
    p = precision('fp32', 'cpu')
    saved = sum(
        step_activation_bytes(student, shape, p, Dropouts.from_opt(agent.opt)).values()
    )
    terms = term_memory(
        agent.distill_plan,
        student,
        ModelShape.from_opt(agent.teacher.opt, vocab),
        shape,
        4,
        4,
    )
    logits = logits_bytes(student, shape, p)
    gradients = 4 * sum(p.numel() for p in agent.model.parameters() if p.requires_grad)
    return {
        'measured': peak,
        'forward': saved + terms.saved + terms.held + logits + terms.prediction_work,
        'backward': saved + terms.saved + gradients,
    }


def measure_topk_peak(size: int, length: int, vocab: int, top_k: int) -> dict:
    """Peak resident bytes of the top-k cache term's forward pass (student logits
    and cached targets already there), and the estimate: saved + working set."""
    from anti_scaling.losses import topk_prediction_kl
    from anti_scaling.report.memory import StepBatch
    from anti_scaling.report.memory_terms import topk_memory

    torch.manual_seed(0)
    logits = torch.randn(size, length, vocab, requires_grad=True)
    order = torch.argsort(torch.rand(size * length, vocab), dim=-1)
    ids = order[:, :top_k].reshape(size, length, top_k)
    del order
    logprobs = torch.log_softmax(torch.randn(size, length, top_k), -1) - 0.1
    rest = 1 - logprobs.exp().sum(-1)
    mask = torch.ones(size, length, dtype=torch.bool)
    _reset_peak()
    before = _resident('VmRSS:')
    value = topk_prediction_kl(logits, ids, logprobs, rest, mask)
    peak = _resident('VmHWM:') - before
    expected = topk_memory(StepBatch(size, 1, length), vocab, top_k)
    del value
    return {'measured': peak, 'estimate': expected.saved + expected.prediction_work}


if __name__ == '__main__':
    if sys.argv[1] == 'topk':
        figures = measure_topk_peak(*(int(x) for x in sys.argv[2:6]))
    else:
        command, folder, recipe, size, length = sys.argv[1:6]
        assert command == 'peak'
        figures = measure_peak(folder, recipe, int(size), int(length))
    print(json.dumps(figures))
