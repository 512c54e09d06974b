"""The chatterbot task: files, turns, duplicates, splits, and the teacher in ParlAI's runs."""

from __future__ import annotations

import hashlib
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

from anti_scaling.tasks.chatterbot import agents as chatterbot_agents
from anti_scaling.tasks.chatterbot.data import (
    conversation_turns,
    corpus_dir,
    corpus_files,
    load_turns,
    read_file,
    select_conversations,
    split_key,
    split_statistics,
)
from anti_scaling.tasks.episodes import SPLIT_PERCENT, split_of

torch.set_num_threads(1)

TASK = 'anti_scaling.tasks.chatterbot'
MOCK_AGENT = 'parlai.agents.test_agents.test_agents:MockTorchAgent'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two hand-written files in the package's format. b.yml repeats a conversation of
# a.yml (with other spacing), holds a malformed entry (a bare string, as in the
# package's trivia.yml) and one with an empty statement.
A_YML = """categories:
- tiny
conversations:
- - Hello
  - Hi,   how are
    you?
  - Yes
- - Is it 1984?
  - 1984
- - Good
    day
  - 'null'
"""
B_YML = """categories:
- more
conversations:
- - Is it 1984?
  - '1984'
- Which number? - '22'
- - Anyone?
  - ''
- - Bye
  - See you
"""


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise OSError('network access attempted in an offline test')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture
def tiny_dir(tmp_path):
    folder = tmp_path / 'english'
    folder.mkdir()
    # written in reverse name order: reading must follow the names, not the disk
    (folder / 'b.yml').write_text(B_YML, encoding='utf-8')
    (folder / 'a.yml').write_text(A_YML, encoding='utf-8')
    (folder / 'notes.txt').write_text('not a corpus file')
    return str(folder)


def openings_in_split(split: str, n: int) -> list[str]:
    """The first ``n`` openings of the form ``q<i>`` that fall into ``split``."""
    found, i = [], 0
    while len(found) < n:
        if split_of(f'q{i}') == split:
            found.append(f'q{i}')
        i += 1
    return found


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


# -------------------------------------------------------- files, turns, duplicates


def test_turns_and_malformed_entries():
    assert conversation_turns([' a\n b ', 'c\td']) == ('a b', 'c d')
    assert conversation_turns('Which number? - 22') is None
    assert conversation_turns(['q', '']) is None
    assert conversation_turns(['q', ['nested']]) is None


def test_read_file_keeps_strings_and_numbers_entries(tiny_dir):
    entries = read_file(os.path.join(tiny_dir, 'a.yml'))
    assert entries == [
        ('a/0', ('Hello', 'Hi, how are you?', 'Yes')),
        ('a/1', ('Is it 1984?', '1984')),
        ('a/2', ('Good day', 'null')),
    ]
    assert read_file(os.path.join(tiny_dir, 'b.yml')) == [
        ('b/0', ('Is it 1984?', '1984')),
        ('b/1', None),
        ('b/2', None),
        ('b/3', ('Bye', 'See you')),
    ]


def test_load_turns_in_name_order_without_duplicates(tiny_dir, tmp_path):
    turns = load_turns(tiny_dir)
    assert list(turns.items()) == [
        ('a/0', ('Hello', 'Hi, how are you?', 'Yes')),
        ('a/1', ('Is it 1984?', '1984')),
        ('a/2', ('Good day', 'null')),
        ('b/3', ('Bye', 'See you')),
    ]
    with pytest.raises(ValueError, match='no \\*.yml'):
        load_turns(str(tmp_path))
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'x.yml').write_text('conversations: not a list\n')
    with pytest.raises(ValueError, match='must be a list'):
        load_turns(str(bad))


def test_real_corpus_files_and_counts():
    paths = corpus_files()
    assert os.path.dirname(paths[0]) == corpus_dir()
    assert len(paths) == 21
    entries = [e for path in paths for e in read_file(path)]
    assert len(entries) == 2026
    assert [cid for cid, turns in entries if turns is None] == ['trivia/13']
    turns = load_turns()
    distinct = {t for _, t in entries if t is not None}
    assert len(turns) == len(distinct) == 898
    assert turns['greetings/0'] == ('Hello', 'Hi')
    assert all(len(ts) >= 2 for ts in turns.values())
    assert all(t and '\n' not in t for ts in turns.values() for t in ts)


# ------------------------------------------------------------------------ splits


def test_splits_disjoint_covering_and_keyed_by_opening():
    turns = load_turns()
    selected = {s: select_conversations(turns, s) for s in SPLIT_PERCENT}
    assert {s: len(ids) for s, ids in selected.items()} == {
        'train': 799,
        'valid': 48,
        'test': 51,
    }
    all_ids = [cid for ids in selected.values() for cid in ids]
    assert len(all_ids) == len(set(all_ids)) == len(turns)
    for split, ids in selected.items():
        for cid in ids:
            assert split_of(turns[cid][0].lower()) == split
    openings = {s: {split_key(turns[c]) for c in ids} for s, ids in selected.items()}
    assert not openings['train'] & openings['valid']
    assert not openings['train'] & openings['test']
    assert not openings['valid'] & openings['test']


def test_same_opening_any_case_same_split():
    # an opening whose own case and lower case would hash to different splits
    upper = next(
        q for i in range(1000) if split_of(q := f'Hello Q{i}') != split_of(q.lower())
    )
    turns = {'x/0': (upper, 'a'), 'x/1': (upper.lower(), 'b'), 'x/2': (upper, 'c')}
    split = split_of(upper.lower())
    assert select_conversations(turns, split) == sorted(
        turns, key=lambda c: hashlib.sha256(c.encode()).hexdigest()
    )
    assert not select_conversations(turns, split_of(upper))


def test_split_order_prefix_and_bad_input():
    turns = load_turns()
    full = select_conversations(turns, 'test')
    keys = [hashlib.sha256(c.encode('utf-8')).hexdigest() for c in full]
    assert keys == sorted(keys)
    assert select_conversations(turns, 'test', 7) == full[:7]
    assert select_conversations(turns, 'test', 10**6) == full
    with pytest.raises(ValueError, match='unknown split'):
        select_conversations(turns, 'dev')
    with pytest.raises(ValueError, match='>= 0'):
        select_conversations(turns, 'test', -1)


def test_splits_same_in_other_processes():
    """Python's hash seed must not matter (str hashes differ between runs)."""
    code = (
        'import json\n'
        'from anti_scaling.tasks.chatterbot.data import *\n'
        'from anti_scaling.tasks.episodes import SPLIT_PERCENT\n'
        'turns = load_turns()\n'
        'print(json.dumps({s: select_conversations(turns, s) for s in SPLIT_PERCENT}))\n'
    )
    turns = load_turns()
    expected = {s: select_conversations(turns, s) for s in SPLIT_PERCENT}
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


def test_split_statistics_by_hand_and_real():
    (a,) = openings_in_split('valid', 1)
    turns = {'t/0': (a, 'b c', 'd'), 't/1': ('q', 'r'), 't/2': ('alone',)}
    turns = {c: t for c, t in turns.items() if c == 't/0' or split_of(t[0]) != 'valid'}
    # one valid conversation of 3 turns: 2 episodes, 2 examples, 4 tokens, 3 in labels
    assert split_statistics(turns, 'valid') == {
        'conversations': 1,
        'turns': 3,
        'tokens': 4,
        'episodes': 2,
        'examples': 2,
        'label_tokens': 3,
    }
    real = {s: split_statistics(load_turns(), s) for s in SPLIT_PERCENT}
    assert real['train'] == {
        'conversations': 799,
        'turns': 1856,
        'tokens': 14764,
        'episodes': 871,
        'examples': 1057,
        'label_tokens': 9929,
    }
    assert [real[s]['examples'] for s in ('valid', 'test')] == [54, 68]


# ------------------------------------------------------------ the ParlAI teacher


@pytest.mark.parametrize('delimiter', ['\n', ' __ '])
def test_agent_history_is_the_conversation_so_far(monkeypatch, delimiter):
    """A real TorchAgent's history, fed by the teacher, is the whole conversation."""
    q0, q1 = openings_in_split('valid', 2)
    (t0,) = openings_in_split('train', 1)
    tiny = {
        'x/0': (q0, 'b', 'c', 'd'),
        'x/1': (q1, 'z'),
        'x/2': (t0, 'not in valid'),
    }
    monkeypatch.setattr(chatterbot_agents, 'load_turns', lambda: tiny)
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
    by_conv = {
        'x/0': [
            (q0, 'b'),
            (d.join([q0, 'b', 'c']), 'd'),
            (d.join([q0, 'b']), 'c'),
        ],
        'x/1': [(q1, 'z')],
    }
    order = select_conversations(tiny, 'valid')
    assert order == sorted(
        ['x/0', 'x/1'], key=lambda c: hashlib.sha256(c.encode()).hexdigest()
    )
    assert seen == by_conv[order[0]] + by_conv[order[1]]
    assert teacher.num_episodes() == 3 and teacher.num_examples() == 4


def test_teacher_counts_on_real_subsample():
    turns = load_turns()
    first5 = select_conversations(turns, 'valid', 5)
    n_examples = sum(len(turns[c]) - 1 for c in first5)
    n_episodes = sum(1 if len(turns[c]) == 2 else 2 for c in first5)
    opt = make_opt('valid', '--chatterbot-max-conversations', '5')
    (teacher,) = create_task_agent_from_taskname(opt)
    acts = run_teacher(teacher)
    assert len(acts) == teacher.num_examples() == n_examples
    assert sum(a['episode_done'] for a in acts) == teacher.num_episodes() == n_episodes
    assert acts[0]['text'] == turns[first5[0]][0]
    assert acts[0]['eval_labels'] == (turns[first5[0]][1],)
    (full,) = create_task_agent_from_taskname(make_opt('test'))
    assert (full.num_episodes(), full.num_examples()) == (56, 68)


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
    opt = make_opt(
        datatype, '--chatterbot-max-conversations', '3', '-dp', str(tmp_path)
    )
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


def test_bad_option_raises():
    with pytest.raises(ValueError, match='max-conversations'):
        create_task_agent_from_taskname(
            make_opt('valid', '--chatterbot-max-conversations', '-1')
        )


def test_train_model_ten_steps_offline(tmp_path, no_network):
    from parlai.scripts.train_model import TrainModel

    model_file = tmp_path / 'model' / 'model'
    model_file.parent.mkdir()
    TrainModel.main(
        task=TASK,
        model='transformer/generator',
        model_file=str(model_file),
        datapath=str(tmp_path / 'data'),
        chatterbot_max_conversations=20,
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
    stats = json.loads((tmp_path / 'model' / 'model.trainstats').read_text())
    assert stats['train_steps'] == 10
    # ParlAI counted epochs against the examples of the 20 train conversations
    turns = load_turns()
    train20 = select_conversations(turns, 'train', 20)
    n_train = sum(len(turns[c]) - 1 for c in train20)
    assert stats['total_epochs'] == pytest.approx(10 * 4 / n_train)
    assert stats['final_valid_report']['exs'] == 16
    # the dictionary was built from those 20 conversations only
    tokens = {
        line.split('\t')[0]
        for line in (tmp_path / 'model' / 'model.dict').read_text().splitlines()
    }
    words = {w for c in train20 for t in turns[c] for w in t.split() if w.isalpha()}
    assert len(words) > 30 and words <= tokens
    opt = json.loads((tmp_path / 'model' / 'model.opt').read_text())
    assert opt['task'] == TASK and opt['chatterbot_max_conversations'] == 20
