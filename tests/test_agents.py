"""Real distillation runs of the four agents on built-in data, and their invariants."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import (
    make_agent,
    read_opt,
    reverse_examples,
    run_batch,
    train,
    train_reports,
)

from anti_scaling.agents.teacher import clear_teacher_cache

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
BART_WIDE = 'anti_scaling.distillation:DistillBartAgent'
BART_NARROW = 'anti_scaling.distillation:DistillNarrowBartAgent'

ALL_COEFFS = {
    'task_loss_coeff': 1.0,
    'encoder_loss_coeff': 1.0,
    'hidden_loss_coeff': 2.0,
    'pred_loss_coeff': 3.0,
    'embedding_loss_coeff': 0.5,
    'self_attn_loss_coeff': 0.1,
    'enc_dec_attn_loss_coeff': 0.2,
}
ALL_METRICS = {
    'loss',
    'ppl',
    'token_acc',
    'enc_loss',
    'enc_hid_loss',
    'dec_hid_loss',
    'pred_loss',
    'enc_emb_loss',
    'dec_emb_loss',
    'enc_self_attn_loss',
    'dec_self_attn_loss',
    'enc_dec_attn_loss',
    'distill_loss',
    'teacher_acc',
}


def _assert_distilled(model_file, valid, metrics=ALL_METRICS):
    reports = train_reports(model_file)
    assert len(reports) >= 3
    for name in metrics:
        assert name in reports[0], f'{name} missing from the train report'
        assert name in valid, f'{name} missing from the valid report'
    first, last = reports[0]['distill_loss'], reports[-1]['distill_loss']
    assert last < 0.9 * first, f'distill_loss did not fall: {first} -> {last}'


def test_narrow_transformer_design_command(teacher_file, datapath, tmp_path):
    """The README's workflow command, as written (--init-opt, --dict-file), every term on."""
    model_file = str(tmp_path / 'student' / 'model')
    valid, _ = train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        init_opt=teacher_file + '.opt',
        dict_file=teacher_file + '.dict',
        n_encoder_layers=2,
        n_decoder_layers=4,
        embedding_size=16,
        ffn_size=32,
        model_file=model_file,
        max_train_steps=40,
        batchsize=16,
        **ALL_COEFFS,
    )
    _assert_distilled(model_file, valid)
    opt = read_opt(model_file)
    assert opt['encoder_layer_map'] == '1,3' and opt['decoder_layer_map'] == '0,1,2,3'
    states = torch.load(model_file, weights_only=False)
    projections = sorted(
        k for k in states['model'] if k.startswith('distill_projections.')
    )
    # embeddings per stack, encoder output, each mapped hidden layer: weight + bias
    assert len(projections) == 2 * (2 + 1 + 2 + 4)
    weight = states['model']['distill_projections.enc_hid_0.weight']
    assert weight.shape == (32, 16)  # student width 16 -> teacher width 32


def test_wide_transformer_teacher_model_alone(teacher_file, datapath, tmp_path):
    """`--teacher-model` alone: the student inherits dictionary and architecture."""
    model_file = str(tmp_path / 'wide' / 'model')
    valid, _ = train(
        datapath,
        model=WIDE,
        teacher_model=teacher_file,
        n_encoder_layers=2,
        n_decoder_layers=1,
        model_file=model_file,
        max_train_steps=40,
        batchsize=16,
        **ALL_COEFFS,
    )
    metrics = ALL_METRICS
    _assert_distilled(model_file, valid, metrics)
    opt, teacher_opt = read_opt(model_file), read_opt(teacher_file)
    for key in ('embedding_size', 'ffn_size', 'n_heads', 'variant', 'activation'):
        assert opt[key] == teacher_opt[key]
    assert opt['dict_file'] == teacher_file + '.dict'
    with open(model_file + '.dict') as a, open(teacher_file + '.dict') as b:
        assert a.read() == b.read()
    assert (opt['encoder_layer_map'], opt['decoder_layer_map']) == ('1,3', '3')
    assert (opt['encoder_init_layer_map'], opt['decoder_init_layer_map']) == (
        '1,3',
        '3',
    )
    states = torch.load(model_file, weights_only=False)
    assert not any(k.startswith('distill_projections.') for k in states['model'])


@pytest.mark.parametrize('agent', [BART_WIDE, BART_NARROW])
def test_bart_agents_distil_without_download(
    agent, bart_teacher_file, datapath, tmp_path
):
    model_file = str(tmp_path / 'bart_student' / 'model')
    shape = {'n_encoder_layers': 1, 'n_decoder_layers': 2}
    if agent == BART_NARROW:
        shape.update(embedding_size=16, ffn_size=32)
    valid, _ = train(
        datapath,
        model=agent,
        teacher_model=bart_teacher_file,
        model_file=model_file,
        max_train_steps=40,
        batchsize=16,
        **shape,
        **ALL_COEFFS,
    )
    metrics = ALL_METRICS
    _assert_distilled(model_file, valid, metrics)
    assert not os.path.exists(os.path.join(datapath, 'models', 'bart'))
    assert not os.path.exists(os.path.join(datapath, 'gpt2'))


def test_distill_loss_is_the_weighted_sum_of_its_terms(
    teacher_file, datapath, tmp_path
):
    coeffs = dict(ALL_COEFFS, distill_temperature=2.0)
    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'm' / 'model'),
            '--embedding-size',
            '16',
            '--ffn-size',
            '32',
            '--n-layers',
            '2',
            *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in coeffs.items()), []),
        ],
        datapath,
    )
    agent.model.eval()
    batch = agent.batchify([_observe(agent, m) for m in reverse_examples(6)])
    agent._local_metrics.clear()
    with torch.no_grad():
        total = agent.compute_loss(batch)

    def metric(name):
        items = agent._local_metrics[name]
        return sum(items[1:], items[0]).value()

    expected = coeffs['task_loss_coeff'] * metric('loss')
    for name, coeff_key in [
        ('enc_loss', 'encoder_loss_coeff'),
        ('enc_hid_loss', 'hidden_loss_coeff'),
        ('dec_hid_loss', 'hidden_loss_coeff'),
        ('pred_loss', 'pred_loss_coeff'),
        ('enc_emb_loss', 'embedding_loss_coeff'),
        ('dec_emb_loss', 'embedding_loss_coeff'),
        ('enc_self_attn_loss', 'self_attn_loss_coeff'),
        ('dec_self_attn_loss', 'self_attn_loss_coeff'),
        ('enc_dec_attn_loss', 'enc_dec_attn_loss_coeff'),
    ]:
        assert metric(name) > 0
        expected += coeffs[coeff_key] * metric(name)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert metric('distill_loss') == pytest.approx(total.item(), rel=1e-5)


def _observe(agent, message):
    from parlai.core.message import Message

    agent.reset()
    return agent.observe(Message({**message, 'episode_done': True}))


def test_zero_coefficients_capture_and_compute_nothing(
    teacher_file, datapath, tmp_path
):
    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'm' / 'model'),
            '--embedding-size',
            '16',
            '--n-layers',
            '1',
            '--pred-loss-coeff',
            '1',
        ],
        datapath,
    )
    plan = agent.distill_plan
    assert [t.metric for t in plan.terms] == ['pred_loss']
    assert plan.module_terms == () and plan.projections == {}
    assert plan.student_points == [] and plan.teacher_points == []
    assert not hasattr(agent.model, 'distill_projections')
    metrics = run_batch(agent, reverse_examples(4))[0]['metrics']
    assert set(metrics) >= {'pred_loss', 'teacher_acc', 'distill_loss'}
    assert 'enc_hid_loss' not in metrics

    baseline = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'b' / 'model'),
            '--embedding-size',
            '16',
            '--n-layers',
            '1',
        ],
        datapath,
    )
    assert not baseline.distill_plan.uses_teacher
    calls = []
    handle = baseline.teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        metrics = run_batch(baseline, reverse_examples(4))[0]['metrics']
    finally:
        handle.remove()
    assert calls == []  # no teacher forward pass when no term needs it
    assert 'loss' in metrics and 'distill_loss' not in metrics


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


def test_no_hook_outlives_the_forward_pass_and_generation_stores_nothing(
    teacher_file, datapath, tmp_path
):
    args = ['-m', NARROW, '--teacher-model', teacher_file]
    args += ['-mf', str(tmp_path / 'm' / 'model'), '--embedding-size', '16']
    args += ['--n-layers', '2', '--skip-generation', 'false', '--inference', 'beam']
    args += ['--beam-size', '2']
    for key in ALL_COEFFS:
        args += [f"--{key.replace('_', '-')}", '1']
    agent = make_agent(args, datapath)
    teacher = agent.teacher.model
    assert _hook_count(agent.model) == 0 and _hook_count(teacher) == 0
    run_batch(agent, reverse_examples(4))  # a training step
    assert _hook_count(agent.model) == 0 and _hook_count(teacher) == 0

    captured = []
    original = agent.compute_loss

    def spy(batch, return_output=False):
        captured.append(True)
        return original(batch, return_output)

    agent.compute_loss = spy
    evals = [
        {'text': m['text'], 'eval_labels': m['labels']} for m in reverse_examples(3)
    ]
    replies = run_batch(agent, evals)  # eval: forced decoding + beam search
    assert all(r.get('text') for r in replies)
    assert captured == [True]
    assert _hook_count(agent.model) == 0 and _hook_count(teacher) == 0


def test_teacher_frozen_shared_and_outside_checkpoint(teacher_file, datapath, tmp_path):
    from parlai.core.agents import create_agent_from_shared

    clear_teacher_cache()
    model_file = str(tmp_path / 'm' / 'model')
    args = ['-m', WIDE, '--teacher-model', teacher_file, '-mf', model_file]
    args += ['--n-layers', '1', '--pred-loss-coeff', '1', '--hidden-loss-coeff', '1']
    args += ['--optimizer', 'adam', '-lr', '1e-3']
    agent = make_agent(args, datapath)
    teacher = agent.teacher.model
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    copy = create_agent_from_shared(agent.share())
    assert copy.teacher is agent.teacher
    again = make_agent(args, datapath)  # a second agent in the same process
    assert again.teacher is agent.teacher

    optimised = {
        id(p) for group in agent.optimizer.param_groups for p in group['params']
    }
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert optimised == {id(p) for p in agent.model.parameters() if p.requires_grad}
    run_batch(agent, reverse_examples(4))
    assert all(p.grad is None for p in teacher.parameters())
    agent.save(model_file)
    states = torch.load(model_file, weights_only=False)
    assert set(states['model']) == set(agent.model.state_dict())
    assert len(states['optimizer']['state']) == len(optimised)


def test_resume_continues_with_same_teacher_and_maps(teacher_file, datapath, tmp_path):
    model_file = str(tmp_path / 'resume' / 'model')
    common = dict(
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_encoder_layers=2,
        n_decoder_layers=2,
        embedding_size=16,
        ffn_size=32,
        hidden_loss_coeff=1.0,
        pred_loss_coeff=1.0,
        encoder_layer_map='0,3',
        decoder_layer_map='1,2',
        batchsize=16,
        save_every_n_secs=1e-9,  # checkpoint at every step, as a long run would
        lr_scheduler='reduceonplateau',  # ParlAI restores step counts with a scheduler
    )
    train(datapath, max_train_steps=10, **common)
    checkpoint = model_file + '.checkpoint'
    assert os.path.isfile(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)
    # simulate an interruption: only the checkpoint survives
    for suffix in ('', '.opt', '.trainstats'):
        os.remove(model_file + suffix)
    resumed = dict(common)
    del resumed['encoder_layer_map'], resumed['decoder_layer_map']
    train(datapath, max_train_steps=20, **resumed)
    opt = read_opt(model_file)
    assert opt['teacher_model'] == teacher_file
    assert (opt['encoder_layer_map'], opt['decoder_layer_map']) == ('0,3', '1,2')
    final = torch.load(model_file, weights_only=False)
    assert 5 <= saved['number_training_updates'] <= 10
    # the resumed run continued from the checkpoint's step count, not from zero
    assert final['number_training_updates'] == 20
    reports = train_reports(model_file)
    assert reports[-1]['total_train_updates'] > saved['number_training_updates']
    assert 'enc_hid_loss' in reports[-1]


def test_default_lr_scheduler_works_on_pinned_torch(teacher_file, datapath, tmp_path):
    """ParlAI's default reduceonplateau crashes on torch >= 2.7; ours does not."""
    model_file = str(tmp_path / 'sched' / 'model')
    valid, _ = train(
        datapath,
        model=WIDE,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=1,
        pred_loss_coeff=1.0,
        lr_scheduler='reduceonplateau',
        lr_scheduler_patience=0,
        validation_every_n_steps=5,
        validation_metric='loss',
        max_train_steps=15,
        batchsize=16,
    )
    assert valid['exs'] > 0
    states = torch.load(model_file, weights_only=False)
    assert states['lr_scheduler_type'] == 'reduceonplateau'
