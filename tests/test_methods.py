"""The method library in the agents: objective choices, config files, schedules,
several teachers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_agent, reverse_examples, train, train_reports

from anti_scaling import losses
from anti_scaling.agents.capture import LOGITS, CapturePoint
from anti_scaling.agents.config import read_config, terms_from_config
from anti_scaling.agents.objectives import objective
from anti_scaling.agents.plan import DistillPlan, DistillTerm, StatePair
from anti_scaling.agents.schedules import scheduled
from anti_scaling.errors import DistillationError

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'


def _args(teacher_file, tmp_path, *extra):
    return [
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
        *extra,
    ]


def _batch(agent, n=6):
    from parlai.core.message import Message

    observations = []
    for message in reverse_examples(n):
        agent.reset()
        observations.append(agent.observe(Message({**message, 'episode_done': True})))
    return agent.batchify(observations)


def _teacher_targets(agent, batch, terms, temperature):
    return agent.distillation.teachers.targets(
        agent._model_input(batch),
        agent._encoder_input(batch),
        batch.label_vec,
        agent.distill_plan,
        terms,
        temperature,
    )


def _metric(agent, name):
    items = agent._local_metrics[name]
    return sum(items[1:], items[0]).value()


# --- schedules and plans (pure) ---------------------------------------------------


def test_schedule_interpolation_and_two_step_weights():
    assert scheduled(((0, 1.0), (10, 0.0)), 5, 7.0) == 0.5
    assert scheduled(((0, 1.0), (10, 0.0)), 50, 7.0) == 0.0
    assert scheduled(None, 5, 7.0) == 7.0
    point = CapturePoint('encoder', 'output', 0)
    term = DistillTerm('enc_loss', (StatePair(point, point),), 2.0)
    logits = StatePair(LOGITS, LOGITS, 'kl', 'decoder')
    pred = DistillTerm('pred_loss', (logits,), 3.0, stage='final')
    plan = DistillPlan(task_coeff=1.0, terms=(term, pred), intermediate_steps=4)
    assert plan.weights(0) == {'loss': 0.0, 'pred_loss': 0.0, 'enc_loss': 2.0}
    assert plan.weights(3)['enc_loss'] == 2.0
    assert plan.weights(4) == {'loss': 1.0, 'pred_loss': 3.0, 'enc_loss': 0.0}


def test_temperature_annealing_is_linear_down_to_the_base():
    plan = DistillPlan(temperature=1.0, temperature_max=5.0, temperature_anneal_steps=8)
    assert [plan.temperature_at(s) for s in (0, 2, 4, 8, 100)] == [
        5.0,
        4.0,
        3.0,
        1.0,
        1.0,
    ]


# --- config files ------------------------------------------------------------------


def test_config_forms_build_the_intended_terms(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text("""
terms:
  - student: encoder.layers.1
    teacher: encoder.layers.3[post]
    loss: cosine
    weight: 2
  - student: decoder.layers.0[pre]
    teacher: decoder.layers.0[pre]
    projection: teacher
    metric: dec_in
  - student: decoder.layers.1.encoder_attention
    teacher: decoder.layers.3.encoder_attention
    loss: attention_kl
  - student: decoder.layers.1.encoder_attention.k_lin
    teacher: decoder.layers.3.encoder_attention.k_lin
    loss: relation_kl
    relation_heads: 2
    schedule: [[0, 1.0], [100, 0.0]]
""")
    terms = terms_from_config(read_config(str(path)), str(path))
    by_metric = {t.metric: t for t in terms}
    cos = by_metric['cfg0_cosine_loss'].pairs[0]
    assert cos.student == CapturePoint('encoder.layers.1', 'output', None)
    assert cos.teacher == CapturePoint('encoder.layers.3', 'output', None)
    assert (cos.objective, cos.positions, cos.projection) == (
        'cosine',
        'encoder',
        'cfg0:auto',
    )
    assert by_metric['cfg0_cosine_loss'].coeff == 2.0
    pre = by_metric['dec_in'].pairs[0]
    assert pre.student.where == 'input' and pre.positions == 'decoder'
    assert pre.project_teacher and pre.projection == 'cfg1:teacher'
    att = by_metric['cfg2_attention_kl_loss'].pairs[0]
    assert att.student.index == 2 and att.positions == 'cross'
    rel = by_metric['cfg3_relation_kl_loss']
    assert (
        rel.pairs[0].positions == 'encoder'
    )  # cross-attention keys are encoder states
    assert rel.weight(50) == 0.5

    json_path = tmp_path / 'c.json'
    json_path.write_text(
        json.dumps([{'student': 'encoder', 'teacher': 'encoder', 'index': 0}])
    )
    (term,) = terms_from_config(read_config(str(json_path)), str(json_path))
    assert term.pairs[0].student == CapturePoint('encoder', 'output', 0)


@pytest.mark.parametrize(
    'content, message',
    [
        ('[{"student": "encoder.layers.0"}]', "'teacher' is required"),
        ('[{"student": "a", "teacher": "b", "loss": "l2"}]', "unknown loss 'l2'"),
        ('[{"student": "a", "teacher": "b", "wieght": 1}]', 'unknown key'),
        ('{"terms": 3}', 'expected a list of terms'),
        ('{broken', 'not valid JSON'),
        (
            '[{"student": "a", "teacher": "b", "loss": "relation_kl"}]',
            'needs relation_heads',
        ),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(DistillationError, match=message):
        terms_from_config(read_config(str(path)), str(path))


def test_config_unknown_module_lists_the_closest(teacher_file, datapath, tmp_path):
    path = tmp_path / 'c.json'
    path.write_text(
        json.dumps([{'student': 'encoder.layer.1', 'teacher': 'encoder.layers.1'}])
    )
    with pytest.raises(
        DistillationError,
        match=r"no module 'encoder.layer.1'; closest: encoder.layers.1",
    ):
        make_agent(
            _args(teacher_file, tmp_path, '--distill-config', str(path)), datapath
        )


def test_config_shape_mismatch_without_projection(teacher_file, datapath, tmp_path):
    path = tmp_path / 'c.json'
    path.write_text(
        json.dumps(
            [
                {
                    'student': 'encoder.layers.1',
                    'teacher': 'encoder.layers.3',
                    'projection': 'none',
                }
            ]
        )
    )
    with pytest.raises(
        DistillationError,
        match=r'widths differ \(16 vs 32\) and there is no projection',
    ):
        make_agent(
            _args(teacher_file, tmp_path, '--distill-config', str(path)), datapath
        )
    assert not (tmp_path / 'm').exists()


def test_config_projection_shapes_are_inferred(teacher_file, datapath, tmp_path):
    path = tmp_path / 'c.json'
    path.write_text(
        json.dumps(
            [
                {'student': 'encoder.layers.1', 'teacher': 'encoder.layers.3'},
                {
                    'student': 'encoder.layers.0',
                    'teacher': 'encoder.layers.1',
                    'projection': 'teacher',
                },
                {
                    'student': 'embeddings',
                    'teacher': 'embeddings',
                    'positions': 'encoder',
                    'weight': 0,
                },
            ]
        )
    )
    agent = make_agent(
        _args(teacher_file, tmp_path, '--distill-config', str(path)), datapath
    )
    projections = agent.model.distill_projections
    assert tuple(projections['cfg0'].weight.shape) == (
        32,
        16,
    )  # student 16 -> teacher 32
    assert tuple(projections['cfg1'].weight.shape) == (
        16,
        32,
    )  # teacher 32 -> student 16
    assert [t.metric for t in agent.distill_plan.terms] == [
        'cfg0_mse_loss',
        'cfg1_mse_loss',
    ]


# --- objectives chosen by flag ----------------------------------------------------


@pytest.mark.parametrize(
    'kind',
    ['reverse_kl', 'jsd', 'logit_mse', 'soft_ce', 'skew_kl', 'skew_reverse_kl', 'taid'],
)
def test_prediction_objective_flag(kind, teacher_file, datapath, tmp_path):
    agent = make_agent(
        _args(
            teacher_file,
            tmp_path,
            '--pred-loss-coeff',
            '1',
            '--task-loss-coeff',
            '0',
            '--pred-loss-type',
            kind,
            '--jsd-beta',
            '0.3',
            '--skew-alpha',
            '0.2',
            '--taid-steps',
            '10',
            '--distill-temperature',
            '2',
        ),
        datapath,
    )
    agent.model.eval()
    batch = _batch(agent)
    agent._local_metrics.clear()
    with torch.no_grad():
        total = agent.compute_loss(batch)
        student = agent.model(batch.text_vec, ys=batch.label_vec)[0]
        teacher = agent.teacher.model(batch.text_vec, ys=batch.label_vec)[0]
    mask = batch.label_vec != agent.NULL_IDX
    spec = objective(kind)
    params = {'temperature': 2.0, 'beta': 0.3, 'alpha': 0.2, 'interpolation': 0.4}
    params = {k: v for k, v in params.items() if k in spec.params}
    expected = spec.function(student, teacher, mask, **params).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert _metric(agent, 'pred_loss') == pytest.approx(expected.item(), rel=1e-5)


def test_minilmv2_relations_work_with_different_head_counts(
    teacher_file, datapath, tmp_path
):
    agent = make_agent(
        _args(
            teacher_file,
            tmp_path,
            '--n-heads',
            '2',  # the teacher has 4
            '--self-attn-loss-coeff',
            '1',
            '--enc-dec-attn-loss-coeff',
            '1',
            '--attn-loss-type',
            'minilmv2',
            '--relation-heads',
            '4',
        ),
        datapath,
    )
    terms = {t.metric: t for t in agent.distill_plan.terms}
    pairs = terms['enc_dec_attn_loss'].pairs
    assert [p.student.module.rsplit('.', 1)[1] for p in pairs[:3]] == [
        'q_lin',
        'k_lin',
        'v_lin',
    ]
    assert [p.positions for p in pairs[:3]] == ['decoder', 'encoder', 'encoder']
    assert terms['enc_self_attn_loss'].groups == 2
    agent.model.eval()
    batch = _batch(agent)
    agent._local_metrics.clear()
    with torch.no_grad():
        agent.compute_loss(batch)
    for name in ('enc_self_attn_loss', 'dec_self_attn_loss', 'enc_dec_attn_loss'):
        assert _metric(agent, name) > 0
    with pytest.raises(DistillationError, match='head by head'):
        make_agent(
            _args(
                teacher_file, tmp_path, '--n-heads', '2', '--self-attn-loss-coeff', '1'
            ),
            datapath,
        )


def test_hidden_objective_flag_uses_cosine(teacher_file, datapath, tmp_path):
    agent = make_agent(
        _args(
            teacher_file,
            tmp_path,
            '--hidden-loss-coeff',
            '1',
            '--hidden-loss-type',
            'cosine',
        ),
        datapath,
    )
    assert {p.objective for t in agent.distill_plan.terms for p in t.pairs} == {
        'cosine'
    }


# --- several teachers ------------------------------------------------------------


@pytest.fixture(scope='module')
def second_teacher(tmp_path_factory, teacher_file, datapath):
    model_file = str(tmp_path_factory.mktemp('teacher2') / 'model')
    train(
        datapath,
        model='transformer/generator',
        model_file=model_file,
        dict_file=teacher_file + '.dict',
        n_layers=2,
        embedding_size=32,
        ffn_size=64,
        n_heads=4,
        max_train_steps=30,
        batchsize=16,
        learningrate=3e-3,
    )
    return model_file


def test_several_teachers_average_their_distributions(
    teacher_file, second_teacher, datapath, tmp_path
):
    agent = make_agent(
        _args(
            f'{teacher_file},{second_teacher}',
            tmp_path,
            '--teacher-weights',
            '3,1',
            '--pred-loss-coeff',
            '1',
            '--hidden-loss-coeff',
            '1',
            '--distill-temperature',
            '2',
        ),
        datapath,
    )
    assert len(agent.teachers) == 2 and agent.teacher is agent.teachers[0]
    assert agent.distillation.teachers.weights == [0.75, 0.25]
    batch = _batch(agent)
    plan = agent.distill_plan
    _, (mixed, tokens) = _teacher_targets(agent, batch, plan.terms, 2.0)
    with torch.no_grad():
        z1 = agent.teachers[0].model(batch.text_vec, ys=batch.label_vec)[0]
        z2 = agent.teachers[1].model(batch.text_vec, ys=batch.label_vec)[0]
    expected = 0.75 * F.softmax(z1 / 2, -1) + 0.25 * F.softmax(z2 / 2, -1)
    assert torch.allclose(F.softmax(mixed / 2, -1), expected, atol=1e-6)
    # teacher_acc compares with the ensemble's own prediction (temperature 1)
    at_one = 0.75 * F.softmax(z1, -1) + 0.25 * F.softmax(z2, -1)
    assert torch.equal(tokens, at_one.argmax(-1))
    # intermediate terms come from the designated teacher only (4 layers here)
    assert agent.opt['encoder_layer_map'] == '1,3'


def test_several_teachers_need_one_dictionary(
    teacher_file, bart_teacher_file, datapath, tmp_path
):
    with open(teacher_file + '.dict') as fh:
        lines = fh.readlines()
    (tmp_path / 'other.dict').write_text(''.join(lines) + 'extra\t1\n')
    other = tmp_path / 'other' / 'model'
    untrained = make_agent(
        ['-m', 'transformer/generator', '-mf', str(other), '--dict-file']
        + [str(tmp_path / 'other.dict'), '--lr-scheduler', 'none', '--n-layers', '1']
        + ['--embedding-size', '16', '--ffn-size', '16', '--n-heads', '2'],
        datapath,
    )
    untrained.save(str(other))
    with pytest.raises(DistillationError, match='different dictionaries'):
        make_agent(
            _args(f'{teacher_file},{other}', tmp_path, '--pred-loss-coeff', '1'),
            datapath,
        )
    with pytest.raises(DistillationError, match='give 2 non-negative weights'):
        make_agent(
            _args(f'{teacher_file},{teacher_file}', tmp_path, '--teacher-weights', '1'),
            datapath,
        )


# --- real runs ---------------------------------------------------------------------


def test_config_run_minilmv2_cosine_reverse_kl_different_heads(
    teacher_file, datapath, tmp_path
):
    """A short real run combining MiniLMv2 relations, cosine hidden loss and reverse
    KL between a 4-head teacher and a 2-head student."""
    config = tmp_path / 'methods.yaml'
    config.write_text(
        '\n'.join(
            f"""
  - student: encoder.layers.{s}.attention.{w}_lin
    teacher: encoder.layers.{t}.attention.{w}_lin
    loss: relation_kl
    relation_heads: 4
    metric: enc_{w}{w}_relation_loss""" for s, t in ((0, 1), (1, 3)) for w in 'qkv'
        ).join(['terms:', ''])
        + """
  - student: decoder.layers.1
    teacher: decoder.layers.3
    loss: cosine
    metric: dec_cosine_loss
"""
    )
    model_file = str(tmp_path / 'run' / 'model')
    valid, _ = train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=2,
        embedding_size=16,
        ffn_size=32,
        n_heads=2,
        distill_config=str(config),
        pred_loss_coeff=1.0,
        pred_loss_type='reverse_kl',
        max_train_steps=40,
        batchsize=16,
        learningrate=3e-3,
    )
    reports = train_reports(model_file)
    metrics = {
        'enc_qq_relation_loss',
        'enc_kk_relation_loss',
        'enc_vv_relation_loss',
        'dec_cosine_loss',
        'pred_loss',
        'distill_loss',
        'teacher_acc',
    }
    for name in metrics:
        assert name in reports[0] and name in valid
    first, last = reports[0]['distill_loss'], reports[-1]['distill_loss']
    assert last < 0.9 * first
    assert math.isfinite(last)


def test_two_step_distillation_switches_terms(teacher_file, datapath, tmp_path):
    model_file = str(tmp_path / 'two' / 'model')
    train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=2,
        embedding_size=16,
        hidden_loss_coeff=1.0,
        pred_loss_coeff=1.0,
        intermediate_steps=10,
        lr_scheduler='reduceonplateau',
        max_train_steps=20,
        batchsize=16,
    )
    reports = train_reports(model_file)
    early = [r for r in reports if r['total_train_updates'] <= 10]
    late = [r for r in reports if r['total_train_updates'] > 10]
    assert early and late
    assert all('enc_hid_loss' in r and 'pred_loss' not in r for r in early)
    assert all('pred_loss' in r and 'enc_hid_loss' not in r for r in late)


# --- one structure, whatever states it -------------------------------------------


def test_config_relations_equal_the_command_line_and_get_no_projection(
    teacher_file, datapath, tmp_path
):
    """MiniLMv2 stated in a config file gives the flags' loss, with no projection."""
    flags = make_agent(
        _args(
            teacher_file,
            tmp_path / 'flags',
            '--n-heads',
            '2',
            '--self-attn-loss-coeff',
            '1',
            '--attn-loss-type',
            'minilmv2',
            '--relation-heads',
            '4',
            '--task-loss-coeff',
            '0',
        ),
        datapath,
    )
    maps = [int(x) for x in flags.opt['encoder_layer_map'].split(',')]
    terms = []
    for which in 'qkv':
        for stack, attention in (
            ('encoder', 'attention'),
            ('decoder', 'self_attention'),
        ):
            for i, j in enumerate(maps):
                terms.append(
                    {
                        'student': f'{stack}.layers.{i}.{attention}.{which}_lin',
                        'teacher': f'{stack}.layers.{j}.{attention}.{which}_lin',
                        'loss': 'relation_kl',
                        'relation_heads': 4,
                        'positions': stack,
                        'metric': f'{stack}_{which}',
                        # relation losses count pairs of layers per metric; the
                        # flags average the q+k+v sum over layers instead
                        'weight': 1.0,
                    }
                )
    config = tmp_path / 'minilmv2.json'
    config.write_text(json.dumps({'terms': terms}))
    from_config = make_agent(
        _args(
            teacher_file,
            tmp_path / 'config',
            '--n-heads',
            '2',
            '--distill-config',
            str(config),
            '--task-loss-coeff',
            '0',
        ),
        datapath,
    )
    # the widths differ (16 vs 32): still no projection for relations
    assert not from_config.distill_plan.projections
    assert not flags.distill_plan.projections
    from_config.model.load_state_dict(flags.model.state_dict())
    batch = _batch(flags)
    values = {}
    for agent in (flags, from_config):
        agent.model.eval()
        agent._local_metrics.clear()
        with torch.no_grad():
            agent.compute_loss(batch)
        values[agent] = {k: _metric(agent, k) for k in agent._local_metrics}
    for stack, prefix in (('encoder', 'enc'), ('decoder', 'dec')):
        summed = sum(values[from_config][f'{stack}_{w}'] for w in 'qkv')
        assert summed == pytest.approx(
            values[flags][f'{prefix}_self_attn_loss'], rel=1e-5
        )
    assert values[from_config]['distill_loss'] == pytest.approx(
        values[flags]['distill_loss'], rel=1e-5
    )


def test_logit_mse_of_several_teachers_compares_averaged_logits(
    teacher_file, second_teacher, datapath, tmp_path
):
    def pred_loss(teachers, weights):
        agent = make_agent(
            _args(
                teachers,
                tmp_path / weights.replace(',', '_'),
                '--pred-loss-coeff',
                '1',
                '--pred-loss-type',
                'logit_mse',
                '--teacher-weights',
                weights,
            ),
            datapath,
        )
        torch.manual_seed(0)
        for p in agent.model.parameters():
            torch.nn.init.normal_(p, std=0.1)
        agent.model.eval()
        agent._local_metrics.clear()
        with torch.no_grad():
            agent.compute_loss(_batch(agent))
        return agent, _metric(agent, 'pred_loss')

    _, alone = pred_loss(teacher_file, '1')
    _, first_only = pred_loss(f'{teacher_file},{second_teacher}', '1,0')
    assert first_only == pytest.approx(alone, rel=1e-6)
    agent, mixed = pred_loss(f'{teacher_file},{second_teacher}', '3,1')
    batch = _batch(agent)
    with torch.no_grad():
        s = agent.model(batch.text_vec, ys=batch.label_vec)[0]
        z1 = agent.teachers[0].model(batch.text_vec, ys=batch.label_vec)[0]
        z2 = agent.teachers[1].model(batch.text_vec, ys=batch.label_vec)[0]
    mask = batch.label_vec != agent.NULL_IDX
    expected = losses.logit_mse(s, 0.75 * z1 + 0.25 * z2, mask).mean()
    assert mixed == pytest.approx(expected.item(), rel=1e-5)


def test_handover_from_teacher_to_labels_is_linear_then_labels_only():
    point = CapturePoint('encoder', 'output', 0)
    hidden = DistillTerm('enc_loss', (StatePair(point, point),), 2.0)
    pred = DistillTerm(
        'pred_loss', (StatePair(LOGITS, LOGITS, 'kl', 'decoder'),), 8.0, stage='final'
    )
    plan = DistillPlan(task_coeff=1.0, terms=(hidden, pred), handover_steps=100)
    assert plan.weights(0) == {'loss': 1.0, 'enc_loss': 2.0, 'pred_loss': 8.0}
    assert plan.weights(25) == {'loss': 1.0, 'enc_loss': 1.5, 'pred_loss': 6.0}
    assert plan.weights(100) == {'loss': 1.0, 'enc_loss': 0.0, 'pred_loss': 0.0}
    assert plan.weights(5000)['pred_loss'] == 0.0


def test_handover_steps_from_the_command_line(teacher_file, datapath, tmp_path):
    agent = make_agent(
        _args(
            teacher_file,
            tmp_path,
            '--pred-loss-coeff',
            '4',
            '--handover-steps',
            '10',
        ),
        datapath,
    )
    assert agent.distill_plan.handover_steps == 10
    assert agent.distill_plan.weights(5)['pred_loss'] == 2.0
    with pytest.raises(DistillationError, match='--handover-steps must be >= 0'):
        make_agent(
            _args(teacher_file, tmp_path / 'bad', '--handover-steps', '-1'), datapath
        )
