"""Recipes: the published BlenderBot shapes, user flags winning, bad names."""

from __future__ import annotations

import json

import pytest

from anti_scaling.agents.layer_maps import uniform_layer_map
from anti_scaling.errors import DistillationError
from anti_scaling.scripts.zoo import main
from anti_scaling.zoo import RECIPES, apply_recipe, recipe_options
from anti_scaling.zoo.manifest import ENV_MANIFEST, load_catalog
from anti_scaling.zoo.recipes import RECIPE_KEYS, get_recipe, recipe_teacher_mismatches


def agent_option_names(wide: bool) -> set[str]:
    """Every option dest of a distillation agent's parser (transformer family)."""
    from parlai.agents.transformer.transformer import TransformerGeneratorAgent
    from parlai.core.params import ParlaiParser

    from anti_scaling.agents.options import add_distillation_args

    parser = ParlaiParser(False, False)
    TransformerGeneratorAgent.add_cmdline_args(parser, partial_opt=None)
    add_distillation_args(parser, wide=wide)
    return {action.dest for action in parser._actions}


def test_published_blenderbot_shapes():
    wide = RECIPES['blender_1Bdistill']
    assert wide.wide and wide.agent.endswith(':DistillTransformerAgent')
    assert wide.student_shape['embedding_size'] == 2560
    assert (wide.options['n_encoder_layers'], wide.options['n_decoder_layers']) == (
        2,
        12,
    )
    assert 'embedding_size' not in wide.options  # a wide student inherits its width
    narrow = recipe_options('blender_400Mdistill')
    assert not RECIPES['blender_400Mdistill'].wide
    assert {k: narrow[k] for k in ('embedding_size', 'ffn_size', 'n_heads')} == {
        'embedding_size': 1280,
        'ffn_size': 5120,
        'n_heads': 32,
    }
    assert (narrow['n_encoder_layers'], narrow['n_decoder_layers']) == (2, 12)


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_options_are_real_flags_with_consistent_maps(name):
    recipe = get_recipe(name)
    assert set(recipe.options) <= set(RECIPE_KEYS)
    assert set(recipe.options) <= agent_option_names(recipe.wide)
    assert recipe.sources and recipe.description
    teacher = recipe.teacher_shape
    for stack in ('encoder', 'decoder'):
        n = recipe.options[f'n_{stack}_layers']
        expected = uniform_layer_map(n, teacher[f'n_{stack}_layers'])
        assert recipe.options[f'{stack}_layer_map'] == ','.join(map(str, expected))
    if not recipe.wide:
        assert recipe.options['embedding_size'] % recipe.options['n_heads'] == 0
    json.dumps(recipe.options)  # recorded in .opt files and `list --json`


def test_apply_recipe_keeps_what_the_user_set():
    opt = {'hidden_loss_coeff': 1.0, 'embedding_size': 512, 'n_decoder_layers': 6}
    applied = apply_recipe(
        opt, 'blender_400Mdistill', {'hidden_loss_coeff', 'n_decoder_layers'}
    )
    assert opt['hidden_loss_coeff'] == 1.0 and 'hidden_loss_coeff' not in applied
    assert opt['n_decoder_layers'] == 6
    # The recipe's decoder map was written for 12 layers: left to the default.
    assert 'decoder_layer_map' not in applied and 'decoder_layer_map' not in opt
    assert opt['encoder_layer_map'] == '0,1'
    assert opt['embedding_size'] == 1280  # not set on the command line
    assert applied['pred_loss_coeff'] == 64.0


def test_general_layer_count_blocks_the_recipe_counts():
    opt: dict = {}
    applied = apply_recipe(opt, 'blender_1Bdistill', {'n_layers'})
    assert not {'n_encoder_layers', 'n_decoder_layers'} & set(applied)
    assert not {'encoder_layer_map', 'decoder_layer_map'} & set(applied)


def test_recipe_for_the_wrong_agent_kind():
    with pytest.raises(DistillationError, match='DistillNarrowTransformerAgent'):
        apply_recipe({}, 'blender_400Mdistill', set(), wide=True)
    assert apply_recipe({}, 'blender_1Bdistill', set(), wide=True)


def test_unknown_recipe_lists_known_ones():
    for call in (
        lambda: recipe_options('nosuch'),
        lambda: apply_recipe({}, 'nosuch', set()),
    ):
        with pytest.raises(DistillationError) as err:
            call()
        message = str(err.value)
        assert "unknown recipe 'nosuch'" in message
        assert 'blender_1Bdistill' in message and 'blender_400Mdistill' in message
        assert '\n' not in message


def test_teacher_mismatches():
    blender = {
        'embedding_size': 2560,
        'ffn_size': 10240,
        'n_heads': 32,
        'n_encoder_layers': 2,
        'n_decoder_layers': 24,
    }
    assert recipe_teacher_mismatches('blender_1Bdistill', blender) == []
    small = {'embedding_size': 512, 'ffn_size': 2048, 'n_heads': 16, 'n_layers': 8}
    diffs = recipe_teacher_mismatches('blender_1Bdistill', small)
    assert any(d.startswith('n_decoder_layers 8') for d in diffs)


def test_cli_list_shows_recipes_and_models(capsys, monkeypatch):
    monkeypatch.delenv(ENV_MANIFEST, raising=False)
    assert main(['list']) == 0
    out = capsys.readouterr().out
    for name in RECIPES:
        assert name in out
    for name in (
        'blender_3B',
        'blender_1Bdistill',
        'blender_400Mdistill',
        'bart_large',
    ):
        assert name in out
    assert 'size unknown' in out  # ParlAI publishes no sizes: not invented
    assert main(['list', '--json']) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc['recipes']) == set(RECIPES)
    assert {m['name'] for m in doc['models']} >= {'blender_3B', 'bart_large'}


def test_packaged_manifest_states_only_known_facts(monkeypatch):
    monkeypatch.delenv(ENV_MANIFEST, raising=False)
    catalog = load_catalog()
    for model in catalog.models.values():
        for file in model.files:
            assert file.sha256 is None and file.size is None  # none published
        assert model.extra.get('parlai_zoo', '').startswith('zoo:')
        assert model.recipe is None or model.recipe in RECIPES


def test_cli_unknown_model_is_one_line(capsys, tmp_path):
    status = main(['download', 'nosuch', '-dp', str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anti_scaling: error: unknown zoo model 'nosuch'")
    assert '\n' not in err
    assert not (tmp_path / 'models').exists()


def test_old_zoo_command_forwards_to_the_new_one():
    """``python -m anti_scaling.zoo`` moved under scripts: it says so and forwards."""
    import json
    import subprocess
    import sys

    runs = [
        subprocess.run(
            [sys.executable, '-m', module, 'list', '--json'],
            capture_output=True,
            text=True,
            timeout=120,
        )
        for module in ('anti_scaling.zoo', 'anti_scaling.scripts.zoo')
    ]
    old, new = runs
    assert old.returncode == new.returncode == 0
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert old.stderr.splitlines()[0] == (
        'anti_scaling: note: the zoo command line moved to '
        'python -m anti_scaling.scripts.zoo (this one forwards to it)'
    )
