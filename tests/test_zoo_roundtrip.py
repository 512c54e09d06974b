"""Publish a real (tiny) ParlAI model, serve it on 127.0.0.1, download it by name,
load it, and get the same generations; zoo names through ParlAI's own resolver."""

from __future__ import annotations

import json
import os
import tarfile

import pytest
from zoo_support import PROXY_VARIABLES, FileServer

from anti_scaling.errors import DistillationError
from anti_scaling.export.publish import publish_model
from anti_scaling.scripts.zoo import main
from anti_scaling.zoo import install_zoo_finder, zoo_path
from anti_scaling.zoo.download import MARKER, model_dir
from anti_scaling.zoo.manifest import ENV_MANIFEST, ENV_MIRROR, read_manifest

PROMPTS = ['1 2 3 4', '5 6 7', '9 8 1 2', '3']


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer transformer/generator trained for 60 steps on a reversal task."""
    from parlai.scripts.train_model import TrainModel

    root = tmp_path_factory.mktemp('tiny')
    model_file = str(root / 'model' / 'model')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PARLAI_DATAPATH', str(root))
        TrainModel.main(
            task='integration_tests:reverse',
            model='transformer/generator',
            model_file=model_file,
            n_layers=1,
            embedding_size=16,
            ffn_size=32,
            n_heads=2,
            n_positions=32,
            batchsize=8,
            max_train_steps=60,
            optimizer='adam',
            learningrate=1e-2,
            lr_scheduler='none',
            skip_generation=True,
            datapath=str(root),
            validation_max_exs=8,
            short_final_eval=True,
        )
    return model_file


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for name in (ENV_MIRROR, ENV_MANIFEST, *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('PARLAI_DATAPATH', str(tmp_path / 'data'))


def generations(model_file: str) -> list[str]:
    from parlai.core.agents import create_agent_from_model_file

    agent = create_agent_from_model_file(
        model_file,
        {
            'skip_generation': False,
            'inference': 'greedy',
            'beam_size': 1,
            'datatype': 'valid',
            'no_cuda': True,
            'label_truncate': 12,  # generation length; n_positions is in the .opt
        },
    )
    replies = []
    for text in PROMPTS:
        agent.observe({'text': text, 'episode_done': True})
        replies.append(agent.act()['text'])
    return replies


def test_publish_serve_download_load_generate(tiny_model, tmp_path, monkeypatch):
    from parlai.core.build_data import modelzoo_path

    report = tmp_path / 'report.json'
    report.write_text(json.dumps({'ppl': 8.0, 'speedup': 1.0}))
    out = tmp_path / 'dist'
    result = publish_model(
        tiny_model,
        'tiny',
        str(out),
        teacher='zoo:blender/blender_3B/model',
        report=str(report),
    )
    entry = read_manifest(result.manifest)['tiny']
    assert entry.report == {'ppl': 8.0, 'speedup': 1.0}
    assert entry.teacher == 'zoo:blender/blender_3B/model'
    assert entry.agent == 'transformer/generator'
    with tarfile.open(result.archive) as tar:
        assert sorted(tar.getnames()) == [
            'model',
            'model.dict',
            'model.dict.opt',
            'model.opt',
        ]
        opt = json.load(tar.extractfile('model.opt'))
    assert opt['model_file'] is None and opt['dict_file'] is None
    assert 'datapath' not in opt and 'override' not in opt

    datapath = str(tmp_path / 'data')
    with FileServer() as server:
        with open(result.archive, 'rb') as fh:
            server.files['tiny.tar.gz'] = fh.read()
        monkeypatch.setenv(ENV_MANIFEST, result.manifest)
        monkeypatch.setenv(ENV_MIRROR, server.url)
        install_zoo_finder()
        path = modelzoo_path(datapath, zoo_path('tiny'))
        assert server.requests == [('tiny.tar.gz', None)]
    assert path == os.path.join(model_dir(datapath, 'tiny'), 'model')
    assert os.path.isfile(os.path.join(model_dir(datapath, 'tiny'), MARKER))
    original = generations(tiny_model)
    assert len(set(original)) > 1  # the model answers differently: a real check
    assert generations(path) == original
    # Installed and verified: ParlAI resolves it again with the server gone.
    assert modelzoo_path(datapath, zoo_path('tiny', 'model.dict')) == path + '.dict'


def test_publishing_is_reproducible(tiny_model, tmp_path):
    first = publish_model(tiny_model, 'tiny', str(tmp_path / 'a'))
    second = publish_model(tiny_model, 'tiny', str(tmp_path / 'b'))
    assert first.model.files[0].sha256 == second.model.files[0].sha256
    assert first.model.files[0].size == os.path.getsize(first.archive)


def test_cli_publish_and_download(tiny_model, tmp_path, capsys):
    out = str(tmp_path / 'dist')
    shared = str(tmp_path / 'team.json')
    assert (
        main(
            [
                'publish',
                tiny_model,
                '--name',
                'tiny-cli',
                '--output-dir',
                out,
                '--recipe',
                'blender_400Mdistill',
                '--merge-into',
                shared,
            ]
        )
        == 0
    )
    assert read_manifest(shared)['tiny-cli'].recipe == 'blender_400Mdistill'
    capsys.readouterr()
    datapath = str(tmp_path / 'data')
    with FileServer() as server:
        with open(os.path.join(out, 'tiny-cli.tar.gz'), 'rb') as fh:
            server.files['tiny-cli.tar.gz'] = fh.read()
        status = main(
            [
                'download',
                'tiny-cli',
                '--manifest',
                shared,
                '--mirror',
                server.url,
                '-dp',
                datapath,
            ]
        )
    assert status == 0
    printed = capsys.readouterr().out.strip()
    assert printed == os.path.join(model_dir(datapath, 'tiny-cli'), 'model')
    assert main(['verify', 'tiny-cli', '-dp', datapath]) == 0


def test_teacher_model_accepts_a_zoo_name(tiny_model, tmp_path, monkeypatch):
    """Our teacher loader resolves zoo:anti_scaling/NAME/model through ParlAI."""
    from parlai.agents.transformer.transformer import TransformerGeneratorAgent

    from anti_scaling.agents.teacher import load_teacher

    result = publish_model(tiny_model, 'tiny-teacher', str(tmp_path / 'dist'))
    monkeypatch.setenv(ENV_MANIFEST, result.manifest)  # served from its directory
    install_zoo_finder()
    teacher = load_teacher(
        zoo_path('tiny-teacher'),
        datapath=str(tmp_path / 'data'),
        expected=TransformerGeneratorAgent,
    )
    assert teacher.path == os.path.join(
        model_dir(str(tmp_path / 'data'), 'tiny-teacher'), 'model'
    )
    assert teacher.n_decoder_layers == 1


def test_unknown_zoo_name_through_parlai_lists_known_names(tmp_path):
    from parlai.core.build_data import modelzoo_path

    install_zoo_finder()
    with pytest.raises(
        DistillationError, match="unknown zoo model 'nosuch'.*blender_3B"
    ):
        modelzoo_path(str(tmp_path / 'data'), zoo_path('nosuch'))


def test_publish_refuses_an_unstripped_student(tiny_model, tmp_path):
    import shutil

    copy = tmp_path / 'student'
    copy.mkdir()
    for suffix in ('', '.opt', '.dict'):
        shutil.copy(tiny_model + suffix, str(copy / 'model') + suffix)
    opt = json.loads((copy / 'model.opt').read_text())
    opt['model'] = 'anti_scaling.distillation:DistillTransformerAgent'
    opt['teacher_model'] = '/somewhere/teacher'
    (copy / 'model.opt').write_text(json.dumps(opt))
    with pytest.raises(DistillationError, match='is not stripped.*remove_projection'):
        publish_model(str(copy / 'model'), 'bad', str(tmp_path / 'dist'))
    assert not (tmp_path / 'dist' / 'bad.tar.gz').exists()


@pytest.mark.parametrize(
    'kwargs, problem',
    [
        ({'recipe': 'nosuch'}, "unknown recipe 'nosuch'.*blender_1Bdistill"),
        ({'name': 'a.b'}, 'bad model name'),
        ({'report': '/nonexistent/report.json'}, 'report not found'),
    ],
)
def test_publish_bad_input(tiny_model, tmp_path, kwargs, problem):
    args = {'name': 'tiny', **kwargs}
    with pytest.raises(DistillationError, match=problem):
        publish_model(tiny_model, output_dir=str(tmp_path / 'dist'), **args)
    assert not (tmp_path / 'dist').exists()


def test_distilling_from_a_zoo_teacher(tiny_model, tmp_path, monkeypatch):
    """`--teacher-model zoo:anti_scaling/NAME/model` through a real training run."""
    from helpers import train

    result = publish_model(tiny_model, 'zoo-teacher', str(tmp_path / 'dist'))
    monkeypatch.setenv(ENV_MANIFEST, result.manifest)
    datapath = str(tmp_path / 'data')
    student = str(tmp_path / 'student' / 'model')
    train(
        datapath,
        model='anti_scaling.distillation:DistillNarrowTransformerAgent',
        teacher_model=zoo_path('zoo-teacher'),
        model_file=student,
        embedding_size=8,
        n_heads=2,
        pred_loss_coeff=1.0,
        max_train_steps=4,
        batchsize=4,
    )
    installed = os.path.join(model_dir(datapath, 'zoo-teacher'), 'model')
    with open(student + '.dict') as a, open(installed + '.dict') as b:
        assert a.read() == b.read()
    with open(student + '.opt') as fh:
        assert json.load(fh)['teacher_model'] == zoo_path('zoo-teacher')
