"""distill_report --runtimes: the models measured again in CTranslate2."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip('ctranslate2')


def test_ct2_rows(chitchat_model, datapath, tmp_path, capsys):
    """Float32 rows: ParlAI's replies and perplexity, measured speed; int8 rows too."""
    from anti_scaling.scripts.distill_report import main

    student = tmp_path / 'student'
    shutil.copytree(chitchat_model.rsplit('/', 1)[0], student)
    out = tmp_path / 'report'
    code = main(
        [
            '--teacher',
            chitchat_model,
            '--students',
            str(student / 'model'),
            '--out',
            str(out),
            '-t',
            'anti_scaling.tasks.chitchat',
            '-dp',
            datapath,
            '--num-examples',
            '12',
            '--timing-examples',
            '4',
            '--eval-batchsize',
            '4',
            '--beam-size',
            '2',
            '--bootstrap',
            '100',
            '--warmup',
            '1',
            '--threads',
            '1',
            '--quiet',
            '--runtimes',
            'parlai',
            'ct2',
            'ct2-int8',
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.load(open(out / 'report.json'))
    served = report['runtimes']
    labels = [m['label'] for m in report['models']]
    assert [(r['runtime'], r['label']) for r in served] == [
        (runtime, label) for runtime in ('ct2', 'ct2-int8') for label in labels
    ]
    by_runtime = {(r['runtime'], i % 2): r for i, r in enumerate(served)}
    parlai = report['models']
    for i in range(2):
        row = by_runtime[('ct2', i)]
        # The same weights in float32: ParlAI's greedy replies, its perplexity.
        assert row['generation']['greedy']['same_as_parlai'] == 1.0
        assert row['ppl'] == pytest.approx(parlai[i]['ppl'], rel=1e-3)
        for d in ('greedy', 'beam'):
            g = row['generation'][d]
            assert g['mean_s_per_reply'] > 0 and g['replies_per_second'] > 0
            assert g['speedup'] > 0 and 0 <= g['f1'] <= 1
    int8 = by_runtime[('ct2-int8', 0)]
    assert int8['ppl'] == pytest.approx(parlai[0]['ppl'], rel=0.1)
    markdown = open(out / 'report.md').read()
    assert '## Served by another runtime' in markdown
    assert '| ct2-int8 |' in markdown


def test_unknown_runtime_is_one_line(chitchat_model, datapath, tmp_path, capsys):
    from anti_scaling.scripts.distill_report import main

    code = main(
        [
            '--teacher',
            chitchat_model,
            '--students',
            chitchat_model,
            '--out',
            str(tmp_path / 'r'),
            '-t',
            'anti_scaling.tasks.chitchat',
            '-dp',
            datapath,
            '--runtimes',
            'onnx',
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1
    assert '--runtimes onnx: choose among parlai, ct2, ct2-int8' in err
    assert not (tmp_path / 'r').exists()
