"""`--recipe FILE`: recipes from JSON/YAML files, checked like command-line flags."""

from __future__ import annotations

import json

import pytest
from helpers import make_agent

from anti_scaling.agents.recipe_files import resolve_recipe as get_recipe
from anti_scaling.errors import DistillationError
from anti_scaling.zoo.recipes import recipe_teacher_mismatches

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'


def write(path, data):
    if str(path).endswith('.json'):
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_yaml_recipe_file_is_read_and_typed(tmp_path):
    path = write(
        tmp_path / 'student.yaml',
        {
            'agent': NARROW,
            'options': {
                'n_encoder_layers': 1,
                'n_decoder_layers': '2',
                'embedding_size': 16,
                'ffn_size': 32,
                'n_heads': 4,
                'pred_loss_coeff': 8,
                'pred_loss_type': 'jsd',
                'freeze_encoder': 'false',
                'decoder_layer_map': '1,3',
            },
            'teacher_shape': {'n_encoder_layers': 4, 'n_decoder_layers': 4},
        },
    )
    recipe = get_recipe(path)
    assert recipe.name == 'student' and not recipe.wide
    # values parsed as the flags parse them
    assert recipe.options['n_decoder_layers'] == 2
    assert recipe.options['pred_loss_coeff'] == 8.0
    assert recipe.options['freeze_encoder'] is False
    assert recipe.options['decoder_layer_map'] == '1,3'
    assert recipe_teacher_mismatches(recipe, {'n_encoder_layers': 2}) == [
        'n_encoder_layers 2 (recipe student expects 4)'
    ]


@pytest.mark.parametrize(
    'data, message',
    [
        ({'options': {'n_decoder_layers': 1}}, 'agent must be one of'),
        ({'agent': WIDE}, 'options must be a non-empty mapping'),
        (
            {'agent': WIDE, 'options': {'teacher_model': 'x'}},
            "'teacher_model' cannot be set",
        ),
        (
            {'agent': WIDE, 'options': {'embedding_loss': 1}},
            "'embedding_loss' cannot be set",
        ),
        (
            {'agent': NARROW, 'options': {'copy_teacher_weights': True}},
            'cannot be set by a recipe of DistillNarrow',
        ),
        (
            {'agent': WIDE, 'options': {'pred_loss_type': 'nope'}},
            "is not one of --pred-loss-type's choices",
        ),
        ({'agent': WIDE, 'options': {'n_decoder_layers': 1.5}}, 'is not a valid int'),
        ({'agent': WIDE, 'options': {'pred_loss_coeff': [1]}}, 'needs one value'),
        (
            {'agent': WIDE, 'options': {'pred_loss_coeff': 1}, 'colour': 1},
            "unknown field 'colour'",
        ),
        (
            {
                'agent': WIDE,
                'options': {'pred_loss_coeff': 1},
                'teacher_shape': {'width': 3},
            },
            'teacher_shape must map',
        ),
    ],
)
def test_bad_recipe_files_are_one_line(tmp_path, data, message):
    path = write(tmp_path / 'r.json', data)
    with pytest.raises(DistillationError, match=message) as err:
        get_recipe(path)
    assert str(err.value).startswith(f'recipe file {path}: ')
    assert '\n' not in str(err.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(DistillationError, match='recipe file .*: file not found'):
        get_recipe(str(tmp_path / 'none.json'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('agent: [unclosed\n')
    with pytest.raises(DistillationError, match='not valid YAML'):
        get_recipe(str(bad))
    with pytest.raises(DistillationError, match='or give a recipe file'):
        get_recipe('no_such_recipe')


def test_agents_take_a_recipe_file_and_flags_still_win(
    teacher_file, datapath, tmp_path
):
    path = write(
        tmp_path / 'wide.json',
        {
            'agent': WIDE,
            'options': {
                'n_encoder_layers': 2,
                'n_decoder_layers': 1,
                'hidden_loss_coeff': 0.5,
                'pred_loss_coeff': 4,
                'pred_loss_type': 'reverse_kl',
            },
        },
    )
    args = ['--teacher-model', teacher_file, '--recipe', path]
    agent = make_agent(
        [
            '-m',
            WIDE,
            *args,
            '-mf',
            str(tmp_path / 's' / 'model'),
            '--pred-loss-coeff',
            '2',
        ],
        datapath,
    )
    opt = agent.opt
    assert (opt['n_encoder_layers'], opt['n_decoder_layers']) == (2, 1)
    assert opt['pred_loss_type'] == 'reverse_kl' and opt['pred_loss_coeff'] == 2
    assert agent.distill_plan.prediction.pairs[0].objective == 'reverse_kl'
    assert {t.metric: t.coeff for t in agent.distill_plan.terms}['dec_hid_loss'] == 0.5
    with pytest.raises(DistillationError, match='is for a wide .* student'):
        make_agent(
            ['-m', NARROW, *args, '-mf', str(tmp_path / 'n' / 'model')], datapath
        )
    broken = write(tmp_path / 'broken.json', {'agent': WIDE, 'options': {'x': 1}})
    with pytest.raises(DistillationError, match="option 'x' cannot be set"):
        make_agent(
            [
                '-m',
                WIDE,
                '--teacher-model',
                teacher_file,
                '--recipe',
                broken,
                '-mf',
                str(tmp_path / 'b' / 'model'),
            ],
            datapath,
        )
    assert not (tmp_path / 'n').exists() and not (tmp_path / 'b').exists()
