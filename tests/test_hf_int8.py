"""int8 copies: torch dynamic quantisation of the linear layers, in the report."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch

from anti_scaling.report.evaluation import bleu, text_metrics
from anti_scaling.report.quantize import (
    float_linear_count,
    quantize_int8,
    quantized_agent,
    quantized_linear_count,
)


def _agent(model_file: str, datapath: str):
    from anti_scaling.model_files import load_generator_agent, model_file_opt

    agent = load_generator_agent(model_file_opt(model_file, datapath, {}))
    agent.model.eval()
    return agent


def test_quantized_copy_of_a_parlai_model(chitchat_model, datapath):
    """Every nn.Linear is int8 in the copy, none in the original; outputs stay close."""
    agent = _agent(chitchat_model, datapath)
    linears = float_linear_count(agent.model)
    # 2 encoder layers (q, k, v, out, 2 FFN) + 2 decoder layers (8 attention, 2 FFN).
    assert linears == 2 * 6 + 2 * 10
    copy = quantized_agent(agent)
    assert quantized_linear_count(copy.model) == linears
    assert float_linear_count(copy.model) == 0
    assert float_linear_count(agent.model) == linears
    assert copy.dict is agent.dict and copy.opt['model'] == agent.opt['model']
    xs = torch.tensor([agent.dict.txt2vec('hi! how are you doing today?')])
    ys = torch.tensor([agent.dict.txt2vec('i am fine, thanks') + [2]])
    with torch.no_grad():
        fp = agent.model(xs, ys=ys)[0][..., 2:]
        q = copy.model(xs, ys=ys)[0][..., 2:]
    assert 0 < (fp - q).abs().max().item() < 0.05 * fp.abs().max().item()
    # A scope leaves the rest in float32 (used for transformers' lm_head).
    decoder_only = quantize_int8(agent.model, scope='decoder')
    assert quantized_linear_count(decoder_only) == 20
    assert float_linear_count(decoder_only) == 12


def test_report_adds_int8_rows(chitchat_model, datapath, tmp_path):
    """distill_report --quantize int8: a row per copy, figures from the copy's own outputs."""
    from anti_scaling.scripts import distill_report

    out = tmp_path / 'report'
    code = distill_report.main(
        [
            '--teacher',
            chitchat_model,
            '--students',
            chitchat_model,
            '--labels',
            'teacher',
            'student',
            '--out',
            str(out),
            '-t',
            'anti_scaling.tasks.chitchat',
            '-dp',
            datapath,
            '--num-examples',
            '6',
            '--beam-size',
            '1',
            '--warmup',
            '0',
            '--quantize',
            'int8',
            '--quiet',
        ]
    )
    assert code == 0
    with open(out / 'report.json') as fh:
        report = json.load(fh)
    rows = report['models']
    assert [r['label'] for r in rows] == [
        'teacher',
        'teacher int8',
        'student',
        'student int8',
    ]
    assert [r['role'] for r in rows] == ['teacher', 'int8', 'student', 'int8']
    assert [r['quantized'] for r in rows] == [None, 'int8', None, 'int8']
    assert report['settings']['quantize'] == 'int8'
    assert rows[1]['params'] == rows[0]['params']
    references = report['references']
    examples = [SimpleNamespace(labels=(ref,)) for ref in references]
    for row in rows:
        replies = report['replies']['greedy'][row['label']]
        assert len(replies) == 6
        figures = row['generation']['greedy']
        assert figures['f1'] == text_metrics(replies, examples)['f1']
        assert figures['bleu_ref'] == bleu(replies, references)
        assert figures['mean_s_per_reply'] > 0
    # Teacher forcing ran on the int8 model itself: its perplexity is its own.
    assert rows[1]['ppl'] != rows[0]['ppl']
    assert abs(rows[1]['ppl'] - rows[0]['ppl']) < 0.05 * rows[0]['ppl']
    assert rows[2]['ppl'] == rows[0]['ppl']  # the same float model twice
    assert 0.5 < rows[1]['teacher_agreement'] <= 1
    table = (out / 'report.md').read_text()
    assert '| teacher int8 |' in table and '| student int8 |' in table
    assert "Rows labelled 'int8'" in table
    assert os.path.getsize(out / 'quality_vs_speed.png') > 0
