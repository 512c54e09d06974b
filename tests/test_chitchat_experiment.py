"""The chitchat experiment's recipe: the commands it runs (dry run, nothing trained)."""

from __future__ import annotations

from anti_scaling.scripts.chitchat_experiment import STUDENTS, main, training_order


def test_dry_run_prints_every_step(tmp_path, capsys):
    out = tmp_path / 'chitchat'
    assert main(['all', '--out', str(out), '--dry-run', '--steps', '50']) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split(']')[0][1:] for line in lines if line.startswith('[')]
    expected = ['dict', 'teacher', 'teacher-valid']
    for student in training_order():
        expected.append(student.name)
        if student.strip:
            expected.append(student.name + '-strip')
    assert steps == [*expected, 'report']
    text = '\n'.join(lines)
    assert '--max-train-time 2520' in text and '--max-train-steps 50' in text
    assert text.count('--teacher-model') == len(STUDENTS)
    assert '-dp ' + str(tmp_path / 'parlai_data') in text
    assert not out.exists()  # a dry run writes nothing
