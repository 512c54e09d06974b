"""The pseudo-label quality filter: keep teacher replies close to the reference (F1)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from helpers import TASK

from anti_scaling.errors import DistillationError
from anti_scaling.pseudo_labels import reference_f1, select_by_f1
from anti_scaling.scripts import generate_pseudo_labels as script


def test_reference_f1_by_hand():
    # 'the' and 'a' are dropped: [cat, sat] against [cat, sat, down]:
    # P = 2/2, R = 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert reference_f1('the cat sat', ['a cat sat down']) == pytest.approx(0.8)
    # the best of several references: [hello, world] against [hello, there]
    # (F1 0.5) and [world, hello] (F1 1)
    assert reference_f1('Hello, world!', ['hello there', 'world hello']) == 1.0
    # repeated tokens count once per match: [1, 2, 2] against [2, 3]: 1 common,
    # P = 1/3, R = 1/2, F1 = 2 * 1/6 / (5/6) = 0.4
    assert reference_f1('1 2 2', ['2 3']) == pytest.approx(0.4)
    assert reference_f1('', ['a b c']) == 0.0
    assert math.isnan(reference_f1('anything', []))


def test_select_by_f1():
    assert select_by_f1([0.8, 0.4, 0.5, math.nan], 0.5) == [True, False, True, False]
    assert select_by_f1([0.0, math.nan], None) == [True, True]
    with pytest.raises(DistillationError, match='must be in \\[0, 1\\]'):
        select_by_f1([], 1.5)


def token_f1(reply: str, gold: str) -> float:
    """F1 over whitespace tokens (the reverse task's digits need no normalising)."""
    ours, theirs = reply.lower().split(), gold.lower().split()
    same = sum((Counter(ours) & Counter(theirs)).values())
    if not same:
        return 0.0
    p, r = same / len(ours), same / len(theirs)
    return 2 * p * r / (p + r)


def generate(teacher_file, datapath, output, *extra):
    return script.main(
        [
            '--teacher-model',
            teacher_file,
            '-t',
            TASK,
            '-dt',
            'valid',
            '--output',
            str(output),
            '-dp',
            datapath,
            '-bs',
            '16',
            *extra,
        ]
    )


def replies(output):
    """(context, reply, gold, written F1) of every line of a pseudo-label file."""
    out = []
    with open(output) as fh:
        for line in fh:
            (turn,) = json.loads(line)['dialog']
            x, y = turn
            out.append((x['text'], y['text'], y['gold_labels'][0], y['reference_f1']))
    return out


def test_the_filter_keeps_exactly_the_close_replies(teacher_file, datapath, tmp_path):
    everything = generate(teacher_file, datapath, tmp_path / 'all.jsonl')
    assert everything['dropped'] == 0 and everything['dropped_by_f1'] == 0
    rows = replies(tmp_path / 'all.jsonl')
    for _, reply, gold, written in rows:
        assert written == pytest.approx(token_f1(reply, gold))
    close = sorted((c, r) for c, r, g, _ in rows if token_f1(r, g) >= 0.5)
    assert 0 < len(close) < len(rows)  # the threshold splits this teacher's replies

    summary = generate(
        teacher_file, datapath, tmp_path / 'f1.jsonl', '--min-reference-f1', '0.5'
    )
    kept = replies(tmp_path / 'f1.jsonl')
    assert sorted((c, r) for c, r, _, _ in kept) == close
    assert summary['kept'] == len(close)
    assert summary['dropped'] == summary['dropped_by_f1'] == len(rows) - len(close)
    assert summary['mean_reference_f1'] == pytest.approx(
        sum(token_f1(r, g) for _, r, g, _ in rows) / len(rows)
    )
    with pytest.raises(DistillationError, match='min-reference-f1 is 2.0'):
        generate(
            teacher_file, datapath, tmp_path / 'x.jsonl', '--min-reference-f1', '2'
        )
    assert not (tmp_path / 'x.jsonl').exists()
