"""A term's reported value is its formula over the whole epoch, however batched."""

from __future__ import annotations

import pytest
import torch
from helpers import make_agent, reverse_examples

from anti_scaling.agents.term_values import TermMetric, TermValue
from anti_scaling.losses import TokenMean

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'


def _sum(metrics):
    return sum(metrics[1:], metrics[0])


def test_parts_with_different_counts_aggregate_exactly_over_batches():
    # A term of two objectives per layer over 2 layers (groups = 2): part a counts
    # queries, part b keys. Two batches of different lengths.
    batch1 = TermValue(
        (
            TokenMean(torch.tensor([3.0, 1.0]), torch.tensor([3.0, 1.0])),
            TokenMean(torch.tensor([8.0, 2.0]), torch.tensor([4.0, 4.0])),
        ),
        groups=2,
    )
    batch2 = TermValue(
        (
            TokenMean(torch.tensor([10.0]), torch.tensor([5.0])),
            TokenMean(torch.tensor([1.0]), torch.tensor([1.0])),
        ),
        groups=2,
    )
    # batch values: (4/4 + 10/8) / 2 and (10/5 + 1/1) / 2
    assert batch1.mean().item() == pytest.approx((1.0 + 1.25) / 2)
    assert batch2.mean().item() == pytest.approx((2.0 + 1.0) / 2)
    epoch = _sum(batch1.metrics() + batch2.metrics())
    # the epoch's token means: part a 14/9, part b 11/9
    assert epoch.value() == pytest.approx((14 / 9 + 11 / 9) / 2)
    # which is not the mean of the batch values, nor what one shared count gives
    assert epoch.value() != pytest.approx((batch1.mean() + batch2.mean()).item() / 2)


def test_one_part_is_an_average_metric_over_groups():
    value = TermValue(
        (TokenMean(torch.tensor([2.0, 6.0]), torch.tensor([1.0, 3.0])),), groups=4
    )
    metrics = value.metrics()
    assert len(metrics) == 2 and all(isinstance(m, TermMetric) for m in metrics)
    assert _sum(metrics).value() == pytest.approx(8 / 4 / 4)
    assert value.mean().item() == pytest.approx(8 / 4 / 4)


def test_agent_reports_cross_attention_minilm_exactly_over_batches(
    teacher_file, datapath, tmp_path
):
    """MiniLM on encoder-decoder attention: distributions count decoder queries,
    value relations encoder keys. Two batches of different lengths, one report."""
    from parlai.core.message import Message

    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-mf',
            str(tmp_path / 'm' / 'model'),
            '--embedding-size',
            '16',
            '--ffn-size',
            '32',
            '--n-layers',
            '2',
            '--enc-dec-attn-loss-coeff',
            '1',
            '--attn-loss-type',
            'minilm',
        ],
        datapath,
    )
    agent.model.eval()
    recorded, per_batch = [], []
    for n, length in ((5, 3), (3, 6)):
        observations = []
        for message in reverse_examples(n, length=length, seed=n):
            agent.reset()
            observations.append(
                agent.observe(Message({**message, 'episode_done': True}))
            )
        batch = agent.batchify(observations)
        agent._local_metrics.clear()
        with torch.no_grad():
            agent.compute_loss(batch)
        recorded += agent._local_metrics['enc_dec_attn_loss']
        per_batch.append(recorded[-1]._parts)
    # two parts (queries, keys) with different counts
    assert len(per_batch[0]) == 2
    parts = list(zip(*(m._parts for m in recorded), strict=True))
    expected = sum(sum(t for t, _ in p) / sum(c for _, c in p) for p in parts) / 2
    assert _sum(recorded).value() == pytest.approx(expected)
