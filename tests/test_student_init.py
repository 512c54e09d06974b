"""Wide students start as exact copies of the mapped teacher tensors."""

from __future__ import annotations

import pytest
import torch
from helpers import make_agent

from anti_scaling.agents.student import teacher_key
from anti_scaling.compat import compatible_lr_schedulers

WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
BART_WIDE = 'anti_scaling.distillation:DistillBartAgent'


def test_teacher_key_mapping():
    maps = {'encoder': [1, 3], 'decoder': [2]}
    assert teacher_key('encoder.layers.1.ffn.lin1.weight', maps) == (
        'encoder.layers.3.ffn.lin1.weight'
    )
    assert teacher_key('decoder.layers.0.norm2.bias', maps) == (
        'decoder.layers.2.norm2.bias'
    )
    assert teacher_key('encoder.norm_embeddings.weight', maps) == (
        'encoder.norm_embeddings.weight'
    )
    assert teacher_key('embeddings.weight', maps) == 'embeddings.weight'


def _assert_exact_copy(student, teacher, maps):
    t_state = teacher.state_dict()
    checked = 0
    for name, tensor in student.state_dict().items():
        source = teacher_key(name, maps)
        assert torch.equal(tensor, t_state[source]), f'{name} != teacher {source}'
        checked += 1
    return checked


def test_wide_transformer_copies_mapped_layers_and_embeddings(
    teacher_file, datapath, tmp_path
):
    agent = make_agent(
        [
            '-m',
            WIDE,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'w' / 'model'),
            '--n-encoder-layers',
            '2',
            '--n-decoder-layers',
            '2',
            '--encoder-init-layer-map',
            '0,2',
            '--decoder-layer-map',
            '1,3',
        ],
        datapath,
    )
    maps = {'encoder': [0, 2], 'decoder': [1, 3]}
    assert agent.distillation.init_layer_maps == maps
    assert agent.opt['encoder_layer_map'] == '1,3'  # supervision map: default
    assert agent.opt['encoder_init_layer_map'] == '0,2'
    assert agent.opt['decoder_init_layer_map'] == '1,3'  # follows the layer map
    checked = _assert_exact_copy(agent.model, agent.teacher.model, maps)
    assert checked > 20
    # not the identity by accident: mapped layers differ from unmapped ones
    t_state = agent.teacher.model.state_dict()
    assert not torch.equal(
        agent.model.state_dict()['encoder.layers.1.ffn.lin1.weight'],
        t_state['encoder.layers.1.ffn.lin1.weight'],
    )


def test_wide_bart_copies_every_layernorm(bart_teacher_file, datapath, tmp_path):
    agent = make_agent(
        [
            '-m',
            BART_WIDE,
            '--teacher-model',
            bart_teacher_file,
            '-mf',
            str(tmp_path / 'b' / 'model'),
            '--n-encoder-layers',
            '1',
            '--n-decoder-layers',
            '2',
        ],
        datapath,
    )
    maps = {'encoder': [2], 'decoder': [0, 2]}
    assert agent.distillation.init_layer_maps == maps
    names = set(agent.model.state_dict())
    # BART has embedding LayerNorms in both stacks; they must be copied too
    assert 'encoder.norm_embeddings.weight' in names
    assert 'decoder.norm_embeddings.bias' in names
    _assert_exact_copy(agent.model, agent.teacher.model, maps)


def test_no_copy_when_disabled(teacher_file, datapath, tmp_path):
    agent = make_agent(
        [
            '-m',
            WIDE,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'n' / 'model'),
            '--n-layers',
            '2',
            '--copy-teacher-weights',
            'false',
        ],
        datapath,
    )
    student = agent.model.state_dict()['encoder.layers.0.ffn.lin1.weight']
    teacher = agent.teacher.model.state_dict()['encoder.layers.1.ffn.lin1.weight']
    assert not torch.equal(student, teacher)


def test_parlai_reduce_on_plateau_needs_the_compat_fix():
    from parlai.nn.lr_scheduler import ParlAILRScheduler

    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1.0)
    opt = {'lr_scheduler': 'reduceonplateau', 'lr_scheduler_decay': 0.5}
    opt['lr_scheduler_patience'] = 0
    with pytest.raises(TypeError, match='verbose'):
        ParlAILRScheduler.lr_scheduler_factory(opt, optimizer, {})
    with compatible_lr_schedulers():
        scheduler = ParlAILRScheduler.lr_scheduler_factory(opt, optimizer, {})
    scheduler.valid_step({'loss': 1.0})
    scheduler.valid_step({'loss': 2.0})  # no improvement, patience 0: decay
    assert optimizer.param_groups[0]['lr'] == 0.5
    # ParlAI itself is left as it was
    with pytest.raises(TypeError, match='verbose'):
        ParlAILRScheduler.lr_scheduler_factory(opt, optimizer, {})
