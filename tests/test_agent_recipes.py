"""`--recipe` in the agents: recipe values apply, command-line flags win."""

from __future__ import annotations

import pytest
from helpers import make_agent

from anti_scaling.errors import DistillationError

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'


def test_recipe_sets_coefficients_and_flags_override(teacher_file, datapath, tmp_path):
    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'r' / 'model'),
            '--recipe',
            'blender_400Mdistill',
            # the recipe's shape is BlenderBot's; shrink it for the tiny teacher
            '--embedding-size',
            '16',
            '--ffn-size',
            '32',
            '--n-heads',
            '4',
            '--n-encoder-layers',
            '1',
            '--n-decoder-layers',
            '2',
            '--pred-loss-coeff',
            '5',
        ],
        datapath,
    )
    opt = agent.opt
    assert (opt['embedding_size'], opt['ffn_size'], opt['n_heads']) == (16, 32, 4)
    assert opt['hidden_loss_coeff'] == 64 and opt['enc_dec_attn_loss_coeff'] == 64
    assert opt['pred_loss_coeff'] == 5  # the command line wins
    # explicit layer counts keep the recipe's (24-layer) maps out
    assert opt['encoder_layer_map'] == '3' and opt['decoder_layer_map'] == '1,3'
    metrics = {t.metric: t.coeff for t in agent.distill_plan.terms}
    assert metrics['enc_hid_loss'] == 64 and metrics['enc_self_attn_loss'] == 4


def test_unknown_recipe_and_wrong_agent(teacher_file, datapath, tmp_path):
    args = ['--teacher-model', teacher_file, '-mf', str(tmp_path / 'x' / 'model')]
    with pytest.raises(DistillationError, match='unknown recipe .* known recipes'):
        make_agent(['-m', WIDE, *args, '--recipe', 'nope'], datapath)
    with pytest.raises(DistillationError, match='is for a narrow student'):
        make_agent(['-m', WIDE, *args, '--recipe', 'blender_400Mdistill'], datapath)
    assert not (tmp_path / 'x').exists()
