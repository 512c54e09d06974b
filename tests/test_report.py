"""The distillation report on tiny models: its figures, its files, its refusals."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import sacrebleu
import torch
from helpers import TASK, train
from parlai.core.agents import create_agent_from_model_file, create_agent_from_shared
from parlai.core.message import Message
from parlai.core.metrics import F1Metric, normalize_answer
from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname
from PIL import Image

from anti_scaling.export.strip import remove_projection_matrices
from anti_scaling.report import build
from anti_scaling.scripts.distill_report import main

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
NUM_EXAMPLES = 12
TIMED = 6
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def students(teacher_file, datapath, tmp_path_factory) -> dict[str, str]:
    """A narrow student trained with every term (unstripped) and its stripped copy."""
    root = tmp_path_factory.mktemp('report_students')
    narrow = str(root / 'narrow' / 'model')
    train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        n_encoder_layers=1,
        n_decoder_layers=2,
        embedding_size=16,
        ffn_size=32,
        model_file=narrow,
        max_train_steps=30,
        batchsize=16,
        hidden_loss_coeff=1.0,
        pred_loss_coeff=1.0,
        embedding_loss_coeff=1.0,
        self_attn_loss_coeff=1.0,
        enc_dec_attn_loss_coeff=1.0,
    )
    plain = str(root / 'plain' / 'model')
    os.makedirs(os.path.dirname(plain))
    remove_projection_matrices(narrow, output=plain)
    return {'narrow': narrow, 'plain': plain}


def _args(teacher, students, out, datapath, *extra):
    return [
        '--teacher',
        teacher,
        '--students',
        *students,
        '--out',
        str(out),
        '-t',
        TASK,
        '-dp',
        datapath,
        '--num-examples',
        str(NUM_EXAMPLES),
        '--batchsize',
        '3',
        '--eval-batchsize',
        '5',
        '--beam-size',
        '2',
        '--warmup',
        '1',
        '--quiet',
        *extra,
    ]


@pytest.fixture(scope='module')
def report(teacher_file, students, datapath, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp('report')
    code = main(
        _args(
            teacher_file,
            [students['narrow'], students['plain']],
            out,
            datapath,
            '--labels',
            'teacher',
            'narrow',
            'plain',
            '--baselines',
            'plain',
            '--timing-examples',
            str(TIMED),
            '--bootstrap',
            '300',
            '--target-speedup',
            '0.5',
            '--target-share',
            '0.9',
        )
    )
    assert code == 0
    with open(out / 'report.json') as fh:
        return json.load(fh), str(out)


def _load(model_file, datapath, **overrides):
    return create_agent_from_model_file(
        model_file,
        {'datapath': datapath, 'datatype': 'valid', 'no_cuda': True, **overrides},
    )


def _observations(agent, datapath):
    """The first test examples as the agent vectorises them (history included)."""
    opt = ParlaiParser(True, False).parse_args(
        ['-t', TASK, '-dt', 'test', '-dp', datapath]
    )
    task = create_task_agent_from_taskname(opt)[0]
    copy = create_agent_from_shared(agent.share())
    out = []
    while len(out) < NUM_EXAMPLES:
        obs = copy.observe(Message(task.act()))
        out.append(obs)
        copy.self_observe(Message({'text': ''}))
    return out


def _forced(agent, observations):
    """Summed label NLL, label tokens, correct tokens and argmax, one example at a time."""
    nll = tokens = correct = 0.0
    argmax = []
    with torch.no_grad():
        for obs in observations:
            batch = agent.batchify([obs])
            scores = agent.model(*agent._model_input(batch), ys=batch.label_vec)[0]
            labels = batch.label_vec[0]
            nll += torch.nn.functional.cross_entropy(
                scores[0], labels, reduction='sum'
            ).item()
            preds = scores[0].argmax(-1)
            tokens += len(labels)
            correct += (preds == labels).sum().item()
            argmax.append(preds.tolist())
    return nll, tokens, correct, argmax


def test_figures_match_independent_computation(report, teacher_file, datapath):
    data, _ = report
    rows = {m['label']: m for m in data['models']}
    assert list(rows) == ['teacher', 'narrow', 'plain']
    assert [row['role'] for row in rows.values()] == ['teacher', 'student', 'baseline']
    assert data['settings']['baselines'] == ['plain']
    assert data['settings']['num_examples'] == NUM_EXAMPLES

    teacher = _load(teacher_file, datapath)
    plain = _load(rows['plain']['path'], datapath)
    t_obs = _observations(teacher, datapath)
    s_obs = _observations(plain, datapath)
    t_nll, t_tokens, t_correct, t_argmax = _forced(teacher, t_obs)
    s_nll, s_tokens, s_correct, s_argmax = _forced(plain, s_obs)

    # perplexity and token accuracy from the loss, over all label tokens
    assert rows['teacher']['ppl'] == pytest.approx(math.exp(t_nll / t_tokens), 1e-4)
    assert rows['teacher']['token_acc'] == pytest.approx(t_correct / t_tokens)
    assert rows['plain']['ppl'] == pytest.approx(math.exp(s_nll / s_tokens), 1e-4)
    assert rows['plain']['token_acc'] == pytest.approx(s_correct / s_tokens)
    # stripping changes nothing the report measures, parameters included
    assert rows['narrow']['ppl'] == pytest.approx(rows['plain']['ppl'], 1e-6)
    assert rows['narrow']['params'] == rows['plain']['params']

    # teacher agreement: argmax equal to the teacher's, per label token
    same = sum(sum(a == b for a, b in zip(s, t)) for s, t in zip(s_argmax, t_argmax))
    assert rows['teacher']['teacher_agreement'] == 1.0
    assert rows['plain']['teacher_agreement'] == pytest.approx(same / t_tokens)

    # parameters as the model counts them
    assert rows['teacher']['params'] == sum(
        p.numel() for p in teacher.model.parameters()
    )
    assert rows['plain']['params'] == sum(p.numel() for p in plain.model.parameters())

    # greedy replies, regenerated independently, and BLEU/F1 on them
    greedy = _load(
        teacher_file, datapath, skip_generation=False, inference='greedy', beam_size=1
    )
    replies = []
    for obs in t_obs:
        msg = Message({'text': obs['text'], 'text_vec': obs['text_vec'].tolist()})
        copy = create_agent_from_shared(greedy.share())
        replies.append(greedy.batch_act([copy.observe(msg)])[0]['text'])
    assert data['replies']['greedy']['teacher'] == replies
    references = data['references']
    assert references == [obs['eval_labels'][0] for obs in t_obs]
    expected = sacrebleu.corpus_bleu(
        [normalize_answer(r) for r in replies],
        [[normalize_answer(r) for r in references]],
    ).score
    greedy_row = rows['teacher']['generation']['greedy']
    assert greedy_row['bleu_ref'] == pytest.approx(expected)
    assert greedy_row['bleu_teacher'] == pytest.approx(100.0)
    f1 = np.mean(
        [F1Metric.compute(h, [r]).value() for h, r in zip(replies, references)]
    )
    assert greedy_row['f1'] == pytest.approx(f1)
    # tokens per reply (of the timed replies): the reply's tokens and the end token
    tokens = [len(greedy.dict.txt2vec(r)) + 1 for r in replies[:TIMED]]
    assert greedy_row['mean_reply_tokens'] == pytest.approx(np.mean(tokens))
    for decoding in ('greedy', 'beam'):
        student = rows['plain']['generation'][decoding]
        expected = sacrebleu.corpus_bleu(
            [normalize_answer(r) for r in data['replies'][decoding]['plain']],
            [[normalize_answer(r) for r in data['replies'][decoding]['teacher']]],
        ).score
        assert student['bleu_teacher'] == pytest.approx(expected)


def test_speed_figures(report):
    data, _ = report
    settings = data['settings']
    assert settings['batchsize'] == 3 and settings['beam_size'] == 2
    assert settings['decodings'] == ['greedy', 'beam']
    for decoding in settings['decodings']:
        teacher = data['models'][0]['generation'][decoding]
        assert teacher['speedup'] == pytest.approx(1.0)
        for model in data['models']:
            gen = model['generation'][decoding]
            assert gen['replies'] == TIMED
            assert 0 < gen['mean_s_per_reply'] and 0 < gen['p90_s_per_reply']
            assert gen['speedup'] == pytest.approx(
                teacher['mean_s_per_reply'] / gen['mean_s_per_reply']
            )
            # the same total time, over replies or over their tokens
            assert gen['mean_s_per_token'] * gen['mean_reply_tokens'] == (
                pytest.approx(gen['mean_s_per_reply'])
            )
            assert gen['speedup_per_token'] == pytest.approx(
                teacher['mean_s_per_token'] / gen['mean_s_per_token']
            )


def test_intervals_and_verdicts(report, teacher_file, datapath):
    data, _ = report
    rows = {m['label']: m for m in data['models']}
    assert data['settings']['bootstrap']['resamples'] == 300
    assert data['settings']['timing_examples'] == TIMED
    names = ['ppl', 'token_acc', 'teacher_agreement', 'f1_greedy', 'bleu_greedy']
    names += ['f1_beam', 'bleu_beam']
    for label, row in rows.items():
        iv = {name: figures['value'] for name, figures in row['intervals'].items()}
        assert list(iv) == names
        # the bootstrap's point estimates are the report's own figures
        for name in ('ppl', 'token_acc', 'teacher_agreement'):
            assert iv[name]['value'] == pytest.approx(row[name], rel=1e-9)
        for d in ('greedy', 'beam'):
            assert iv[f'f1_{d}']['value'] == pytest.approx(row['generation'][d]['f1'])
            assert iv[f'bleu_{d}']['value'] == pytest.approx(
                row['generation'][d]['bleu_ref']
            )
        for name in names:
            v = iv[name]['value']
            if iv[name]['low'] is not None:
                assert iv[name]['low'] <= v + 1e-9 and v - 1e-9 <= iv[name]['high']
            if label == 'teacher':
                assert 'share' not in row['intervals'][name]
                continue
            share = row['intervals'][name]['share']['value']
            teacher = rows['teacher']['intervals'][name]['value']['value']
            if name == 'ppl':
                assert share == pytest.approx(teacher / v)
            elif teacher:
                assert share == pytest.approx(v / teacher)
        for g in row['generation'].values():
            assert g['speedup_interval']['value'] == pytest.approx(g['speedup'])
            lo, hi = g['iqr_s_per_reply']
            assert lo <= g['median_s_per_reply'] <= hi
            assert g['replies_per_second'] > 0
            assert 0.0 <= g['same_as_batched'] <= 1.0
    # the teacher decodes greedily the same with batches of 5 and of 3
    assert rows['teacher']['generation']['greedy']['same_as_batched'] == 1.0
    # a stripped student is the same model as its unstripped original: gains 0
    (pair,) = data['baselines']['pairs']
    for name in names:
        gain = pair['intervals'][name]
        zero = 1.0 if name == 'ppl' else 0.0
        assert gain['value'] == pytest.approx(zero, abs=1e-6)
    assert pair['below_baseline']['significant'] == []
    # verdicts: every student is faster than half the teacher's speed? decided
    # by its interval; shares of a model equal to the teacher's would be met
    for label in ('narrow', 'plain'):
        verdicts = rows[label]['verdicts']
        assert set(verdicts) == {'speedup_greedy', 'speedup_beam', *names}
        assert set(verdicts.values()) <= {'met', 'missed', 'undecided'}
        share = rows[label]['intervals']['token_acc']['share']
        expected = (
            'met'
            if share['low'] >= 0.9
            else 'missed' if share['high'] < 0.9 else 'undecided'
        )
        assert verdicts['token_acc'] == expected


def test_files(report):
    data, out = report
    with open(os.path.join(out, 'quality_vs_speed.png'), 'rb') as fh:
        assert fh.read(8) == PNG_SIGNATURE
    with Image.open(os.path.join(out, 'quality_vs_speed.png')) as image:
        image.verify()
    with Image.open(os.path.join(out, 'quality_vs_speed.png')) as image:
        assert image.format == 'PNG' and image.size[0] > 300
    with open(os.path.join(out, 'report.md')) as fh:
        table = fh.read()
    for model in data['models']:
        assert f"| {model['label']} |" in table
    assert '## 95% intervals' in table and 'Targets: speed-up at least x0.5' in table
    assert sorted(os.listdir(out)) == [
        'quality_vs_speed.png',
        'report.json',
        'report.md',
    ]


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if any evaluation starts."""

    def forbidden(*args, **kwargs):
        raise AssertionError('evaluation started despite bad input')

    monkeypatch.setattr(build, 'teacher_forced', forbidden)
    monkeypatch.setattr(build, 'collect_examples', forbidden)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith('anti_scaling: error: ') and '\n' not in err, err
    for word in words:
        assert word in err, err


def test_missing_model_file(
    teacher_file, students, datapath, tmp_path, capsys, no_evaluation
):
    missing = str(tmp_path / 'nowhere' / 'model')
    assert main(_args(teacher_file, [missing], tmp_path / 'a', datapath)) == 2
    _one_line_error(capsys, missing, 'not found')
    assert main(_args(missing, [students['plain']], tmp_path / 'b', datapath)) == 2
    _one_line_error(capsys, '--teacher', missing)
    assert not os.path.exists(tmp_path / 'a') and not os.path.exists(tmp_path / 'b')


def test_student_with_another_dictionary(
    teacher_file, students, datapath, tmp_path, capsys, no_evaluation
):
    other = tmp_path / 'other'
    shutil.copytree(os.path.dirname(students['plain']), other)
    model_file = str(other / 'model')
    with open(model_file + '.dict') as fh:
        lines = fh.read().splitlines()
    token, count = lines[-1].split('\t')
    lines[-1] = f'{token}x\t{count}'  # same size, one token renamed
    with open(model_file + '.dict', 'w') as fh:
        fh.write('\n'.join(lines) + '\n')
    with open(model_file + '.opt') as fh:
        opt = json.load(fh)
    opt['dict_file'] = model_file + '.dict'
    with open(model_file + '.opt', 'w') as fh:
        json.dump(opt, fh)
    assert main(_args(teacher_file, [model_file], tmp_path / 'out', datapath)) == 2
    _one_line_error(capsys, model_file, 'dictionary')
    assert not os.path.exists(tmp_path / 'out')


def test_baseline_that_is_no_student_label(
    teacher_file, students, datapath, tmp_path, capsys, no_evaluation
):
    args = _args(teacher_file, [students['plain']], tmp_path / 'out', datapath)
    assert main([*args, '--labels', 'T', 'S', '--baselines', 'T']) == 2
    _one_line_error(capsys, '--baselines', "'T'", "'S'")
    assert not os.path.exists(tmp_path / 'out')


def test_unknown_task(
    teacher_file, students, datapath, tmp_path, capsys, no_evaluation
):
    args = _args(teacher_file, [students['plain']], tmp_path / 'out', datapath)
    args[args.index(TASK)] = 'no_such_task_anywhere'
    assert main(args) == 2
    _one_line_error(capsys, 'no_such_task_anywhere')


@pytest.mark.parametrize(
    'extra, words',
    [
        (['--target-share', '1.5'], ['--target-share 1.5', '(0, 1]']),
        (['--target-share', '0'], ['--target-share 0', '(0, 1]']),
        (['--bootstrap', '99'], ['--bootstrap 99', 'at least 100']),
        (['--target-speedup', '-2'], ['--target-speedup -2']),
        (['--num-examples', '-1'], ['--num-examples']),
    ],
)
def test_bad_numbers_before_any_work(
    teacher_file, students, datapath, tmp_path, capsys, no_evaluation, extra, words
):
    out = tmp_path / 'out'
    assert main(_args(teacher_file, [students['plain']], out, datapath, *extra)) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()


def test_timing_sample_larger_than_the_split(
    teacher_file, students, datapath, tmp_path, capsys, monkeypatch
):
    out = tmp_path / 'out'
    monkeypatch.setattr(build, 'teacher_forced', pytest.fail)
    args = _args(teacher_file, [students['plain']], out, datapath)
    assert main([*args, '--timing-examples', str(NUM_EXAMPLES + 1)]) == 2
    _one_line_error(
        capsys, f'--timing-examples {NUM_EXAMPLES + 1}', f'{NUM_EXAMPLES} examples'
    )
    assert not (out / 'report.json').exists()


def test_existing_report_kept_without_overwrite(
    teacher_file, students, datapath, tmp_path, capsys, monkeypatch
):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'report.md').write_text('earlier report\n')
    args = _args(teacher_file, [students['plain']], out, datapath)
    with monkeypatch.context() as patch:
        patch.setattr(build, 'teacher_forced', pytest.fail)
        assert main(args) == 2
    _one_line_error(capsys, 'report.md', '--overwrite')
    assert (out / 'report.md').read_text() == 'earlier report\n'
    assert main([*args, '--overwrite']) == 0
    assert (out / 'report.md').read_text().startswith('# Distillation report')
    assert not [f for f in os.listdir(out) if f.endswith('.tmp')]


def test_bart_teacher_and_stripped_student(bart_teacher_file, datapath, tmp_path):
    """BART models report like transformers, and nothing downloads bart_large."""
    student = str(tmp_path / 'bart_student' / 'model')
    train(
        datapath,
        model='anti_scaling.distillation:DistillNarrowBartAgent',
        teacher_model=bart_teacher_file,
        model_file=student,
        n_layers=1,
        embedding_size=16,
        ffn_size=32,
        max_train_steps=10,
        batchsize=16,
        pred_loss_coeff=1.0,
        hidden_loss_coeff=1.0,
    )
    remove_projection_matrices(student)
    out = tmp_path / 'report'
    assert main(_args(bart_teacher_file, [student], out, datapath)) == 0
    with open(out / 'report.json') as fh:
        rows = json.load(fh)['models']
    assert [row['architecture']['model'] for row in rows] == ['bart', 'bart']
    assert rows[1]['architecture']['n_decoder_layers'] == 1
    for row in rows:
        assert math.isfinite(row['ppl']) and 0 <= row['token_acc'] <= 1
        assert row['generation']['greedy']['replies'] == NUM_EXAMPLES
    assert not os.path.exists(os.path.join(datapath, 'models', 'bart'))
