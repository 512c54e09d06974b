"""The chitchat task: turns, splits, episodes, and the teacher in ParlAI's own runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from parlai.core.agents import create_agent
from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname

from anti_scaling.tasks.chitchat import agents as chitchat_agents
from anti_scaling.tasks.chitchat.data import (
    conversation_turns,
    load_turns,
    select_conversations,
)
from anti_scaling.tasks.episodes import (
    SPLIT_PERCENT,
    build_episodes,
    count_episodes,
    split_of,
)

torch.set_num_threads(1)

TASK = 'anti_scaling.tasks.chitchat'
MOCK_AGENT = 'parlai.agents.test_agents.test_agents:MockTorchAgent'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A hand-written conversation: speaker a, then b over two runs (one with an empty
# message), then a, b, a. Five turns once merged.
TINY = {
    'messages': [
        [
            {'text': 'Hi!', 'sender': 'a', 'timestamp': 't'},
            {'text': '  how are\tyou? ', 'sender': 'a', 'timestamp': 't'},
        ],
        [{'text': 'Fine, thanks.', 'sender': 'b', 'timestamp': 't'}],
        [
            {'text': '', 'sender': 'b', 'timestamp': 't'},
            {'text': 'And you?', 'sender': 'b', 'timestamp': 't'},
        ],
        [{'text': 'Great.', 'sender': 'a', 'timestamp': 't'}],
        [
            {'text': 'Bye', 'sender': 'b', 'timestamp': 't'},
            {'text': 'see you', 'sender': 'b', 'timestamp': 't'},
        ],
        [{'text': 'Bye!', 'sender': 'a', 'timestamp': 't'}],
    ]
}
T0, T1, T2 = 'Hi! how are you?', 'Fine, thanks. And you?', 'Great.'
T3, T4 = 'Bye see you', 'Bye!'


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise OSError('network access attempted in an offline test')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


def ids_in_split(split: str, n: int) -> list[str]:
    """The first ``n`` ids of the form ``tiny-<i>`` that fall into ``split``."""
    ids, i = [], 0
    while len(ids) < n:
        if split_of(f'tiny-{i}') == split:
            ids.append(f'tiny-{i}')
        i += 1
    return ids


def make_opt(datatype: str, *args: str, model: str | None = None):
    parser = ParlaiParser(True, model is not None)
    argv = ['-t', TASK, '-dt', datatype, '-dp', '/tmp/unused_parlai_data']
    if model:
        argv += ['-m', model]
    return parser.parse_args(argv + list(args))


def run_teacher(teacher) -> list:
    """Every action of one pass, stopping at the epoch end (or after 10k acts)."""
    acts = []
    for _ in range(10_000):
        act = teacher.act()
        if act.is_padding():
            break
        acts.append(act)
        if teacher.epoch_done():
            break
    return acts


# ---------------------------------------------------------------- turns, episodes


def test_turns_merge_one_speakers_messages():
    assert conversation_turns(TINY) == (T0, T1, T2, T3, T4)
    assert conversation_turns({'messages': []}) == ()


def test_turns_of_real_first_conversation():
    turns = load_turns()
    assert len(turns) == 7168
    first = turns['a07edb12-6b91-4138-b11e-02421888d699']
    assert first[:2] == (
        'Hello How are you doing today?',
        'whats up MD im doing good how are you doing?',
    )
    # no turn is empty and no turn contains the history delimiter
    assert all(t and '\n' not in t for ts in turns.values() for t in ts)


def test_episodes_both_sides_by_hand():
    second, first = build_episodes(conversation_turns(TINY))
    assert second == [(T0, T1), (T2, T3)]
    assert first == [(T0 + '\n' + T1, T2), (T3, T4)]
    # every turn after the first is a label exactly once
    labels = sorted(label for _, label in second + first)
    assert labels == sorted([T1, T2, T3, T4])


def test_episodes_short_conversations_and_max_turns():
    assert build_episodes(('only one',)) == []
    assert build_episodes(('q', 'a')) == [[('q', 'a')]]
    assert build_episodes(('q', 'a', 'b'), delimiter=' | ') == [
        [('q', 'a')],
        [('q | a', 'b')],
    ]
    turns = conversation_turns(TINY)
    assert build_episodes(turns, max_turns=3) == [[(T0, T1)], [(T0 + '\n' + T1, T2)]]
    with pytest.raises(ValueError):
        build_episodes(turns, max_turns=1)


@pytest.mark.parametrize('max_turns', [0, 2, 3, 6])
def test_count_episodes_matches_built_episodes(max_turns):
    lengths = range(0, 9)
    built = [build_episodes(['x'] * n, max_turns=max_turns) for n in lengths]
    expected = (sum(len(e) for e in built), sum(len(ep) for e in built for ep in e))
    assert count_episodes(lengths, max_turns) == expected


# ------------------------------------------------------------------------ splits


def test_splits_disjoint_covering_and_pinned():
    turns = load_turns()
    by_split = {s: {cid for cid in turns if split_of(cid) == s} for s in SPLIT_PERCENT}
    assert sum(len(ids) for ids in by_split.values()) == len(turns)
    assert set().union(*by_split.values()) == set(turns)
    # pinned: the hash rule and the data give these counts on every machine
    assert {s: len(ids) for s, ids in by_split.items()} == {
        'train': 6443,
        'valid': 350,
        'test': 375,
    }
    selected = {s: select_conversations(turns, s) for s in SPLIT_PERCENT}
    assert {s: len(ids) for s, ids in selected.items()} == {
        'train': 3621,
        'valid': 184,
        'test': 212,
    }
    for s, ids in selected.items():
        assert set(ids) <= by_split[s] and ids == sorted(ids)
    usable = {cid for cid, ts in turns.items() if len(ts) >= 2}
    assert set().union(*map(set, selected.values())) == usable


def test_splits_same_in_other_processes():
    """Python's hash seed must not matter (str hashes differ between runs)."""
    code = (
        'import json\n'
        'from anti_scaling.tasks.chitchat.data import *\n'
        'from anti_scaling.tasks.episodes import split_of\n'
        'turns = load_turns()\n'
        'print(json.dumps({"splits": {c: split_of(c) for c in list(turns)[:300]},'
        ' "valid": select_conversations(turns, "valid", 20)}))\n'
    )
    turns = load_turns()
    expected = {
        'splits': {c: split_of(c) for c in list(turns)[:300]},
        'valid': select_conversations(turns, 'valid', 20),
    }
    for seed in ('1', '2'):
        env = {**os.environ, 'PYTHONHASHSEED': seed, 'OMP_NUM_THREADS': '1'}
        out = subprocess.run(
            [sys.executable, '-c', code],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert json.loads(out) == expected


def test_max_conversations_is_a_prefix():
    turns = load_turns()
    full = select_conversations(turns, 'test')
    assert select_conversations(turns, 'test', 7) == full[:7]
    assert select_conversations(turns, 'test', 10**6) == full
    with pytest.raises(ValueError):
        select_conversations(turns, 'dev')


# ------------------------------------------------------------ the ParlAI teacher


@pytest.mark.parametrize('delimiter', ['\n', ' __ '])
def test_agent_history_is_the_conversation_so_far(monkeypatch, delimiter):
    """A real TorchAgent's history, fed by the teacher, is the whole conversation."""
    valid_ids = ids_in_split('valid', 3)
    tiny_turns = {
        valid_ids[0]: conversation_turns(TINY),
        valid_ids[1]: ('only one',),
        valid_ids[2]: ('q', 'a'),
        ids_in_split('train', 1)[0]: ('not', 'in', 'valid'),
    }
    monkeypatch.setattr(chitchat_agents, 'load_turns', lambda: tiny_turns)
    opt = make_opt('valid', '--delimiter', delimiter, model=MOCK_AGENT)
    agent = create_agent(opt)
    (teacher,) = create_task_agent_from_taskname(opt)
    seen = []
    for act in run_teacher(teacher):
        observation = agent.observe(act)
        seen.append((observation['full_text'], act['eval_labels'][0]))
        assert 'labels' not in act
        agent.act()  # the agent adds the label to its history, or resets it
    d = delimiter
    convs = sorted([valid_ids[0], valid_ids[2]])
    by_conv = {
        valid_ids[0]: [
            (T0, T1),
            (d.join([T0, T1, T2]), T3),
            (d.join([T0, T1]), T2),
            (d.join([T0, T1, T2, T3]), T4),
        ],
        valid_ids[2]: [('q', 'a')],
    }
    assert seen == by_conv[convs[0]] + by_conv[convs[1]]
    assert teacher.num_episodes() == 3 and teacher.num_examples() == 5


def test_teacher_counts_on_real_subsample(tmp_path):
    turns = load_turns()
    first5 = [c for c in sorted(turns) if split_of(c) == 'valid' and len(turns[c]) > 1]
    first5 = first5[:5]
    n_examples = sum(len(turns[c]) - 1 for c in first5)
    n_episodes = sum(1 if len(turns[c]) == 2 else 2 for c in first5)
    opt = make_opt('valid', '--chitchat-max-conversations', '5')
    (teacher,) = create_task_agent_from_taskname(opt)
    acts = run_teacher(teacher)
    assert len(acts) == teacher.num_examples() == n_examples
    assert sum(a['episode_done'] for a in acts) == teacher.num_episodes() == n_episodes
    assert acts[0]['text'] == turns[first5[0]][0]
    assert acts[0]['eval_labels'] == (turns[first5[0]][1],)


@pytest.mark.parametrize(
    'datatype, label_key, loops',
    [
        ('train', 'labels', True),
        ('train:stream', 'labels', True),
        ('train:ordered', 'labels', False),
        ('train:evalmode', 'eval_labels', False),
        ('test', 'eval_labels', False),
    ],
)
def test_datatypes(tmp_path, datatype, label_key, loops):
    opt = make_opt(datatype, '--chitchat-max-conversations', '3', '-dp', str(tmp_path))
    (teacher,) = create_task_agent_from_taskname(opt)
    n = teacher.num_examples()
    fold = datatype.split(':')[0]
    turns = load_turns()
    assert n == sum(len(turns[c]) - 1 for c in select_conversations(turns, fold, 3))
    acts = [teacher.act() for _ in range(n)]
    assert all(label_key in a and not a.is_padding() for a in acts)
    assert teacher.epoch_done() is not loops
    if loops:
        assert not teacher.act().is_padding()
    # nothing was written (streaming teachers usually cache '<datafile>.lengths')
    assert os.listdir(tmp_path) == []


def test_bad_options_raise():
    with pytest.raises(ValueError, match='max-turns'):
        create_task_agent_from_taskname(make_opt('valid', '--chitchat-max-turns', '1'))
    with pytest.raises(ValueError, match='max-conversations'):
        create_task_agent_from_taskname(
            make_opt('valid', '--chitchat-max-conversations', '-1')
        )


def test_build_dict_offline(tmp_path, no_network):
    from parlai.scripts.build_dict import BuildDict

    dict_file = tmp_path / 'dict' / 'dict'
    BuildDict.main(
        task=TASK,
        dict_file=str(dict_file),
        datapath=str(tmp_path / 'data'),
        chitchat_max_conversations=20,
    )
    tokens = {line.split('\t')[0] for line in dict_file.read_text().splitlines()}
    turns = load_turns()
    words = {
        word
        for cid in select_conversations(turns, 'train', 20)
        for turn in turns[cid]
        for word in turn.split()
        if word.isalpha()
    }
    assert len(words) > 100
    assert words <= tokens  # every turn of the 20 conversations was read
    assert len(tokens) < 3 * len(words)  # and only those (the full train: 45k)


def test_train_model_ten_steps(tmp_path, no_network):
    from parlai.scripts.train_model import TrainModel

    model_file = tmp_path / 'model' / 'model'
    model_file.parent.mkdir()
    TrainModel.main(
        task=TASK,
        model='transformer/generator',
        model_file=str(model_file),
        datapath=str(tmp_path / 'data'),
        chitchat_max_conversations=3,
        n_layers=1,
        embedding_size=16,
        ffn_size=32,
        n_heads=2,
        batchsize=4,
        text_truncate=64,
        label_truncate=32,
        max_train_steps=10,
        optimizer='adam',
        learningrate=1e-3,
        lr_scheduler='none',
        skip_generation=True,
        validation_every_n_epochs=-1,
        log_every_n_secs=-1,
        short_final_eval=True,
        validation_max_exs=16,
    )
    assert model_file.exists() and (tmp_path / 'model' / 'model.dict').exists()
    stats = json.loads((tmp_path / 'model' / 'model.trainstats').read_text())
    assert stats['train_steps'] == 10
    # ParlAI counted epochs against the examples of the 3 train conversations
    turns = load_turns()
    n_train = sum(len(turns[c]) - 1 for c in select_conversations(turns, 'train', 3))
    assert stats['total_epochs'] == pytest.approx(10 * 4 / n_train)
    assert stats['final_valid_report']['exs'] == 16
    opt = json.loads((tmp_path / 'model' / 'model.opt').read_text())
    assert opt['task'] == TASK and opt['chitchat_max_conversations'] == 3
