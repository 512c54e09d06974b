"""The demo's command line refuses bad input in one line, before any work, and
never deletes a folder it did not write."""

import os

import pytest

from anti_scaling.scripts import demo


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--generation-examples', '2'], '--generation-examples 2: give more than 2'),
        (['--eval-examples', '0'], '--eval-examples 0: give at least 1'),
        (['--minutes', '0'], '--minutes 0.0: give a positive budget'),
    ],
)
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / 'demo'
    assert demo.main(['--out', str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_a_folder_the_demo_did_not_write_is_kept(tmp_path, capsys):
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'precious.txt').write_text('keep me')
    assert demo.main(['--out', str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'was not written by the demo' in err[0]
    assert (out / 'precious.txt').read_text() == 'keep me'
    assert os.listdir(out) == ['precious.txt']
