"""Verified downloads from a real HTTP server on 127.0.0.1 (started per test)."""

from __future__ import annotations

import json
import os
import random

import pytest
from zoo_support import (
    PROXY_VARIABLES,
    FileServer,
    model_entry,
    sha256,
    tar_gz,
    write_manifest,
)

from anti_scaling.errors import DistillationError
from anti_scaling.zoo import download as dl
from anti_scaling.zoo.manifest import ENV_MANIFEST, ENV_MIRROR

FILES = {
    'model': random.Random(0).randbytes(50_000),
    'model.opt': b'{"model": "transformer/generator"}',
}
ARCHIVE = tar_gz(FILES)
FAST = {'timeout': 5.0, 'backoff': 0.0, 'log': lambda message: None}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No user zoo settings, no proxies, ParlAI data under tmp_path."""
    for name in (ENV_MIRROR, ENV_MANIFEST, *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('PARLAI_DATAPATH', str(tmp_path / 'data'))


@pytest.fixture
def server():
    with FileServer() as running:
        running.files['zoo/tiny.tar.gz'] = ARCHIVE
        yield running


def manifest(tmp_path, *models, **top) -> str:
    return write_manifest(str(tmp_path / 'user.json'), list(models), **top)


def leftovers(datapath) -> list[str]:
    """Everything under the zoo directory except lock files."""
    root = dl.models_root(str(datapath))
    found = []
    for base, _dirs, names in os.walk(root):
        found += [os.path.join(base, n) for n in names if not n.endswith('.lock')]
    found += [
        os.path.join(root, d)
        for d in (os.listdir(root) if os.path.isdir(root) else [])
        if os.path.isdir(os.path.join(root, d))
    ]
    return found


def test_good_download_installs_verified_model(server, tmp_path):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    datapath = tmp_path / 'data'
    path = dl.fetch_model_file(
        'tiny', str(datapath), mirror=server.url, manifests=[user], **FAST
    )
    assert path == str(datapath / 'models' / 'anti_scaling' / 'tiny' / 'model')
    with open(path, 'rb') as fh:
        assert fh.read() == FILES['model']
    marker = dl.read_marker(os.path.dirname(path))
    assert marker['sources'] == [['zoo/tiny.tar.gz', sha256(ARCHIVE), len(ARCHIVE)]]
    assert marker['files']['model']['sha256'] == sha256(FILES['model'])
    assert dl.verify_installed(os.path.dirname(path)) == []
    # Nothing but the installed model is left (no partial files, no staging).
    assert sorted(os.listdir(dl.models_root(str(datapath)))) == ['.tiny.lock', 'tiny']
    # A second call finds the verified install and sends no request.
    server.requests.clear()
    assert (
        dl.fetch_model_file(
            'tiny', str(datapath), mirror=server.url, manifests=[user], **FAST
        )
        == path
    )
    assert server.requests == []


def test_truncated_file_is_refused_and_nothing_is_left(server, tmp_path):
    server.files['zoo/tiny.tar.gz'] = ARCHIVE[: len(ARCHIVE) // 2]
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError, match='is truncated') as err:
        dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    assert '\n' not in str(err.value)
    assert 'nothing was installed' in str(err.value)
    assert leftovers(tmp_path / 'data') == []


def test_wrong_checksum_is_refused_and_nothing_is_left(server, tmp_path):
    wrong = model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE, file={'sha256': '0' * 64})
    user = manifest(tmp_path, wrong)
    with pytest.raises(DistillationError, match='checksum mismatch') as err:
        dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    assert '\n' not in str(err.value)
    assert leftovers(tmp_path / 'data') == []
    # A later run does not mistake anything for a good model.
    assert dl.installed_model_file(str(tmp_path / 'data'), 'tiny') is None


def test_failed_download_keeps_an_earlier_install(server, tmp_path):
    datapath = str(tmp_path / 'data')
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    path = dl.fetch_model_file(
        'tiny', datapath, mirror=server.url, manifests=[user], **FAST
    )
    new_archive = tar_gz({**FILES, 'model': b'new weights'})
    server.files['zoo/tiny.tar.gz'] = new_archive
    manifest(
        tmp_path,
        model_entry('tiny', 'zoo/tiny.tar.gz', new_archive, file={'sha256': '1' * 64}),
    )
    with pytest.raises(DistillationError, match='checksum mismatch'):
        dl.fetch_model('tiny', datapath, mirror=server.url, manifests=[user], **FAST)
    with open(path, 'rb') as fh:
        assert fh.read() == FILES['model']
    # The new version, correctly listed, replaces the old one.
    manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', new_archive))
    dl.fetch_model('tiny', datapath, mirror=server.url, manifests=[user], **FAST)
    with open(path, 'rb') as fh:
        assert fh.read() == b'new weights'
    assert not [
        n for n in os.listdir(dl.models_root(datapath)) if n.endswith(('.tmp', '.old'))
    ]


def test_interrupted_transfer_is_resumed_with_range(server, tmp_path):
    server.rules['zoo/tiny.tar.gz'] = {'drop_after': 1000}
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    path = dl.fetch_model_file('tiny', mirror=server.url, manifests=[user], **FAST)
    with open(path, 'rb') as fh:
        assert fh.read() == FILES['model']
    assert server.requests == [
        ('zoo/tiny.tar.gz', None),
        ('zoo/tiny.tar.gz', 'bytes=1000-'),
    ]


def test_interrupted_run_is_resumed_by_the_next_run(server, tmp_path):
    server.rules['zoo/tiny.tar.gz'] = {'drop_after': 1000}
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError, match='run the same command again to resume'):
        dl.fetch_model('tiny', mirror=server.url, manifests=[user], retries=0, **FAST)
    datapath = str(tmp_path / 'data')
    assert not os.path.exists(dl.model_dir(datapath, 'tiny'))
    assert dl.installed_model_file(datapath, 'tiny') is None
    dl.fetch_model('tiny', mirror=server.url, manifests=[user], retries=0, **FAST)
    assert server.requests[-1] == ('zoo/tiny.tar.gz', 'bytes=1000-')
    assert dl.verify_installed(dl.model_dir(datapath, 'tiny')) == []


def test_partial_file_restarts_when_the_server_ignores_range(server, tmp_path):
    entry = model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE)
    user = manifest(tmp_path, entry)
    downloads = os.path.join(dl.models_root(str(tmp_path / 'data')), '.tiny.download')
    os.makedirs(downloads)
    part = os.path.join(downloads, f'{sha256(ARCHIVE)[:16]}-tiny.tar.gz.part')
    with open(part, 'wb') as fh:
        fh.write(b'garbage that is not the start of the file')
    server.rules['zoo/tiny.tar.gz'] = {'ignore_range': True}
    dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    assert server.requests[0][1] is not None  # it asked to resume...
    assert dl.verify_installed(dl.model_dir(str(tmp_path / 'data'), 'tiny')) == []


def test_mirror_from_environment_variable(server, tmp_path, monkeypatch):
    entry = model_entry(
        'tiny', 'zoo/tiny.tar.gz', ARCHIVE, base_url='http://127.0.0.1:9/unused/'
    )
    monkeypatch.setenv(ENV_MANIFEST, manifest(tmp_path, entry))
    monkeypatch.setenv(ENV_MIRROR, server.url)
    path = dl.fetch_model_file('tiny', **FAST)
    assert os.path.isfile(path)
    assert server.requests == [('zoo/tiny.tar.gz', None)]


def test_manifest_directory_is_the_default_base(tmp_path):
    """A published manifest next to its archive works without any server."""
    (tmp_path / 'zoo').mkdir()
    (tmp_path / 'zoo' / 'tiny.tar.gz').write_bytes(ARCHIVE)
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    assert os.path.isfile(dl.fetch_model_file('tiny', manifests=[user], **FAST))


def test_http_error_is_one_line(server, tmp_path):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/missing.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError, match=r'HTTP 404 .*missing\.tar\.gz'):
        dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    assert leftovers(tmp_path / 'data') == []


def test_unknown_model_lists_known_names(tmp_path):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError) as err:
        dl.fetch_model('nosuch', manifests=[user], **FAST)
    message = str(err.value)
    assert "unknown zoo model 'nosuch'" in message
    for name in ('tiny', 'blender_3B', 'blender_400Mdistill', 'bart_large'):
        assert name in message


def test_model_without_published_checksum_is_not_downloaded(tmp_path):
    """The packaged ParlAI entries have no SHA-256: refused before any network use."""
    with pytest.raises(DistillationError, match='zoo:blender/blender_3B/model'):
        dl.fetch_model('blender_3B', **FAST)
    assert leftovers(tmp_path / 'data') == []


def test_archive_without_model_file_is_refused(server, tmp_path):
    archive = tar_gz({'readme.txt': b'no model here'})
    server.files['zoo/empty.tar.gz'] = archive
    user = manifest(tmp_path, model_entry('empty', 'zoo/empty.tar.gz', archive))
    with pytest.raises(DistillationError, match='do not contain model, model.opt'):
        dl.fetch_model('empty', mirror=server.url, manifests=[user], **FAST)
    assert leftovers(tmp_path / 'data') == []


def test_archive_escaping_its_directory_is_refused(server, tmp_path):
    archive = tar_gz({'../evil': b'x', **FILES})
    server.files['zoo/evil.tar.gz'] = archive
    user = manifest(tmp_path, model_entry('evil', 'zoo/evil.tar.gz', archive))
    with pytest.raises(DistillationError, match='cannot be unpacked'):
        dl.fetch_model('evil', mirror=server.url, manifests=[user], **FAST)
    assert not (tmp_path / 'data' / 'models' / 'evil').exists()
    assert leftovers(tmp_path / 'data') == []


@pytest.mark.parametrize(
    'change, problem',
    [
        ({'file': {}, 'description': 'x', 'name': 'a.b'}, 'no dots'),
        ({'file': {'url': 'http://elsewhere/x.tar.gz'}}, 'must be relative'),
        ({'file': {'sha256': 'abc'}}, '64 lowercase hex'),
        ({'kind': 'oracle'}, 'kind must be'),
    ],
)
def test_bad_manifest_is_reported(tmp_path, change, problem):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE, **change))
    with pytest.raises(DistillationError, match=problem) as err:
        dl.fetch_model('tiny', manifests=[user], **FAST)
    assert str(err.value).startswith(f'bad zoo manifest {user}')


def test_installed_model_survives_losing_its_manifest(server, tmp_path):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    path = dl.fetch_model_file('tiny', mirror=server.url, manifests=[user], **FAST)
    assert dl.fetch_model_file('tiny', **FAST) == path


def test_damaged_install_is_downloaded_again(server, tmp_path):
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    path = dl.fetch_model_file('tiny', mirror=server.url, manifests=[user], **FAST)
    with open(path, 'ab') as fh:
        fh.write(b'!')
    assert not dl.installed(os.path.dirname(path))
    dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    with open(path, 'rb') as fh:
        assert fh.read() == FILES['model']
    with open(os.path.join(os.path.dirname(path), dl.MARKER)) as fh:
        assert json.load(fh)['name'] == 'tiny'


def test_too_long_file_is_cut_short_and_refused(server, tmp_path):
    server.files['zoo/tiny.tar.gz'] = ARCHIVE + b'\0' * 3_000_000
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError, match='is too long'):
        dl.fetch_model('tiny', mirror=server.url, manifests=[user], **FAST)
    assert leftovers(tmp_path / 'data') == []


def test_unreachable_mirror_leaves_nothing(tmp_path):
    with FileServer() as stopped:
        url = stopped.url  # a loopback port that nothing listens on once closed
    user = manifest(tmp_path, model_entry('tiny', 'zoo/tiny.tar.gz', ARCHIVE))
    with pytest.raises(DistillationError, match='nothing was downloaded'):
        dl.fetch_model('tiny', mirror=url, manifests=[user], retries=1, **FAST)
    assert leftovers(tmp_path / 'data') == []


def test_name_cannot_point_outside_the_zoo(tmp_path):
    outside = tmp_path / 'data' / 'models' / 'x'
    outside.mkdir(parents=True)
    with pytest.raises(DistillationError, match="unknown zoo model '../x'"):
        dl.fetch_model('../x', **FAST)
