"""Bad input: a one-line error before any work, and nothing written or changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import train

from anti_scaling.errors import DistillationError

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
BART_WIDE = 'anti_scaling.distillation:DistillBartAgent'


def _fails(datapath, tmp_path, message, **kwargs):
    student_dir = tmp_path / 'student'
    options = dict(model_file=str(student_dir / 'model'), max_train_steps=2)
    options.update(kwargs)
    with pytest.raises(DistillationError, match=message) as info:
        train(datapath, **options)
    assert '\n' not in str(info.value)
    assert not student_dir.exists(), 'something was written for the student'
    return str(info.value)


def test_missing_teacher(datapath, tmp_path):
    _fails(
        datapath,
        tmp_path,
        'teacher model file not found',
        model=WIDE,
        teacher_model=str(tmp_path / 'nope' / 'model'),
    )
    assert not (tmp_path / 'nope').exists()


def test_teacher_is_required(datapath, tmp_path):
    with pytest.raises(DistillationError, match='--teacher-model is required'):
        train(datapath, model=WIDE, model_file=str(tmp_path / 's' / 'model'))
    # ParlAI builds a task dictionary before any agent exists; no model is written
    assert not (tmp_path / 's' / 'model').exists()


def test_teacher_not_a_parlai_model(datapath, tmp_path):
    fake = tmp_path / 'fake'
    fake.write_bytes(b'not a model')
    _fails(
        datapath,
        tmp_path,
        r'not a ParlAI model: .*\.opt is missing',
        model=WIDE,
        teacher_model=str(fake),
    )
    (tmp_path / 'fake.opt').write_text('{broken json')
    _fails(
        datapath,
        tmp_path,
        r'\.opt is unreadable',
        model=WIDE,
        teacher_model=str(fake),
    )
    (tmp_path / 'fake.opt').write_text('{"model": "transformer/generator"}')
    _fails(
        datapath,
        tmp_path,
        'could not load teacher',
        model=WIDE,
        teacher_model=str(fake),
    )


def test_teacher_of_the_wrong_kind(teacher_file, bart_teacher_file, datapath, tmp_path):
    msg = _fails(
        datapath,
        tmp_path,
        'is a BartAgent model, but this agent distils TransformerGeneratorAgent',
        model=WIDE,
        teacher_model=bart_teacher_file,
    )
    assert 'DistillBartAgent' in msg
    _fails(
        datapath,
        tmp_path,
        'is a TransformerGeneratorAgent model, but this agent distils BartAgent',
        model=BART_WIDE,
        teacher_model=teacher_file,
    )


def test_student_dictionary_differs(teacher_file, datapath, tmp_path):
    other = tmp_path / 'other.dict'
    shutil.copy(teacher_file + '.dict', other)
    with open(other, 'a') as fh:
        fh.write('extra\t1\n')
    _fails(
        datapath,
        tmp_path,
        r'student dictionary .* 12 tokens\) differs from the teacher\'s .* 11 tokens',
        model=NARROW,
        teacher_model=teacher_file,
        dict_file=str(other),
        embedding_size=16,
    )


@pytest.mark.parametrize(
    'options, message',
    [
        (
            {'n_encoder_layers': 5, 'n_decoder_layers': 2},
            '5 encoder layers but the teacher only 4',
        ),
        ({'n_layers': 2, 'embedding_size': 16}, '--embedding-size 16 differs'),
        ({'n_layers': 2, 'n_heads': 2}, '--n-heads 2 differs'),
        ({'n_layers': 2, 'ffn_size': 16}, '--ffn-size 16 differs'),
    ],
)
def test_wide_student_shape(teacher_file, datapath, tmp_path, options, message):
    msg = _fails(
        datapath, tmp_path, message, model=WIDE, teacher_model=teacher_file, **options
    )
    assert 'narrow' in msg.lower() or 'layers' in msg


@pytest.mark.parametrize(
    'layer_map, message',
    [
        ('1,2,3', 'lists 3 layers but the student has 2'),
        ('0,7', r'teacher layer\(s\) \[7\]'),
        ('3,1', 'not strictly increasing'),
    ],
)
def test_bad_layer_maps(teacher_file, datapath, tmp_path, layer_map, message):
    _fails(
        datapath,
        tmp_path,
        message,
        model=NARROW,
        teacher_model=teacher_file,
        n_layers=2,
        embedding_size=16,
        hidden_loss_coeff=1.0,
        encoder_layer_map=layer_map,
    )


def test_attention_losses_need_equal_heads(teacher_file, datapath, tmp_path):
    _fails(
        datapath,
        tmp_path,
        '--self-attn-loss-coeff compare attention scores head by head, but the '
        'student has 2 heads and the teacher 4',
        model=NARROW,
        teacher_model=teacher_file,
        n_layers=2,
        embedding_size=16,
        n_heads=2,
        self_attn_loss_coeff=1.0,
    )


def test_negative_coefficient(teacher_file, datapath, tmp_path):
    _fails(
        datapath,
        tmp_path,
        'coefficients must be >= 0',
        model=NARROW,
        teacher_model=teacher_file,
        pred_loss_coeff=-1.0,
    )


def test_student_file_is_the_teacher(teacher_file, datapath, tmp_path):
    before = open(teacher_file, 'rb').read()
    with pytest.raises(DistillationError, match='is the teacher itself'):
        train(
            datapath,
            model=WIDE,
            teacher_model=teacher_file,
            init_opt=teacher_file + '.opt',
            n_layers=2,
            max_train_steps=2,
        )
    assert open(teacher_file, 'rb').read() == before


def test_cli_shows_one_line_and_no_traceback(datapath, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'parlai',
            'train_model',
            '-t',
            'integration_tests:reverse',
            '-m',
            WIDE,
            '--teacher-model',
            str(tmp_path / 'missing' / 'model'),
            '-mf',
            str(tmp_path / 'student' / 'model'),
            '-dp',
            datapath,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('anti_scaling: error: teacher model file not found')
    assert not os.path.exists(tmp_path / 'student')
