"""Half precision through the agents, on the CPU twins of the GPU paths.

- A distillation step of half-precision (fp16) student and teacher models: the
  captured states stay fp16 until the loss, every term is finite and close to
  the float32 step.
- A bf16 autocast training step of a narrow student.
- ParlAI's ``--fp16 true`` path (``SafeFP16Optimizer`` / ``MemoryEfficientFP16Optimizer``,
  dynamic loss scaling, ``FP16SafeCrossEntropy``), which ParlAI switches on only
  with CUDA: here an agent that reports CUDA-free fp16 runs the very same code
  on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import pytest
import torch
from helpers import make_agent, reverse_examples, train
from parlai.core.message import Message

from anti_scaling.distillation import DistillNarrowTransformerAgent
from anti_scaling.export.strip import remove_projection_matrices
from anti_scaling.model_files import load_checkpoint

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
TERMS = [
    '--hidden-loss-coeff',
    '1',
    '--pred-loss-coeff',
    '1',
    '--embedding-loss-coeff',
    '1',
    '--self-attn-loss-coeff',
    '1',
    '--enc-dec-attn-loss-coeff',
    '1',
    '--encoder-loss-coeff',
    '1',
]


class CpuFP16NarrowAgent(DistillNarrowTransformerAgent):
    """The narrow agent with ParlAI's fp16 switched on without CUDA (tests only).

    ParlAI sets ``self.fp16 = use_cuda and opt['fp16']``; this agent keeps
    ``opt['fp16']`` alone, so the model is halved and the fp16 optimizer
    wrappers, loss scaling and criterion run on the CPU exactly as on a GPU.
    """

    @property
    def fp16(self) -> bool:
        return bool(self.opt.get('fp16'))

    @fp16.setter
    def fp16(self, value: bool) -> None:
        pass


@pytest.fixture(scope='module')
def padded_teacher(tmp_path_factory, datapath) -> str:
    """A teacher whose dictionary ParlAI padded for fp16 (as BlenderBot's is)."""
    model_file = str(tmp_path_factory.mktemp('padded_teacher') / 'model')
    train(
        datapath,
        model='transformer/generator',
        model_file=model_file,
        n_layers=2,
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        num_epochs=1,
        batchsize=16,
        force_fp16_tokens=True,
    )
    return model_file


def _args(teacher_file, tmp_path, *extra):
    return [
        '--teacher-model',
        teacher_file,
        '-mf',
        str(tmp_path / 'model'),
        '--embedding-size',
        '16',
        '--ffn-size',
        '32',
        '--n-layers',
        '2',
        '--optimizer',
        'adam',
        '-lr',
        '1e-3',
        '--lr-scheduler',
        'none',
        *TERMS,
        *extra,
    ]


def _batch(agent, n=6):
    observations = []
    for message in reverse_examples(n):
        agent.reset()
        observations.append(agent.observe(Message({**message, 'episode_done': True})))
    return agent.batchify(observations)


@contextmanager
def halved_teachers(agent):
    """The agent's teachers replaced by half-precision copies for the block (the
    loaded teachers are shared by the whole test session and must stay float32)."""
    ensemble = agent.distillation.teachers
    originals = list(ensemble.teachers)
    ensemble.teachers = [
        dataclasses.replace(t, model=copy.deepcopy(t.model).half()) for t in originals
    ]
    try:
        yield
    finally:
        ensemble.teachers = originals


def _metrics(agent):
    return {
        name: sum(items[1:], items[0]).value()
        for name, items in agent._local_metrics.items()
    }


def test_half_precision_models_give_finite_terms_close_to_float32(
    teacher_file, datapath, tmp_path
):
    agent = make_agent(['-m', NARROW, *_args(teacher_file, tmp_path)], datapath)
    agent.model.eval()
    batch = _batch(agent)
    agent._local_metrics.clear()
    with torch.no_grad():
        full = agent.compute_loss(batch)
    reference = _metrics(agent)
    agent.model.half()
    with halved_teachers(agent):
        captured = {}
        original = agent.distillation.teachers.targets

        def spy(*args, **kwargs):
            states, output = original(*args, **kwargs)
            captured.update(states)
            return states, output

        agent.distillation.teachers.targets = spy
        agent._local_metrics.clear()
        with torch.no_grad():
            half = agent.compute_loss(batch)
        values = _metrics(agent)
    # the teacher's targets stayed in its precision until the loss
    assert captured and all(
        t.dtype == torch.float16 for t in captured.values() if torch.is_tensor(t)
    )
    assert torch.isfinite(half) and half.item() == pytest.approx(full.item(), rel=5e-2)
    for name, value in reference.items():
        assert values[name] == pytest.approx(value, rel=5e-2, abs=1e-3), name


def test_bf16_autocast_training_step_of_a_narrow_student(
    teacher_file, datapath, tmp_path
):
    agent = make_agent(['-m', NARROW, *_args(teacher_file, tmp_path)], datapath)
    batch = _batch(agent)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    agent._local_metrics.clear()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        agent.train_step(batch)
    values = _metrics(agent)
    for name in ('enc_hid_loss', 'dec_self_attn_loss', 'pred_loss', 'distill_loss'):
        assert values[name] > 0 and torch.isfinite(torch.tensor(values[name]))
    changed = [
        k for k, v in agent.model.state_dict().items() if not torch.equal(v, before[k])
    ]
    assert any(k.startswith('distill_projections.') for k in changed)
    assert any(k.startswith('decoder.layers.') for k in changed)
    for p in agent.model.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_fp16_student_of_an_unpadded_teacher_is_refused(
    teacher_file, datapath, tmp_path
):
    from anti_scaling.errors import DistillationError

    with pytest.raises(DistillationError, match='pads the student dictionary'):
        make_agent(
            ['-m', NARROW, *_args(teacher_file, tmp_path), '--fp16', 'true'], datapath
        )


@pytest.mark.parametrize('impl', ['safe', 'mem_efficient'])
def test_parlai_fp16_training_path_on_the_cpu(impl, padded_teacher, datapath, tmp_path):
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser(True, True)
    CpuFP16NarrowAgent.add_cmdline_args(parser, partial_opt=None)
    opt = parser.parse_args(
        [
            '-m',
            'test_half_precision_agents:CpuFP16NarrowAgent',
            *_args(padded_teacher, tmp_path),
            '--fp16',
            'true',
            '--fp16-impl',
            impl,
            '--datapath',
            datapath,
        ]
    )
    torch.manual_seed(0)
    agent = create_agent(opt)
    assert agent.fp16 and next(agent.model.parameters()).dtype == torch.float16
    assert agent.model.distill_projections['enc_out'].weight.dtype == torch.float16
    with halved_teachers(agent):  # on a GPU the teacher follows the student
        before = {k: v.clone() for k, v in agent.model.state_dict().items()}
        # dynamic loss scaling skips the steps whose scaled gradients overflow
        # and halves the scale; a few steps always get through
        for _ in range(8):
            agent._local_metrics.clear()
            agent.train_step(_batch(agent))
            values = _metrics(agent)
            assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
        for p in agent.model.parameters():
            assert p.dtype == torch.float16 and torch.isfinite(p).all()
        changed = {
            k
            for k, v in agent.model.state_dict().items()
            if not torch.equal(v, before[k])
        }
        assert any(k.startswith('distill_projections.') for k in changed)
        assert agent.optimizer.loss_scale > 0
        agent.save()
    result = remove_projection_matrices(str(tmp_path / 'model'), backup=False)
    assert result.removed
    states = load_checkpoint(str(tmp_path / 'model'))
    assert not any(k.startswith('distill_projections.') for k in states['model'])
    # both fp16 optimizers keep one state per parameter (SafeFP16Optimizer's
    # float32 master copies are not flattened): the projections' entries go
    optimizer = states['optimizer']
    kept = sum(len(g['params']) for g in optimizer['param_groups'])
    trainable = sum(1 for p in agent.model.parameters() if p.requires_grad)
    assert kept == trainable - len(result.removed)
    assert len(optimizer['state']) == kept
