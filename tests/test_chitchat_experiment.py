"""The chitchat experiment's recipe: the commands it runs (dry run, nothing trained)."""

from __future__ import annotations

from experiments.chitchat_experiment import STUDENTS, main, training_order


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


# Our recipes are the experiment's students: the same shape and coefficients.
RECIPE_STUDENTS = {
    'chitchat_wide_2x2': 'C-wide',
    'chitchat_wide_2x1': 'A-wide',
    'chitchat_narrow_d128': 'B-narrow',
}


def _flags(argv):
    """``--some-flag value`` pairs as option names and numbers."""
    pairs = zip(argv[::2], argv[1::2])
    return {flag[2:].replace('-', '_'): float(value) for flag, value in pairs}


def test_chitchat_recipes_are_the_experiments_students():
    from anti_scaling.agents.layer_maps import uniform_layer_map
    from anti_scaling.zoo.recipes import RECIPES

    students = {s.name: s for s in STUDENTS}
    for name, student_name in RECIPE_STUDENTS.items():
        recipe, student = RECIPES[name], students[student_name]
        assert recipe.agent == student.model
        flags = _flags([*student.arch, *student.loss])
        options = dict(recipe.options)
        assert options.pop('distill_temperature') == 1.0  # the flag's default
        for stack in ('encoder', 'decoder'):
            # the experiment used the default (uniform) layer maps
            layers = uniform_layer_map(
                int(options[f'n_{stack}_layers']),
                recipe.teacher_shape[f'n_{stack}_layers'],
            )
            assert options.pop(f'{stack}_layer_map') == ','.join(map(str, layers))
        for key, value in flags.items():
            assert float(options.pop(key)) == value, (name, key)
        # what else the recipe sets, the experiment's student inherited
        for key, value in options.items():
            assert recipe.teacher_shape[key] == value, (name, key)


def test_teacher_trains_until_patience_runs_out_across_sittings(
    tmp_path, capsys, monkeypatch
):
    """Each sitting adds --teacher-minutes to the checkpoint's training time; the
    teacher is done once its checkpoint says patience ran out."""
    import json
    import os

    from experiments import chitchat_experiment as ce

    out = tmp_path / 'chitchat'
    sittings = iter([(2520.0, 1), (5040.0, 4)])
    commands = []

    def fake_run(self, step, argv):
        commands.append((step, list(argv)))
        os.makedirs(out / 'logs', exist_ok=True)
        if step == 'teacher':
            seconds, impatience = next(sittings)
            os.makedirs(out / 'teacher', exist_ok=True)
            with open(
                str(out / 'teacher' / 'model') + '.checkpoint.trainstats', 'w'
            ) as fh:
                json.dump({'train_time': seconds, 'impatience': impatience}, fh)
        with open(self.marker(step), 'w') as fh:
            fh.write('done\n')

    monkeypatch.setattr(ce.Runner, 'run', fake_run)
    monkeypatch.setattr(ce, 'summarize_teacher', lambda layout: None)
    args = ['all', '--out', str(out), '--teacher-patience', '4']

    assert main(args) == 0
    assert 'not converged after 42 min of training (1 of 4' in capsys.readouterr().out
    assert [s for s, _ in commands] == ['dict', 'teacher']  # no student started
    argv = commands[-1][1]
    assert argv[argv.index('--max-train-time') + 1] == '2520'
    assert argv[argv.index('--validation-patience') + 1] == '4'
    assert not os.path.exists(out / 'logs' / 'teacher.done')

    commands.clear()
    assert main(['teacher', *args[1:]]) == 0
    assert [s for s, _ in commands] == ['teacher', 'teacher-valid']
    argv = commands[0][1]
    assert argv[argv.index('--max-train-time') + 1] == '5040'  # 42 + 42 minutes
    with open(out / 'logs' / 'teacher.done') as fh:
        assert fh.read() == '5040 s, converged\n'
