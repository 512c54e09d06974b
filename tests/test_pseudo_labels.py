"""Sequence-level distillation data: the pseudo-label dataset and its filter."""

from __future__ import annotations

import json
import os

import pytest
from helpers import TASK, run_batch, train, train_reports

from anti_scaling.errors import DistillationError
from anti_scaling.precompute import (
    BatchTap,
    create_teacher_agent,
    run_world,
    task_world,
)
from anti_scaling.pseudo_labels import cut_episodes, select_replies
from anti_scaling.scripts import generate_pseudo_labels as script

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
MULTITURN = 'integration_tests:multiturn_nocandidate'


def generate(teacher_file, datapath, output, *extra, task=TASK, split='valid'):
    return script.main(
        [
            '--teacher-model',
            teacher_file,
            '-t',
            task,
            '-dt',
            split,
            '--output',
            str(output),
            '-dp',
            datapath,
            '-bs',
            '16',
            *[str(e) for e in extra],
        ]
    )


def read_jsonfile(output, datapath):
    """Every example of ``-t jsonfile --jsonfile-datapath output`` as ParlAI gives it."""
    from parlai.core.params import ParlaiParser
    from parlai.core.teachers import create_task_agent_from_taskname

    opt = ParlaiParser(True, False).parse_args(
        [
            '-t',
            'jsonfile',
            '--jsonfile-datapath',
            str(output),
            '-dt',
            'train:evalmode',
            '-dp',
            datapath,
        ]
    )
    teacher = create_task_agent_from_taskname(opt)[0]
    examples = []
    while not teacher.epoch_done():
        examples.append(teacher.act())
    return examples


def replay(teacher_file, datapath, output):
    """Run the teacher (greedy) on the contexts a student of ``output`` sees.

    Returns ``(contexts, labels, replies)``: the context ids, the label text and
    the teacher's greedy reply to that context, for every example.
    """
    opt = script.setup_args().parse_args(
        [
            '--teacher-model',
            teacher_file,
            '-t',
            'jsonfile',
            '--jsonfile-datapath',
            str(output),
            '-dp',
            datapath,
            '-bs',
            '16',
        ]
    )
    agent = create_teacher_agent(opt, inference='greedy', beam_size=1)
    contexts, labels, replies = [], [], []

    def step(batch, observations):
        preds, _ = agent._generate(batch, 1, agent.label_truncate or 256)
        for obs, text_vec, pred in zip(observations, batch.text_vec, preds):
            contexts.append(tuple(text_vec[text_vec != agent.NULL_IDX].tolist()))
            labels.append(obs['eval_labels'][0])
            replies.append(agent._v2t(pred[0]))

    BatchTap(agent, step)
    run_world(task_world(opt, agent, 'train'), 'replay')
    return contexts, labels, replies


def task_contexts(teacher_file, datapath, task):
    """The context ids of every example of ``task``'s valid split, as in training."""
    opt = script.setup_args().parse_args(
        ['--teacher-model', teacher_file, '-t', task, '-dp', datapath, '-bs', '16']
    )
    agent = create_teacher_agent(opt)
    contexts = []

    def step(batch, observations):
        for text_vec in batch.text_vec:
            contexts.append(tuple(text_vec[text_vec != agent.NULL_IDX].tolist()))

    BatchTap(agent, step)
    run_world(task_world(opt, agent, 'valid'), 'contexts')
    return sorted(contexts)


@pytest.fixture(scope='module')
def reverse_labels(teacher_file, datapath, tmp_path_factory):
    output = tmp_path_factory.mktemp('pseudo') / 'reverse.jsonl'
    summary = generate(teacher_file, datapath, output)
    return output, summary


# ---------------------------------------------------------------------------
# the format
# ---------------------------------------------------------------------------


def test_dataset_parses_back_with_the_teachers_greedy_replies(
    reverse_labels, teacher_file, datapath
):
    output, summary = reverse_labels
    assert summary['examples'] == summary['kept'] == 100 and summary['dropped'] == 0
    parsed = read_jsonfile(output, datapath)
    assert len(parsed) == 100
    assert all(m['episode_done'] for m in parsed)  # single-turn task, kept as such

    # the same contexts as the task, and the teacher's greedy replies to them
    from parlai.core.agents import create_agent_from_model_file

    original = read_jsonfile_free_task(datapath)
    assert sorted(m['text'] for m in parsed) == sorted(m['text'] for m in original)
    agent = create_agent_from_model_file(
        teacher_file,
        {'inference': 'greedy', 'skip_generation': False, 'datapath': datapath},
    )
    greedy = {}
    for start in range(0, len(original), 25):
        chunk = [
            {'text': m['text'], 'eval_labels': m['eval_labels']}
            for m in original[start : start + 25]
        ]
        for m, reply in zip(chunk, run_batch(agent, chunk)):
            greedy[m['text']] = reply['text']
    for m in parsed:
        assert m['eval_labels'] == [greedy[m['text']]]
        assert m['y_turn']['teacher_score'] <= 0

    metadata = json.load(open(os.path.splitext(output)[0] + '.metadata'))
    assert metadata['opt']['inference'] == 'greedy'
    assert metadata['summary']['kept'] == 100
    from parlai.utils.conversations import Conversations

    conversations = Conversations(str(output))
    assert len(conversations) == 100 and conversations.metadata is not None


def read_jsonfile_free_task(datapath):
    """integration_tests:reverse's valid split as ParlAI's task gives it."""
    from parlai.core.params import ParlaiParser
    from parlai.core.teachers import create_task_agent_from_taskname

    opt = ParlaiParser(True, False).parse_args(
        ['-t', TASK, '-dt', 'valid', '-dp', datapath]
    )
    teacher = create_task_agent_from_taskname(opt)[0]
    out = []
    while not teacher.epoch_done():
        out.append(teacher.act())
    return out


def test_gold_history_flattens_multiturn_episodes_to_the_tasks_contexts(
    teacher_file, datapath, tmp_path
):
    output = tmp_path / 'gold.jsonl'
    summary = generate(teacher_file, datapath, output, task=MULTITURN)
    assert summary['examples'] == summary['kept'] == summary['episodes'] == 400
    contexts, labels, replies = replay(teacher_file, datapath, output)
    # the student sees exactly the task's contexts (gold replies in the history)...
    assert sorted(contexts) == task_contexts(teacher_file, datapath, MULTITURN)
    # ...and learns the teacher's reply to each of them
    assert labels == replies


def test_teacher_history_keeps_episodes(teacher_file, datapath, tmp_path):
    output = tmp_path / 'teacher.jsonl'
    summary = generate(
        teacher_file, datapath, output, '--history-replies', 'teacher', task=MULTITURN
    )
    assert summary['examples'] == summary['kept'] == 400 and summary['episodes'] == 100
    parsed = read_jsonfile(output, datapath)
    assert [m['episode_done'] for m in parsed] == [False, False, False, True] * 100
    # later turns' history holds the teacher's replies, and every label is the
    # teacher's reply to exactly the context the student sees
    contexts, labels, replies = replay(teacher_file, datapath, output)
    assert labels == replies and len(labels) == 400


# ---------------------------------------------------------------------------
# the filter
# ---------------------------------------------------------------------------


def test_filter_hand_made_case():
    scores = [-1.0, -3.0, float('nan'), -2.0, -3.0, -0.5]
    assert select_replies(scores) == [True] * 6
    assert select_replies(scores, min_score=-2.5) == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert select_replies(scores, min_score=-2.0) == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    # floor(0.5 * 6) = 3 dropped: NaN first, then the tie at -3: the later one first
    assert select_replies(scores, drop_worst_fraction=0.5) == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert select_replies(scores, drop_worst_fraction=0.4) == [
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    assert select_replies(scores, drop_worst_fraction=0.1) == [True] * 6  # floor(0.6)
    with pytest.raises(DistillationError, match='not both'):
        select_replies(scores, min_score=-1, drop_worst_fraction=0.5)
    with pytest.raises(DistillationError, match=r'must be in \[0, 1\)'):
        select_replies(scores, drop_worst_fraction=1.0)
    episodes = [['a1', 'a2', 'a3'], ['b1'], ['c1', 'c2']]
    kept, removed = cut_episodes(episodes, [True, False, True, False, True, True])
    assert kept == [['a1'], ['c1', 'c2']] and removed == 3


def test_filters_drop_exactly_the_low_scoring_replies(
    reverse_labels, teacher_file, datapath, tmp_path
):
    output, _ = reverse_labels
    lines = [json.loads(line) for line in open(output)]
    scored = {
        (d['dialog'][0][0]['text'], d['dialog'][0][1]['text']): d['dialog'][0][1][
            'teacher_score'
        ]
        for d in lines
    }
    threshold = sorted(scored.values())[40]
    filtered = tmp_path / 'filtered.jsonl'
    summary = generate(
        teacher_file, datapath, filtered, '--min-teacher-score', repr(threshold)
    )
    expected = {key for key, score in scored.items() if score >= threshold}
    got = {(m['text'], m['eval_labels'][0]) for m in read_jsonfile(filtered, datapath)}
    assert got == expected and summary['kept'] == len(expected) == 60
    assert summary['dropped'] == summary['dropped_by_score'] == 40

    worst = tmp_path / 'worst.jsonl'
    summary = generate(teacher_file, datapath, worst, '--drop-worst-fraction', '0.25')
    assert summary['kept'] == 75
    kept_scores = [m['y_turn']['teacher_score'] for m in read_jsonfile(worst, datapath)]
    assert min(kept_scores) == sorted(scored.values())[25]


# ---------------------------------------------------------------------------
# bad input, and a student trained on the data
# ---------------------------------------------------------------------------


def test_bad_input_fails_before_generating(
    reverse_labels, teacher_file, datapath, tmp_path
):
    output, _ = reverse_labels
    with pytest.raises(DistillationError, match='already exists: pass --overwrite'):
        generate(teacher_file, datapath, output)
    with pytest.raises(DistillationError, match='not both'):
        generate(
            teacher_file,
            datapath,
            tmp_path / 'x.jsonl',
            '--min-teacher-score',
            '-1',
            '--drop-worst-fraction',
            '0.1',
        )
    with pytest.raises(DistillationError, match='teacher model file not found'):
        generate(str(tmp_path / 'missing'), datapath, tmp_path / 'x.jsonl')
    assert not os.path.exists(tmp_path / 'x.jsonl')


def test_history_that_cannot_be_flattened_is_refused(
    teacher_file, datapath, tmp_path, monkeypatch
):
    """A context whose flattened text would not give the task's ids stops the run
    (simulated: a history the flattening cannot reproduce)."""
    monkeypatch.setattr(
        script._Generator, '_flat_context', lambda self, history, text: text
    )
    with pytest.raises(DistillationError, match='--history-replies teacher'):
        generate(teacher_file, datapath, tmp_path / 'p.jsonl', task=MULTITURN)
    assert not os.path.exists(tmp_path / 'p.jsonl')


def test_student_trains_on_pseudo_labels(
    reverse_labels, teacher_file, datapath, tmp_path
):
    output, _ = reverse_labels
    model_file = str(tmp_path / 'student' / 'model')
    valid, _ = train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        task='jsonfile',
        jsonfile_datapath=str(output),
        n_encoder_layers=1,
        n_decoder_layers=1,
        embedding_size=16,
        ffn_size=32,
        pred_loss_coeff=1.0,
        model_file=model_file,
        max_train_steps=12,
        batchsize=8,
    )
    reports = train_reports(model_file)
    assert reports and 'pred_loss' in reports[-1] and 'distill_loss' in reports[-1]
    assert valid['exs'] > 0
