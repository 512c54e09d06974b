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
