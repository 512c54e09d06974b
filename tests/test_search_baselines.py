"""The search's no-teacher baselines: the teacher's margin at a student's shape."""

from __future__ import annotations

import json
import math
import os
import shlex

import pytest
from test_search import FAST, one_line_error

from anti_scaling.loss_terms import COEFFICIENTS
from anti_scaling.scripts.search import main
from anti_scaling.search.baselines import baseline_candidate, comparison
from anti_scaling.search.candidate import Candidate

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
WIDE = 'anti_scaling.distillation:DistillTransformerAgent'
SHAPE = {
    'n_encoder_layers': 1,
    'n_decoder_layers': 2,
    'embedding_size': 32,
    'ffn_size': 64,
    'n_heads': 4,
}


def test_the_baseline_is_the_same_shape_without_a_teacher():
    wide = Candidate(
        'wide',
        WIDE,
        dict(SHAPE),
        {
            'n_encoder_layers': 1,
            'n_decoder_layers': 2,
            'pred_loss_coeff': 16.0,
            'hidden_loss_coeff': 1.0,
            'distill_temperature': 2.0,
            'task_loss_coeff': 0.5,
        },
    )
    b = baseline_candidate(wide, 'transformer')
    assert b.agent == NARROW and b.shape == SHAPE
    assert {k: b.options[k] for k in SHAPE} == SHAPE
    assert b.options['task_loss_coeff'] == 1.0
    assert all(b.options[k] == 0.0 for k in COEFFICIENTS if k != 'task_loss_coeff')
    assert 'distill_temperature' not in b.options
    bart = Candidate(
        'narrow', 'anti_scaling.distillation:DistillNarrowBartAgent', SHAPE
    )
    assert baseline_candidate(bart, 'bart').agent.endswith('DistillNarrowBartAgent')


def test_trial_against_its_baseline_by_hand():
    teacher = {'token_acc': 0.50, 'ppl': 10.0}
    trial = {'token_acc': 0.47, 'ppl': 20.0 / 2.0**0.5, 'f1_greedy': 0.26}
    baseline = {
        'shape': '1+2 d32 f64 h4',
        'metrics': {
            'token_acc': 0.46,
            'ppl': 20.0,
            'f1_greedy': 0.20,
            'teacher_f1_greedy': 0.30,
        },
    }
    p = comparison(7, trial, baseline, teacher)
    assert (p['student'], p['baseline']) == ('trial 7', 'baseline 1+2 d32 f64 h4')
    m, g, c = p['teacher_margin'], p['student_gain'], p['gap_closed']
    assert m['token_acc_points'] == pytest.approx(4.0)
    assert m['ppl_ratio'] == pytest.approx(2.0)
    assert m['f1_points'] == pytest.approx({'greedy': 10.0})
    assert g['token_acc_points'] == pytest.approx(1.0)
    assert g['ppl_ratio'] == pytest.approx(2.0**0.5)
    assert g['f1_points'] == pytest.approx({'greedy': 6.0})
    # ln(2^0.5) / ln 2 = 0.5
    assert c['token_acc'] == pytest.approx(0.25) and c['ppl'] == pytest.approx(0.5)
    assert c['f1'] == pytest.approx({'greedy': 0.6})
    assert p['small_margin'] is False and p['warning'] is None
    # A teacher 0.5 points better: a warning naming the pair.
    p = comparison(7, trial, baseline, {'token_acc': 0.465, 'ppl': 10.0})
    assert p['small_margin'] is True
    assert p['warning'].startswith(
        'warning: the teacher is only +0.50 token-accuracy points and x2.000 in '
        'perplexity better than baseline 1+2 d32 f64 h4, trained without a teacher '
        'in the shape of trial 7'
    )


def test_chosen_needs_a_target(teacher_file, datapath, tmp_path, capsys):
    rc = main(
        [
            '--teacher',
            teacher_file,
            '-t',
            'integration_tests:reverse',
            '--out',
            str(tmp_path / 'o'),
            '--trials',
            '1',
            '-dp',
            datapath,
            '--train-baselines',
            'chosen',
        ]
    )
    assert '--train-baselines chosen needs --target-speedup' in one_line_error(
        capsys, rc
    )


def _opt(command: str) -> dict:
    from parlai.scripts.train_model import setup_args

    return setup_args().parse_args(shlex.split(command)[2:])


def test_search_trains_the_front_trials_baseline(
    teacher_file, datapath, tmp_path, capsys
):
    out = tmp_path / 'search'
    args = [
        '--teacher', teacher_file, '-t', 'integration_tests:reverse', '--out', str(out),
        '--trials', '1', '-dp', datapath, '--seed', '0', '--no-prune', *FAST,
        '--param', 'kind=wide', '--param', 'n_encoder_layers=1',
        '--param', 'n_decoder_layers=2', '--param', 'pred_loss_type=kl',
        '--train-baselines', 'front',
    ]  # fmt: skip
    assert main(args) == 0
    console = capsys.readouterr().out
    with open(out / 'trials.json') as fh:
        data = json.load(fh)
    (trial,) = data['trials']
    record = data['baselines']['1+2 d32 f64 h4']
    assert record['student']['agent'] == NARROW
    b, s, t = record['metrics'], trial['metrics'], data['teacher']
    assert 0 < b['token_acc'] <= 1 and b['ppl'] > 1
    assert [p['step'] for p in record['curve']] == [5]
    # Trained like the trial: same budget, optimiser, seed; no teacher term.
    ours, theirs = _opt(record['command']), _opt(trial['command'])
    for key in ('max_train_steps', 'validation_every_n_steps', 'batchsize',
                'optimizer', 'learningrate', 'seed', 'task'):  # fmt: skip
        assert ours[key] == theirs[key], key
    assert ours['pred_loss_coeff'] == 0 and ours['hidden_loss_coeff'] == 0
    assert ours['embedding_size'] == 32 and ours['n_decoder_layers'] == 2
    assert os.listdir(out / 'baselines' / '1+2_d32_f64_h4') == ['train.log']

    # The trial's record holds the figures against it, from the measured values.
    p = trial['baseline']
    m = p['teacher_margin']
    assert m['token_acc_points'] == pytest.approx(
        100 * (t['token_acc'] - b['token_acc'])
    )
    assert m['ppl_ratio'] == pytest.approx(b['ppl'] / t['ppl'])
    assert m['f1_points']['greedy'] == pytest.approx(
        100 * (b['teacher_f1_greedy'] - b['f1_greedy'])
    )
    assert b['teacher_f1_greedy'] == pytest.approx(s['teacher_f1_greedy'])
    g = p['student_gain']
    assert g['token_acc_points'] == pytest.approx(
        100 * (s['token_acc'] - b['token_acc'])
    )
    assert g['ppl_ratio'] == pytest.approx(b['ppl'] / s['ppl'])
    if m['ppl_ratio'] > 1:
        assert p['gap_closed']['ppl'] == pytest.approx(
            math.log(g['ppl_ratio']) / math.log(m['ppl_ratio'])
        )
    small = m['token_acc_points'] < 1 or m['ppl_ratio'] < 1.05
    assert p['small_margin'] is small and (p['warning'] is not None) is small
    # 95% intervals: the trial's own (paired with the teacher), and its gain
    # over the baseline (paired on the same valid examples), around the points
    share = s['intervals']['token_acc']['share']
    assert share['value'] == pytest.approx(s['retained_token_acc'])
    assert share['low'] <= share['value'] <= share['high']
    ppl = s['intervals']['ppl']['value']
    assert ppl['value'] == pytest.approx(s['ppl'], rel=1e-6)
    n = len(s['per_example']['tokens'])
    assert n == len(b['per_example']['tokens']) > 0
    gain = p['intervals']['token_acc']
    assert gain['value'] == pytest.approx(g['token_acc_points'], abs=1e-6)
    assert p['intervals']['ppl']['value'] == pytest.approx(g['ppl_ratio'], rel=1e-6)
    below = [
        k
        for k in ('ppl', 'token_acc')
        if p['student_gain']['ppl_ratio' if k == 'ppl' else 'token_acc_points']
        < (1 if k == 'ppl' else 0)
    ]
    assert sorted(p['below_baseline']['point']) == sorted(below)
    assert 'baseline 1+2 d32 f64 h4: training without a teacher for trial 0' in console
    assert (
        f"trial 0 against baseline 1+2 d32 f64 h4: teacher margin {m['token_acc_points']:+.2f}"
        in console
    )

    with open(out / 'pareto.md') as fh:
        text = fh.read()
    assert '## Against a no-teacher baseline of the same shape' in text
    assert (
        f"| trial 0 | baseline 1+2 d32 f64 h4 | 1+2 d32 f64 h4 | {m['token_acc_points']:+.2f} / x{m['ppl_ratio']:.3f}"
        in text
    )
    baseline_command = data['commands']['0']['baseline']
    assert baseline_command in text
    full = _opt(baseline_command)
    assert full['model'] == NARROW and full['pred_loss_coeff'] == 0
    assert full['max_train_steps'] == 10000

    # The same command again: nothing trained twice, the same figures.
    assert main(args) == 0
    console = capsys.readouterr().out
    assert 'no trial to run' in console and 'training without a teacher' not in console
    with open(out / 'trials.json') as fh:
        assert json.load(fh)['baselines'] == data['baselines']
