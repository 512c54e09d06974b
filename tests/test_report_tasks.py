"""The report on a user's own data (task options as ParlAI takes them), and baselines."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random

import pytest
from helpers import train

from anti_scaling.errors import DistillationError
from anti_scaling.report import build
from anti_scaling.report.task_options import task_opt
from anti_scaling.scripts.command_line import split_task_args
from anti_scaling.scripts.distill_report import main, parser

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
COEFFS = (
    'hidden_loss_coeff',
    'pred_loss_coeff',
    'embedding_loss_coeff',
    'self_attn_loss_coeff',
    'enc_dec_attn_loss_coeff',
    'encoder_loss_coeff',
)
NUM_EXAMPLES = 14


def dialogues(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Conversations like integration_tests:reverse: digits, then their reversal.

    Every third conversation has two exchanges (a history for the second).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = []
        for _ in range(2 if i % 3 == 0 else 1):
            words = [str(rng.randint(1, 6)) for _ in range(rng.randint(2, 4))]
            turns.append((' '.join(words), ' '.join(reversed(words))))
        out.append(turns)
    return out


@pytest.fixture(scope='module')
def data_files(tmp_path_factory) -> dict:
    """The same 36 conversations as a jsonfile (.jsonl) and in ParlAI's text format."""
    root = tmp_path_factory.mktemp('user_data')
    convs = dialogues(36)
    jsonl = root / 'chats.jsonl'
    with open(jsonl, 'w') as fh:
        for turns in convs:
            dialog = []
            for text, reply in turns:
                dialog += [
                    {'id': 'partner1', 'text': text},
                    {'id': 'partner2', 'text': reply},
                ]
            fh.write(json.dumps({'dialog': [dialog]}) + '\n')
    parlai_txt = root / 'chats.txt'
    with open(parlai_txt, 'w') as fh:
        for turns in convs:
            for j, (text, reply) in enumerate(turns):
                done = '\tepisode_done:True' if j == len(turns) - 1 else ''
                fh.write(f'text:{text}\tlabels:{reply}{done}\n')
    return {'jsonl': str(jsonl), 'txt': str(parlai_txt), 'conversations': convs}


@pytest.fixture(scope='module')
def pair_of_students(teacher_file, datapath, tmp_path_factory) -> dict[str, str]:
    """A narrow student distilled from the teacher, and its no-teacher baseline.

    Same shape, budget, optimiser and seed; the baseline has every distillation
    coefficient 0 (the teacher does not run).
    """
    root = tmp_path_factory.mktemp('paired_students')
    files = {}
    for name, coeff in (('distilled', 1.0), ('baseline', 0.0)):
        files[name] = str(root / name / 'model')
        train(
            datapath,
            model=NARROW,
            teacher_model=teacher_file,
            n_encoder_layers=1,
            n_decoder_layers=1,
            embedding_size=16,
            ffn_size=32,
            n_heads=4,
            model_file=files[name],
            max_train_steps=40,
            batchsize=16,
            **{key: coeff for key in COEFFS},
        )
    return files


def report_args(teacher, students, out, datapath) -> list[str]:
    return [
        '--teacher',
        teacher,
        '--students',
        *students,
        '--out',
        str(out),
        '-dp',
        datapath,
        '--num-examples',
        str(NUM_EXAMPLES),
        '-bs',
        '2',
        '--beam-size',
        '2',
        '--warmup',
        '1',
        '--quiet',
    ]


def test_task_options_are_parsed_by_parlai(data_files, datapath):
    argv = [
        '--teacher',
        'T',
        '--students',
        'A',
        'B',
        '-t',
        'jsonfile',
        '--jsonfile-datapath',
        data_files['jsonl'],
        '--out',
        'O',
        '--label_turns',
        'both',
        '-dt',
        'valid',
        '--',
        '-jfdt',
        'false',
    ]
    args, task_args = split_task_args(parser(), argv)
    assert args.students == ['A', 'B'] and args.out == 'O' and args.datatype == 'valid'
    assert task_args == [
        '--jsonfile-datapath',
        data_files['jsonl'],
        '--label_turns',
        'both',
        '-jfdt',
        'false',
    ]
    opt = task_opt('jsonfile', 'valid', datapath, task_args)
    assert opt['jsonfile_datapath'] == data_files['jsonl']
    assert opt['label_turns'] == 'both' and opt['jsonfile_datatype_extension'] is False
    assert opt['datatype'] == 'valid' and opt['datapath'] == datapath
    opt = task_opt(
        'fromfile:parlaiformat', 'test', datapath, ['--fromfile-datapath', 'F']
    )
    assert opt['fromfile_datapath'] == 'F'
    opt = task_opt(
        'anti_scaling.tasks.chitchat',
        'test',
        datapath,
        ['--chitchat-max-turns', '8', '--chitchat-max-conversations', '5'],
    )
    assert opt['chitchat_max_turns'] == 8 and opt['chitchat_max_conversations'] == 5


def test_unknown_and_bad_task_options_are_one_line(data_files, datapath):
    def refused(task, args):
        with pytest.raises(DistillationError) as e:
            task_opt(task, 'test', datapath, args)
        assert '\n' not in str(e.value)
        return str(e.value)

    # An option of another task, a typo, a stray value.
    err = refused('jsonfile', ['--chitchat-max-turns', '8', '--jsonfile-datapth=F'])
    assert err.startswith(
        '-t jsonfile: unknown options --chitchat-max-turns --jsonfile-datapth '
    )
    assert 'parlai display_data -t jsonfile --help' in err
    assert refused('jsonfile', ['stray']) == '-t jsonfile: unexpected argument(s) stray'
    err = refused('jsonfile', ['--label-turns', 'nobody'])
    assert err.startswith(
        "-t jsonfile: argument --label-turns: invalid choice: 'nobody'"
    )
    err = refused('no_such_task_anywhere', [])
    assert err.startswith('unknown or unusable task -t no_such_task_anywhere')


@pytest.fixture
def no_evaluation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError('evaluation started despite bad input')

    monkeypatch.setattr(build, 'teacher_forced', forbidden)
    monkeypatch.setattr(build, 'collect_examples', forbidden)


def test_report_refuses_an_unknown_option_before_evaluating(
    teacher_file,
    pair_of_students,
    data_files,
    datapath,
    tmp_path,
    capsys,
    no_evaluation,
):
    out = tmp_path / 'out'
    args = report_args(teacher_file, [pair_of_students['baseline']], out, datapath)
    args += [
        '-t',
        'jsonfile',
        '--jsonfile-datapath',
        data_files['jsonl'],
        '--nope',
        '1',
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('anti_scaling: error: -t jsonfile: unknown option --nope ')
    assert '\n' not in err and not out.exists()


@pytest.fixture(scope='module')
def jsonfile_report(
    teacher_file, pair_of_students, data_files, datapath, tmp_path_factory
):
    out = tmp_path_factory.mktemp('jsonfile_report')
    students = [pair_of_students['distilled'], pair_of_students['baseline']]
    args = report_args(teacher_file, students, out, datapath)
    args += ['--labels', 'teacher', 'distilled', 'baseline', '--baselines', 'baseline']
    args += ['-t', 'jsonfile', '--jsonfile-datapath', data_files['jsonl']]
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        assert main(args) == 0
    return out, console.getvalue()


def test_report_on_a_jsonfile_with_baselines(
    jsonfile_report, teacher_file, data_files, datapath
):
    from parlai.scripts.eval_model import EvalModel

    out, console = jsonfile_report
    with open(out / 'report.json') as fh:
        data = json.load(fh)
    s = data['settings']
    assert s['task'] == 'jsonfile' and s['num_examples'] == NUM_EXAMPLES
    assert s['task_args'] == ['--jsonfile-datapath', data_files['jsonl']]
    # The references are the file's replies, in order.
    replies = [r for turns in data_files['conversations'] for _, r in turns]
    assert data['references'] == replies[:NUM_EXAMPLES]

    # ParlAI's own eval_model on the same file and examples gives the same figures.
    rows = {m['label']: m for m in data['models']}
    parlai_report = EvalModel.main(
        model_file=teacher_file,
        task='jsonfile',
        jsonfile_datapath=data_files['jsonl'],
        datatype='test',
        datapath=datapath,
        num_examples=NUM_EXAMPLES,
        batchsize=1,
        skip_generation=True,
    )
    assert rows['teacher']['ppl'] == pytest.approx(parlai_report['ppl'].value(), 1e-4)
    assert rows['teacher']['token_acc'] == pytest.approx(
        parlai_report['token_acc'].value()
    )

    # The pair, from the rows' own figures.
    (pair,) = data['baselines']['pairs']
    t, d, b = rows['teacher'], rows['distilled'], rows['baseline']
    assert (pair['student'], pair['baseline']) == ('distilled', 'baseline')
    assert pair['shape'] == '1+1 d16 f32 h4 aiayn'
    m, g, c = pair['teacher_margin'], pair['student_gain'], pair['gap_closed']
    assert m['token_acc_points'] == pytest.approx(
        100 * (t['token_acc'] - b['token_acc'])
    )
    assert m['ppl_ratio'] == pytest.approx(b['ppl'] / t['ppl'])
    assert g['token_acc_points'] == pytest.approx(
        100 * (d['token_acc'] - b['token_acc'])
    )
    assert g['ppl_ratio'] == pytest.approx(b['ppl'] / d['ppl'])
    for dec in ('greedy', 'beam'):
        f1 = {k: r['generation'][dec]['f1'] for k, r in (('t', t), ('d', d), ('b', b))}
        assert m['f1_points'][dec] == pytest.approx(100 * (f1['t'] - f1['b']))
        assert g['f1_points'][dec] == pytest.approx(100 * (f1['d'] - f1['b']))
    # Share of the gap closed; none where the teacher is not better (no gap).
    log_margin = math.log(b['ppl'] / t['ppl'])
    assert c['ppl'] == (
        pytest.approx(math.log(b['ppl'] / d['ppl']) / log_margin)
        if log_margin > 0
        else None
    )
    assert c['token_acc'] == (
        pytest.approx(g['token_acc_points'] / m['token_acc_points'])
        if m['token_acc_points'] > 0
        else None
    )
    small = m['token_acc_points'] < 1 or m['ppl_ratio'] < 1.05
    assert pair['small_margin'] == small and (pair['warning'] is not None) == small
    assert data['baselines']['unpaired_students'] == []
    assert 'distilled against baseline: teacher margin' in console
    with open(out / 'report.md') as fh:
        text = fh.read()
    assert '## Distilled students against same-shape baselines' in text
    assert (
        f"| distilled | baseline | 1+1 d16 f32 h4 aiayn | {m['token_acc_points']:+.2f}"
        in text
    )


def test_fromfile_task_after_the_separator_reads_the_same_examples(
    jsonfile_report, teacher_file, pair_of_students, data_files, datapath, tmp_path
):
    """The older ``--`` form; ParlAI's text format holding the same conversations."""
    out = tmp_path / 'fromfile'
    args = report_args(teacher_file, [pair_of_students['baseline']], out, datapath)
    args += ['-t', 'fromfile:parlaiformat', '--', '--fromfile-datapath']
    assert (
        main([*args, data_files['txt'], '--beam-size', '1']) == 2
    )  # after --: ParlAI's
    assert main([*args, data_files['txt']]) == 0
    with open(out / 'report.json') as fh:
        data = json.load(fh)
    replies = [r for turns in data_files['conversations'] for _, r in turns]
    assert data['references'] == replies[:NUM_EXAMPLES]
    assert data['baselines'] is None
    with open(jsonfile_report[0] / 'report.json') as fh:
        same = {m['label']: m for m in json.load(fh)['models']}
    # Same examples, contexts (history included) and model: the same figures.
    teacher = data['models'][0]
    assert teacher['ppl'] == pytest.approx(same['teacher']['ppl'], 1e-6)
    assert teacher['token_acc'] == pytest.approx(same['teacher']['token_acc'])
