"""Shared encoders and on-policy distillation."""

from __future__ import annotations

import pytest
import torch
from helpers import make_agent, reverse_examples, run_batch, train, train_reports

from anti_scaling.agents.on_policy import replies_to_labels
from anti_scaling.errors import DistillationError

WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'


def _batch(agent, n=6):
    from parlai.core.message import Message

    observations = []
    for message in reverse_examples(n):
        agent.reset()
        observations.append(agent.observe(Message({**message, 'episode_done': True})))
    return agent.batchify(observations)


def _shared_agent(teacher_file, datapath, tmp_path, *extra):
    return make_agent(
        [
            '-m',
            WIDE,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 's' / 'model'),
            '--n-decoder-layers',
            '1',
            '--share-teacher-encoder',
            'true',
            '--freeze-encoder',
            'true',
            '--pred-loss-coeff',
            '1',
            '--hidden-loss-coeff',
            '1',
            '--encoder-loss-coeff',
            '1',
            '--optimizer',
            'adam',
            '-lr',
            '1e-2',
            *extra,
        ],
        datapath,
    )


def test_shared_encoder_gives_the_teacher_its_own_outputs(
    teacher_file, datapath, tmp_path
):
    agent = _shared_agent(teacher_file, datapath, tmp_path)
    # the encoder terms vanish: the student's encoder is the teacher's
    assert [t.metric for t in agent.distill_plan.terms] == ['dec_hid_loss', 'pred_loss']
    frozen = {id(p) for p in agent.model.encoder.parameters()}
    optimised = {id(p) for g in agent.optimizer.param_groups for p in g['params']}
    assert frozen and not frozen & optimised
    batch = _batch(agent)
    agent.model.train()
    agent.model.encoder.eval()
    states = agent._shared_encoder_states(batch)
    plan = agent.distill_plan
    _, (shared_logits, shared_tokens) = agent.distillation.teachers.targets(
        agent._model_input(batch),
        agent._encoder_input(batch),
        batch.label_vec,
        plan,
        plan.terms,
        1.0,
        states,
    )
    with torch.no_grad():
        own_logits, own_tokens, _ = agent.teacher.model(
            batch.text_vec, ys=batch.label_vec
        )
    assert torch.equal(shared_logits, own_logits)
    assert torch.equal(shared_tokens, own_tokens)

    encoder_before = {k: v.clone() for k, v in agent.model.encoder.state_dict().items()}
    decoder_before = agent.model.decoder.layers[0].ffn.lin1.weight.clone()
    calls = []
    handle = agent.teacher.model.encoder.register_forward_hook(
        lambda *a: calls.append(1)
    )
    try:
        for _ in range(3):
            metrics = run_batch(agent, reverse_examples(8))[0]['metrics']
    finally:
        handle.remove()
    assert calls == []  # the teacher never re-encoded
    assert 'dec_hid_loss' in metrics and 'pred_loss' in metrics
    for key, value in agent.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
        assert torch.equal(value, agent.teacher.model.encoder.state_dict()[key])
    assert not torch.equal(
        agent.model.decoder.layers[0].ffn.lin1.weight, decoder_before
    )


def test_shared_encoder_needs_the_whole_teacher_encoder(
    teacher_file, datapath, tmp_path
):
    with pytest.raises(
        DistillationError, match='must keep all 4 teacher encoder layers'
    ):
        _shared_agent(teacher_file, datapath, tmp_path, '--n-encoder-layers', '2')
    assert not (tmp_path / 's').exists()


def test_replies_to_labels():
    end, null = 2, 0
    replies = [
        torch.tensor([5, 6, end, 7]),  # cut after the end token
        torch.tensor([5, 6, 7]),  # hit the length limit: end appended
        torch.tensor([end, end]),  # an empty reply
    ]
    labels = replies_to_labels(replies, end, null)
    assert labels.tolist() == [
        [5, 6, end, null],
        [5, 6, 7, end],
        [end, null, null, null],
    ]


def test_sample_replies_follows_the_model(teacher_file, datapath, tmp_path):
    """At a tiny temperature, sampling is the model's own greedy decoding."""
    from anti_scaling.agents.on_policy import sample_replies

    agent = make_agent(
        [
            '-m',
            'transformer/generator',
            '-mf',
            teacher_file,
            '--skip-generation',
            'false',
        ],
        datapath,
    )
    batch = _batch(agent, 4)
    agent.model.eval()
    initial = agent._get_initial_decoder_input(4, 1, batch.text_vec.device)
    samples = sample_replies(
        agent.model, (batch.text_vec,), initial, 8, 1e-4, 0, agent.END_IDX
    )
    greedy, _ = agent._generate(batch, 1, 8)
    for row, (tokens, _, _) in zip(samples[:, 1:], greedy):
        # ParlAI ends a hypothesis that reaches the length limit with the end
        # token; compare what both chose before it
        expected = [t for t in tokens.tolist() if t != agent.START_IDX][:-1]
        assert len(expected) >= 3
        assert row.tolist()[: len(expected)] == expected


def test_on_policy_batches_train_on_student_samples(teacher_file, datapath, tmp_path):
    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'o' / 'model'),
            '--embedding-size',
            '16',
            '--n-layers',
            '1',
            '--pred-loss-coeff',
            '1',
            '--pred-loss-type',
            'jsd',
            '--on-policy-fraction',
            '1',
            '--on-policy-max-length',
            '6',
        ],
        datapath,
    )
    seen = []
    original = agent._teacher_targets

    def spy(batch, *args, **kwargs):
        seen.append(batch.label_vec.clone())
        return original(batch, *args, **kwargs)

    agent._teacher_targets = spy
    messages = reverse_examples(4)
    metrics = run_batch(agent, messages)[0]['metrics']
    labels = seen[0]
    assert labels.size(1) <= 7  # at most 6 sampled tokens plus the end token
    gold = _batch(agent, 4).label_vec
    assert labels.shape != gold.shape or not torch.equal(labels, gold)
    assert metrics['on_policy'].value() == 1.0
    assert 'pred_loss' in metrics and 'teacher_acc' in metrics
    assert 'loss' not in metrics  # no cross-entropy against the student's own samples
    # evaluation never samples
    evals = [{'text': m['text'], 'eval_labels': m['labels']} for m in messages]
    seen.clear()
    run_batch(agent, evals)
    assert all((row == agent.END_IDX).any() for row in seen[0])


def test_on_policy_run(teacher_file, datapath, tmp_path):
    model_file = str(tmp_path / 'run' / 'model')
    valid, _ = train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=2,
        embedding_size=16,
        pred_loss_coeff=1.0,
        on_policy_fraction=0.5,
        on_policy_max_length=8,
        max_train_steps=30,
        batchsize=16,
        learningrate=3e-3,
    )
    reports = train_reports(model_file)
    assert 0.2 < sum(r['on_policy'] for r in reports) / len(reports) < 0.8
    assert reports[-1]['distill_loss'] < reports[0]['distill_loss']
    assert 'on_policy' not in valid and valid['pred_loss'] > 0
