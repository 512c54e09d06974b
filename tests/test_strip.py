"""remove_projection_matrices: plain models that behave exactly like the students."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from helpers import read_opt, reverse_examples, train

from anti_scaling.errors import DistillationError
from anti_scaling.export.strip import remove_projection_matrices
from anti_scaling.scripts.remove_projection_matrices import main

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
BART_NARROW = 'anti_scaling.distillation:DistillNarrowBartAgent'
COEFFS = dict(
    hidden_loss_coeff=1.0,
    pred_loss_coeff=1.0,
    encoder_loss_coeff=1.0,
    embedding_loss_coeff=1.0,
    self_attn_loss_coeff=1.0,
    enc_dec_attn_loss_coeff=1.0,
)


@pytest.fixture(scope='module')
def narrow_student(tmp_path_factory, teacher_file, datapath) -> str:
    model_file = str(tmp_path_factory.mktemp('narrow') / 'model')
    train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=2,
        embedding_size=16,
        ffn_size=32,
        max_train_steps=30,
        batchsize=16,
        **COEFFS,
    )
    return model_file


def _copy_model(src: str, dst_dir) -> str:
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, 'model')
    for suffix in ('', '.opt', '.dict', '.dict.opt'):
        if os.path.exists(src + suffix):
            shutil.copy(src + suffix, dst + suffix)
    return dst


def _generate(model_file: str, model: str | None, datapath: str) -> list[str]:
    from parlai.core.agents import create_agent_from_model_file
    from parlai.core.message import Message

    overrides = {'datapath': datapath, 'skip_generation': False, 'inference': 'beam'}
    overrides['beam_size'] = 2
    if model:
        overrides['model'] = model
    agent = create_agent_from_model_file(model_file, overrides)
    texts = []
    for message in reverse_examples(5, seed=3):
        agent.reset()
        agent.observe(Message({'text': message['text'], 'episode_done': True}))
        texts.append(agent.act()['text'])
    return texts


def _valid_ppl(model_file: str, model: str, datapath: str) -> float:
    from parlai.scripts.eval_model import EvalModel

    report = EvalModel.main(
        task='integration_tests:reverse',
        model=model,
        model_file=model_file,
        datapath=datapath,
        skip_generation=True,
        num_examples=40,
        batchsize=8,
    )
    return float(report['ppl'])


def test_strip_in_place_gives_an_identical_plain_model(
    narrow_student, teacher_file, datapath, tmp_path
):
    model_file = _copy_model(narrow_student, tmp_path / 'inplace')
    original = open(model_file, 'rb').read()
    original_opt = open(model_file + '.opt', 'rb').read()
    before_text = _generate(model_file, None, datapath)
    before_ppl = _valid_ppl(model_file, NARROW, datapath)
    before = torch.load(model_file, weights_only=False)

    assert main([model_file]) == 0

    # backups are byte-for-byte the originals
    assert open(model_file + '.orig', 'rb').read() == original
    assert open(model_file + '.opt.orig', 'rb').read() == original_opt
    after = torch.load(model_file, weights_only=False)
    assert not any(k.startswith('distill_projections') for k in after['model'])
    assert 'optimizer_param_names' not in after
    for key, value in after['model'].items():
        assert torch.equal(value, before['model'][key])
    # optimizer state of the removed weights is gone; the rest is kept, renumbered
    names = before['optimizer_param_names']
    kept = [i for i, n in enumerate(names) if not n.startswith('distill_projections')]
    assert len(after['optimizer']['state']) == len(kept)
    assert after['optimizer']['param_groups'][0]['params'] == list(range(len(kept)))
    for new, old in enumerate(kept):
        assert torch.equal(
            after['optimizer']['state'][new]['exp_avg'],
            before['optimizer']['state'][old]['exp_avg'],
        )

    opt = read_opt(model_file)
    assert opt['model'] == 'transformer/generator'
    text = open(model_file + '.opt').read()
    assert os.path.dirname(teacher_file) not in text, 'the .opt still names the teacher'
    for key in ('teacher_model', 'hidden_loss_coeff', 'encoder_layer_map'):
        assert key not in opt
    assert opt['dict_file'] == model_file + '.dict'

    # loads as a plain model, same perplexity and same generations
    assert _valid_ppl(model_file, 'transformer/generator', datapath) == before_ppl
    assert _generate(model_file, 'transformer/generator', datapath) == before_text
    # and without -m at all: the .opt names the plain model
    assert _generate(model_file, None, datapath) == before_text


def test_stripped_model_keeps_its_optimizer_state(narrow_student, datapath, tmp_path):
    from parlai.core.agents import create_agent_from_model_file

    model_file = _copy_model(narrow_student, tmp_path / 'optim')
    remove_projection_matrices(model_file)
    agent = create_agent_from_model_file(
        model_file, {'datapath': datapath, 'datatype': 'train', 'optimizer': 'adam'}
    )
    saved = torch.load(model_file, weights_only=False)['optimizer']
    loaded = agent.optimizer.state_dict()
    assert len(loaded['state']) == len(saved['state']) > 0
    assert torch.equal(
        loaded['state'][0]['exp_avg_sq'], saved['state'][0]['exp_avg_sq']
    )


def test_strip_to_output_leaves_the_original_untouched(narrow_student, tmp_path):
    model_file = _copy_model(narrow_student, tmp_path / 'src')
    files = {s: open(model_file + s, 'rb').read() for s in ('', '.opt', '.dict')}
    out = str(tmp_path / 'out' / 'plain')
    result = remove_projection_matrices(model_file, output=out)
    assert result.model_file == out and result.model == 'transformer/generator'
    assert len(result.removed) == 2 * (2 + 1 + 2 + 2)
    for suffix, content in files.items():
        assert open(model_file + suffix, 'rb').read() == content
    assert not os.path.exists(model_file + '.orig')
    assert os.path.isfile(out + '.dict') and read_opt(out)['model_file'] == out


def test_strip_bart_student_loads_as_bart(bart_teacher_file, datapath, tmp_path):
    model_file = str(tmp_path / 'bart' / 'model')
    train(
        datapath,
        model=BART_NARROW,
        teacher_model=bart_teacher_file,
        model_file=model_file,
        n_layers=1,
        embedding_size=16,
        ffn_size=32,
        max_train_steps=10,
        batchsize=16,
        hidden_loss_coeff=1.0,
        pred_loss_coeff=1.0,
    )
    before = _generate(model_file, None, datapath)
    result = remove_projection_matrices(model_file)
    assert result.model == 'bart' and read_opt(model_file)['model'] == 'bart'
    assert _generate(model_file, 'bart', datapath) == before
    assert not os.path.exists(os.path.join(datapath, 'models', 'bart'))


def _unchanged(paths):
    return {p: open(p, 'rb').read() for p in paths if os.path.exists(p)}


def test_opt_only_still_removes_projections_that_are_there(narrow_student, tmp_path):
    model_file = _copy_model(narrow_student, tmp_path / 'src')
    out = str(tmp_path / 'out' / 'plain')
    result = remove_projection_matrices(model_file, output=out, opt_only=True)
    assert len(result.removed) == 2 * (2 + 1 + 2 + 2)
    saved = torch.load(out, map_location='cpu', weights_only=False)['model']
    assert not [k for k in saved if 'projection' in k]
    assert read_opt(out)['model'] == 'transformer/generator'


def test_strip_refuses_models_without_projections(teacher_file, tmp_path):
    model_file = _copy_model(teacher_file, tmp_path / 'teacher')
    before = _unchanged([model_file, model_file + '.opt'])
    with pytest.raises(DistillationError, match='has no projection matrices'):
        remove_projection_matrices(model_file)
    assert _unchanged([model_file, model_file + '.opt']) == before
    assert not os.path.exists(model_file + '.orig')


def test_strip_refuses_missing_and_corrupt_files(narrow_student, tmp_path, capsys):
    assert main([str(tmp_path / 'missing')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('anti_scaling: error: student model file not found')
    assert '\n' not in err

    model_file = _copy_model(narrow_student, tmp_path / 'corrupt')
    with open(model_file, 'r+b') as fh:  # truncate the checkpoint
        data = fh.read()
        fh.seek(0)
        fh.write(data[: len(data) // 3])
        fh.truncate()
    listing = sorted(os.listdir(tmp_path / 'corrupt'))
    before = _unchanged([model_file, model_file + '.opt', model_file + '.dict'])
    with pytest.raises(DistillationError, match='not a readable ParlAI checkpoint'):
        remove_projection_matrices(model_file)
    assert _unchanged([model_file, model_file + '.opt', model_file + '.dict']) == before
    assert sorted(os.listdir(tmp_path / 'corrupt')) == listing

    no_opt = _copy_model(narrow_student, tmp_path / 'noopt')
    os.remove(no_opt + '.opt')
    with pytest.raises(DistillationError, match=r'\.opt is missing'):
        remove_projection_matrices(no_opt)


def test_strip_refuses_to_overwrite_a_backup(narrow_student, tmp_path):
    model_file = _copy_model(narrow_student, tmp_path / 'backup')
    with open(model_file + '.orig', 'w') as fh:
        fh.write('precious')
    with pytest.raises(DistillationError, match='already exists'):
        remove_projection_matrices(model_file)
    assert open(model_file + '.orig').read() == 'precious'
    assert json.load(open(model_file + '.opt'))['model'] == NARROW


def test_stale_dictionary_beside_the_student_is_replaced(
    teacher_file, datapath, tmp_path
):
    model_file = str(tmp_path / 'stale' / 'model')
    os.makedirs(os.path.dirname(model_file))
    with open(model_file + '.dict', 'w') as fh:
        fh.write('__null__\t1000000003\nzebra\t5\n')
    train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        model_file=model_file,
        n_layers=1,
        embedding_size=16,
        max_train_steps=2,
        pred_loss_coeff=1.0,
    )
    with open(model_file + '.dict') as a, open(teacher_file + '.dict') as b:
        assert a.read() == b.read()


def test_an_optimizer_state_that_cannot_be_cut_is_dropped():
    """An optimizer holding one flattened copy of every parameter (fewer entries
    than parameter names) cannot lose only the projections' slots."""
    from anti_scaling.export.strip import strip_states
    from anti_scaling.model_files import OPTIMIZER_PARAM_NAMES

    states = {
        'model': {
            'a.weight': torch.zeros(2),
            'distill_projections.p.weight': torch.zeros(3),
        },
        OPTIMIZER_PARAM_NAMES: ['a.weight', 'distill_projections.p.weight'],
        'optimizer': {
            'state': {0: {'exp_avg': torch.zeros(5)}},
            'param_groups': [{'params': [0], 'lr': 1.0}],
        },
        'optimizer_type': 'adam',
    }
    stripped, removed = strip_states(states)
    assert removed == ['distill_projections.p.weight']
    assert 'optimizer' not in stripped and 'optimizer_type' not in stripped
    assert list(stripped['model']) == ['a.weight']
