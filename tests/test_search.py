"""The search end to end on a tiny teacher: trials, outputs, resume, pruning, bad input."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3

import optuna  # the search extra (make installs it)
import pytest
from helpers import TASK, make_agent

from anti_scaling.agents.recipe_files import resolve_recipe as get_recipe
from anti_scaling.scripts.search import main
from anti_scaling.search import trial as trial_module
from anti_scaling.search.settings import SearchSettings
from anti_scaling.search.study import prepare_search, run_search

FAST = [
    '--steps',
    '10',
    '--valid-every',
    '5',
    '--valid-examples',
    '16',
    '--quality-examples',
    '32',
    '--timing-examples',
    '4',
    '--warmup',
    '1',
    '--threads',
    '1',
    '--quiet',
]
#: Wide students of 1-2 encoder and decoder layers, two objectives.
SPACE = [
    '--param',
    'kind=wide',
    '--param',
    'n_encoder_layers=1:2',
    '--param',
    'n_decoder_layers=1:2',
    '--param',
    'pred_loss_type=kl,jsd',
]


def search_args(teacher_file, datapath, out, trials, *extra):
    return [
        '--teacher',
        teacher_file,
        '-t',
        TASK,
        '--out',
        str(out),
        '--trials',
        str(trials),
        '-dp',
        datapath,
        '--seed',
        '0',
        '--startup-trials',
        '2',
        '--no-prune',
        *FAST,
        *SPACE,
        *extra,
    ]


def stored_trials(db):
    """(number, state, values) of every trial, read from the SQLite file itself."""
    with sqlite3.connect(db) as con:
        rows = con.execute('SELECT number, state, trial_id FROM trials ORDER BY number')
        out = []
        for number, state, trial_id in rows.fetchall():
            values = con.execute(
                'SELECT value FROM trial_values WHERE trial_id = ? ORDER BY objective',
                (trial_id,),
            ).fetchall()
            out.append((number, state, [v[0] for v in values]))
    return out


@pytest.fixture(scope='module')
def searched(teacher_file, datapath, tmp_path_factory):
    """A search interrupted in its second trial, then resumed by the same command."""
    out = tmp_path_factory.mktemp('search')
    args = search_args(teacher_file, datapath, out, 3)
    calls = []
    measure = trial_module.measure_student

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial_module, 'measure_student', interrupt_second)
        first_rc = main(args)
    db = os.path.join(out, 'study.db')
    before = stored_trials(db)
    with open(os.path.join(out, 'trials', '0000', 'train.log')) as fh:
        log_before = fh.read()
    second_rc = main(args)
    with open(os.path.join(out, 'trials.json')) as fh:
        data = json.load(fh)
    return {
        'out': str(out),
        'args': args,
        'rc': (first_rc, second_rc),
        'before': before,
        'after': stored_trials(db),
        'log_before': log_before,
        'data': data,
    }


def test_interrupted_search_resumes_without_overwriting(searched):
    assert searched['rc'] == (130, 0)
    before, after = searched['before'], searched['after']
    assert [(n, s) for n, s, _ in before] == [(0, 'COMPLETE'), (1, 'FAIL')]
    # The same rows are still there, untouched, and the study grew to 3 finished.
    assert after[:2] == before
    assert [s for _, s, _ in after[2:]] == ['COMPLETE', 'COMPLETE']
    with open(os.path.join(searched['out'], 'trials', '0000', 'train.log')) as fh:
        assert fh.read() == searched['log_before']
    trials = searched['data']['trials']
    assert trials[1]['state'] == 'fail' and trials[1]['error'] == 'interrupted'


def test_a_finished_study_runs_nothing_more(searched, capsys):
    assert main(searched['args']) == 0
    assert 'already has 3 finished trials' in capsys.readouterr().out
    assert stored_trials(os.path.join(searched['out'], 'study.db')) == searched['after']


def test_every_trial_is_in_the_json(searched):
    data = searched['data']
    assert data['study'] == 'search' and data['counts']['complete'] == 3
    assert [o['name'] for o in data['objectives']] == ['token_acc', 'speedup']
    assert (
        data['teacher']['token_acc'] > 0 and data['teacher']['quality_examples'] == 32
    )
    by_number = {t['number']: t for t in data['trials']}
    for t, (number, _, values) in zip(data['trials'], searched['after']):
        assert t['number'] == number
        if t['state'] != 'complete':
            continue
        if t['repeat_of'] is not None:
            # the sampler drew a finished point again: its outcome, no training
            earlier = by_number[t['repeat_of']]
            assert t['params'] == earlier['params'] and t['values'] == earlier['values']
            assert t['metrics'] == earlier['metrics']
            assert not os.path.exists(
                os.path.join(searched['out'], 'trials', f'{number:04d}')
            )
            continue
        m = t['metrics']
        # The objectives are the measured figures, as stored by optuna.
        assert values == pytest.approx([m['token_acc'], m['speedup']])
        assert 0 < m['token_acc'] <= 1 and m['ppl'] > 1 and m['speedup'] > 0
        assert m['retained_token_acc'] == pytest.approx(
            m['token_acc'] / data['teacher']['token_acc']
        )
        g = m['generation']
        assert g['student']['replies'] == g['teacher']['replies'] == 4
        assert m['speedup'] == pytest.approx(
            g['teacher']['mean_s_per_reply'] / g['student']['mean_s_per_reply']
        )
        assert [p['step'] for p in t['curve']] == [5]
        assert t['student']['kind'] == 'wide'
        assert t['student']['options']['pred_loss_type'] in ('kl', 'jsd')
        assert '--max-train-steps 10' in t['command']
        # models are not kept unless asked: only the log is left
        folder = os.path.join(searched['out'], 'trials', f'{number:04d}')
        assert os.listdir(folder) == ['train.log']
        with open(os.path.join(folder, 'train.log')) as fh:
            log = fh.read()  # ParlAI's own log of the trial
        assert 'training...' in log and 'max_train_steps elapsed:10' in log


def test_front_markdown_plot_and_recipes(searched):
    data, out = searched['data'], searched['out']
    done = [t for t in data['trials'] if t['state'] == 'complete']

    def dominated(t):
        return any(
            o['values'][0] >= t['values'][0]
            and o['values'][1] >= t['values'][1]
            and o['values'] != t['values']
            for o in done
        )

    assert sorted(data['front']) == sorted(
        t['number'] for t in done if not dominated(t)
    )
    with open(os.path.join(out, 'pareto.md')) as fh:
        text = fh.read()
    for number in data['front']:
        assert f'### Trial {number}' in text
        assert data['commands'][str(number)]['with_recipe'] in text
    import matplotlib.image

    image = matplotlib.image.imread(os.path.join(out, 'pareto.png'))
    assert image.shape[0] > 200 and image.shape[1] > 200
    recipes = sorted(os.listdir(os.path.join(out, 'recipes')))
    assert recipes == sorted(f'trial-{n:04d}.json' for n in data['front'])
    by_number = {t['number']: t for t in data['trials']}
    for number in data['front']:
        recipe = get_recipe(data['recipes'][str(number)])
        assert recipe.options == by_number[number]['student']['options']
        assert recipe.agent == by_number[number]['student']['agent']
        assert recipe.teacher_shape['n_decoder_layers'] == 4


def test_recipe_file_and_full_command_train_the_same_student(
    searched, teacher_file, datapath, tmp_path
):
    from parlai.scripts.train_model import setup_args

    data = searched['data']
    number = data['front'][0]
    student = {t['number']: t for t in data['trials']}[number]['student']
    commands = data['commands'][str(number)]
    with_recipe = make_agent(
        [
            '-m',
            student['agent'],
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'r' / 'model'),
            '--recipe',
            data['recipes'][str(number)],
        ],
        datapath,
    )
    for key, value in student['options'].items():
        assert with_recipe.opt[key] == value, key
    coeffs = {t.metric: t.coeff for t in with_recipe.distill_plan.terms}
    plan = with_recipe.distill_plan
    assert plan.prediction.pairs[0].objective == student['options']['pred_loss_type']
    if student['options']['hidden_loss_coeff']:
        assert coeffs['dec_hid_loss'] == student['options']['hidden_loss_coeff']
    # The written-out command sets the same options as the recipe.
    written = setup_args().parse_args(shlex.split(commands['written_out'])[2:])
    for key, value in student['options'].items():
        assert written[key] == value, key
    assert written['max_train_steps'] == 10000


def test_pruning_stops_an_obviously_worse_trial(teacher_file, datapath, tmp_path):
    # A narrow student of the wide one's very shape, from scratch, against the
    # wide one initialised from the teacher: same cost, far worse at step 5.
    fixed = [
        'kind=wide,narrow',
        'n_encoder_layers=1',
        'n_decoder_layers=1',
        'embedding_size=32',
        'n_heads=4',
        'ffn_size=64',
        'pred_loss_coeff=1',
        'hidden_loss_coeff=0',
        'embedding_loss_coeff=0',
        'self_attn_loss_coeff=0',
        'enc_dec_attn_loss_coeff=0',
        'distill_temperature=1',
        'pred_loss_type=kl',
    ]
    settings = SearchSettings(
        teacher=teacher_file,
        task=TASK,
        out=str(tmp_path / 'prune'),
        trials=2,
        datapath=datapath,
        params=fixed,
        steps=10,
        valid_every=5,
        valid_examples=16,
        quality_examples=32,
        timing_examples=4,
        warmup=1,
        progress=False,
        threads=1,
    )
    search = prepare_search(settings)
    search.study.enqueue_trial({'kind': 'wide'})
    search.study.enqueue_trial({'kind': 'narrow'})
    run_search(search, echo=lambda line: None)
    wide, narrow = search.study.trials
    assert wide.state == optuna.trial.TrialState.COMPLETE
    assert narrow.state == optuna.trial.TrialState.PRUNED
    assert narrow.user_attrs['cost'] == wide.user_attrs['cost']
    ours = narrow.user_attrs['curve'][0]['token_acc']
    theirs = wide.user_attrs['curve'][0]['token_acc']
    assert ours < 0.95 * theirs
    assert narrow.user_attrs['pruned'] == {
        'step': 5,
        'reason': f'token_acc {ours:.4g} at step 5 < 0.95 x {theirs:.4g} of trial 0 '
        '(as cheap or cheaper)',
    }
    with open(os.path.join(settings.out, 'trials.json')) as fh:
        assert json.load(fh)['counts']['pruned'] == 1


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith('anti_scaling: error: ') and '\n' not in err, err
    return err


def test_bad_input_is_one_line_before_any_trial(
    teacher_file, datapath, tmp_path, capsys
):
    out = tmp_path / 'bad'

    def run(*extra, teacher=teacher_file, trials=1):
        return main(search_args(teacher, datapath, out, trials, *extra))

    err = one_line_error(capsys, run(teacher=str(tmp_path / 'missing' / 'model')))
    assert 'model file not found' in err
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'model').write_bytes(b'not a checkpoint')
    (broken / 'model.opt').write_text(json.dumps({'model': 'transformer/generator'}))
    err = one_line_error(capsys, run(teacher=str(broken / 'model')))
    assert 'could not load' in err
    err = one_line_error(capsys, run('--param', 'pred_loss_type='))
    assert 'pred_loss_type: no value given' in err
    space = tmp_path / 'space.yaml'
    space.write_text('pred_loss_type: []\n')
    err = one_line_error(capsys, run('--space', str(space)))
    assert 'pred_loss_type has no choices' in err
    err = one_line_error(capsys, run('--param', 'n_decoder_layers=1:9'))
    assert "at most the teacher's 4 decoder layers" in err
    err = one_line_error(capsys, run('--storage', f'sqlite:///{tmp_path}/no/such/x.db'))
    assert 'cannot open it' in err
    err = one_line_error(capsys, run('--storage', 'nodb://'))
    assert '--storage nodb://: cannot open it' in err
    err = one_line_error(capsys, run('--train-args', '--max-train-steps 5'))
    assert 'must not set --max-train-steps' in err
    assert not out.exists()  # no study, no output folder


def test_a_study_with_other_settings_is_refused(searched, capsys):
    before = stored_trials(os.path.join(searched['out'], 'study.db'))
    args = [a if a != '10' else '20' for a in searched['args']]  # --steps 20
    err = one_line_error(capsys, main(args))
    assert "study 'search'" in err and "steps: 10 there, 20 now" in err
    assert stored_trials(os.path.join(searched['out'], 'study.db')) == before
