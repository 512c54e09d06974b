"""``--fused-prediction`` in a real training step: the same loss, the same
gradient on every student parameter and the same metrics (ParlAI's loss, ppl,
token_acc, token_em; pred_loss, teacher_acc, distill_loss) as the unfused step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import make_agent, reverse_examples, train

from anti_scaling.agents.output_layer import output_layer
from anti_scaling.errors import DistillationError

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE_BART = 'anti_scaling.distillation:DistillBartAgent'
METRICS = ('loss', 'ppl', 'token_acc', 'token_em', 'distill_loss')


def _agent(model, teacher, tmp_path, datapath, *extra):
    args = ['-m', model, '--teacher-model', teacher, '-mf', str(tmp_path / 'model')]
    if model == NARROW:
        args += ['--embedding-size', '16', '--ffn-size', '32', '--n-layers', '2']
    return make_agent([*args, '--prediction-chunk-size', '7', *extra], datapath)


def _batch(agent, n=6):
    from parlai.core.message import Message

    observations = []
    for message in reverse_examples(n, length=7, seed=3):
        agent.reset()
        observations.append(agent.observe(Message({**message, 'episode_done': True})))
    batch = agent.batchify(observations)
    assert (batch.label_vec == agent.NULL_IDX).any()  # padded labels
    return batch


def _step(agent, batch, fused: bool):
    agent.opt['fused_prediction'] = fused
    agent.model.train()
    agent.zero_grad()
    agent._local_metrics.clear()
    loss = agent.compute_loss(batch)
    loss.backward()
    grads = {
        n: p.grad.clone()
        for n, p in agent.model.named_parameters()
        if p.grad is not None
    }
    metrics = {
        k: sum(v[1:], v[0]).value() for k, v in agent._local_metrics.items() if v
    }
    return loss.detach(), grads, metrics


def _same_step(agent, batch, rel=1e-6):
    want_loss, want_grads, want_metrics = _step(agent, batch, fused=False)
    got_loss, got_grads, got_metrics = _step(agent, batch, fused=True)
    assert float((got_loss - want_loss).abs() / want_loss.abs()) <= rel
    assert set(got_grads) == set(want_grads)
    # Each gradient within rel of its largest entry; the few that are tiny (key
    # biases, whose gradient is 0 but for rounding where only the softmax sees
    # them) within rel of a hundredth of the model's largest gradient.
    largest = max(float(g.abs().max()) for g in want_grads.values())
    for name, want in want_grads.items():
        scale = want.abs().max().clamp(min=1e-2 * largest)
        assert float((got_grads[name] - want).abs().max() / scale) <= rel, name
    assert set(got_metrics) == set(want_metrics)
    for name, want in want_metrics.items():
        assert got_metrics[name] == pytest.approx(want, rel=rel, abs=1e-7), name
    for name in METRICS:
        assert name in got_metrics
    return got_metrics


@pytest.mark.parametrize(
    ('kind', 'extra'),
    [
        ('kl', ['--distill-temperature-max', '4', '--temperature-anneal-steps', '10']),
        (
            'taid',
            [
                '--taid-steps',
                '10',
                '--taid-adaptive',
                'false',
                '--distill-temperature',
                '2',
            ],
        ),
        ('jsd', ['--jsd-beta', '0.3', '--handover-steps', '10']),
        ('skew_reverse_kl', ['--skew-alpha', '0.2']),
        ('logit_mse', []),
    ],
)
def test_fused_step_equals_unfused(kind, extra, teacher_file, datapath, tmp_path):
    agent = _agent(
        NARROW,
        teacher_file,
        tmp_path,
        datapath,
        '--pred-loss-type',
        kind,
        '--pred-loss-coeff',
        '2',
        '--hidden-loss-coeff',
        '1',
        '--self-attn-loss-coeff',
        '1',
        *extra,
    )
    agent._number_training_updates = 3  # inside every schedule
    metrics = _same_step(agent, _batch(agent))
    assert {'pred_loss', 'teacher_acc', 'dec_hid_loss'} <= set(metrics)


def test_several_teachers(teacher_file, datapath, tmp_path):
    agent = _agent(
        NARROW,
        f'{teacher_file},{teacher_file}',
        tmp_path,
        datapath,
        '--teacher-weights',
        '3,1',
        '--pred-loss-coeff',
        '1',
        '--distill-temperature',
        '2',
    )
    _same_step(agent, _batch(agent))


def test_teacher_acc_without_the_prediction_term(teacher_file, datapath, tmp_path):
    agent = _agent(NARROW, teacher_file, tmp_path, datapath, '--hidden-loss-coeff', '1')
    assert 'teacher_acc' in _same_step(agent, _batch(agent))


def test_top_k_cache(teacher_file, datapath, tmp_path):
    """The cache's forward KL, against a stand-in cache built from the teacher."""
    agent = _agent(NARROW, teacher_file, tmp_path, datapath, '--pred-loss-coeff', '1')
    batch = _batch(agent)
    with torch.no_grad():
        logits = agent.teacher.model(batch.text_vec, ys=batch.label_vec)[0]
    logprobs, ids = F.log_softmax(logits.float(), -1).topk(4, dim=-1)
    found = torch.tensor([True, True, False, True, True, True])
    entry = SimpleNamespace(
        ids=ids, logprobs=logprobs, rest=1 - logprobs.exp().sum(-1), found=found
    )
    agent.distillation.cache = SimpleNamespace(lookup=lambda *a, **k: entry)
    metrics = _same_step(agent, batch)
    assert metrics['cache_hits'] == pytest.approx(5 / 6)


def test_bart_student(bart_teacher_file, datapath, tmp_path):
    """BART seeds its decoder with two tokens and masks no logit."""
    agent = _agent(
        WIDE_BART,
        bart_teacher_file,
        tmp_path,
        datapath,
        '--n-decoder-layers',
        '1',
        '--pred-loss-coeff',
        '1',
        *('--dropout', '0', '--attention-dropout', '0', '--relu-dropout', '0'),
    )
    assert output_layer(agent.model).masked_column is None
    _same_step(agent, _batch(agent))


def test_unknown_output_layer_is_refused():
    from parlai.agents.transformer.modules import TransformerGeneratorModel

    class OwnOutput(TransformerGeneratorModel):
        def output(self, tensor):
            return tensor

    model = OwnOutput.__new__(OwnOutput)
    with pytest.raises(DistillationError, match='cannot be fused') as info:
        output_layer(model)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('size', [0, -3])
def test_bad_chunk_size_is_one_line_before_any_work(
    size, teacher_file, datapath, tmp_path
):
    student = tmp_path / 'student'
    with pytest.raises(DistillationError, match='--prediction-chunk-size') as info:
        train(
            datapath,
            model=NARROW,
            teacher_model=teacher_file,
            model_file=str(student / 'model'),
            fused_prediction=True,
            prediction_chunk_size=size,
            max_train_steps=2,
        )
    assert '\n' not in str(info.value)
    assert not student.exists()


def test_parlai_fp16_path_fused_within_half_precision_bounds(datapath, tmp_path):
    """ParlAI's ``--fp16`` (half-precision student and teacher, its fp16 optimizer
    and criterion), run on the CPU: the fused step's loss within 1e-3 and its
    gradients within 2e-2 (of each one's largest entry) of the unfused step's,
    the differences being float16 rounding; then fp16 optimizer steps stay finite."""
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser
    from test_half_precision_agents import (
        CpuFP16NarrowAgent,
        _args,
        halved_teachers,
    )

    teacher = str(tmp_path / 'teacher' / 'model')
    train(
        datapath,
        model='transformer/generator',
        model_file=teacher,
        n_layers=2,
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        num_epochs=0.5,
        batchsize=16,
        force_fp16_tokens=True,
    )
    parser = ParlaiParser(True, True)
    CpuFP16NarrowAgent.add_cmdline_args(parser, partial_opt=None)
    opt = parser.parse_args(
        ['-m', 'test_half_precision_agents:CpuFP16NarrowAgent']
        + _args(teacher, tmp_path / 'student')
        + ['--fp16', 'true', '--fp16-impl', 'mem_efficient', '--datapath', datapath]
        + ['--prediction-chunk-size', '5', '--distill-temperature', '2']
    )
    torch.manual_seed(0)
    agent = create_agent(opt)
    assert next(agent.model.parameters()).dtype == torch.float16
    batch = _batch(agent)
    with halved_teachers(agent):
        want_loss, want_grads, want_metrics = _step(agent, batch, fused=False)
        got_loss, got_grads, got_metrics = _step(agent, batch, fused=True)
        assert float((got_loss - want_loss).abs() / want_loss.abs()) <= 1e-3
        for name, want in want_grads.items():
            got = got_grads[name]
            assert got.dtype == torch.float16
            scale = want.float().abs().max().clamp(min=1e-3)
            assert float((got.float() - want.float()).abs().max() / scale) <= 2e-2
        for name in METRICS:
            assert got_metrics[name] == pytest.approx(want_metrics[name], rel=1e-3)
        agent.opt['fused_prediction'] = True
        for _ in range(3):
            agent._local_metrics.clear()
            agent.train_step(batch)
        for p in agent.model.parameters():
            assert p.dtype == torch.float16 and torch.isfinite(p).all()
