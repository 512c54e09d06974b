"""The conversations of the ``chitchat_dataset`` package as turns, splits and episodes.

Pure Python (no ParlAI import), so every rule of the task can be tested on its own:

* **Turns.** A conversation's messages are read in order; consecutive messages of
  one sender form one turn, their texts joined with a single space
  (:data:`MESSAGE_JOINER`). Whitespace inside a message collapses to one space,
  so a turn never contains a newline (ParlAI's default history delimiter), and
  empty messages are dropped. Speakers are told apart by the ``sender`` field,
  not by the package's grouping of messages into runs (the two agree in the
  released data: no two consecutive runs share a sender).
* **Splits.** A conversation belongs to ``train``, ``valid`` or ``test`` by the
  SHA-256 of its id (:func:`split_of`): 90/5/5 percent, disjoint, covering every
  conversation, and the same on every machine and Python run.
* **Episodes.** :func:`build_episodes` turns a conversation of turns
  ``t0, t1, ..., t(n-1)`` into up to two ParlAI episodes, one per side, so that
  every turn after the first is a label exactly once (see its docstring).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The splits, and the percentage of conversations each receives.
SPLIT_PERCENT: Mapping[str, int] = types.MappingProxyType(
    {'train': 90, 'valid': 5, 'test': 5}
)
#: Joins the messages of one speaker's consecutive run into a turn.
MESSAGE_JOINER = ' '
#: Joins turns in the first example of the first speaker's episode; the same as
#: ParlAI's default ``--delimiter``, with which agents join their history.
DEFAULT_DELIMITER = '\n'

Episode = list[tuple[str, str]]


def dataset_path() -> str:
    """The path of ``dataset.json`` inside the installed ``chitchat_dataset`` package."""
    import chitchat_dataset

    return os.path.join(os.path.dirname(chitchat_dataset.__file__), 'dataset.json')


def _normalize(text: str) -> str:
    return ' '.join(text.split())


def conversation_turns(conversation: Mapping[str, Any]) -> tuple[str, ...]:
    """The turns of one conversation of the package's JSON, in order.

    :param conversation: ``{'messages': [[{'text', 'sender', ...}, ...], ...]}``;
        the outer list is read in order and flattened, and other keys are ignored.
    :return: one string per maximal run of consecutive non-empty messages by
        the same sender, the messages joined with :data:`MESSAGE_JOINER`.
    """
    turns: list[list[str]] = []
    last_sender: object = None
    for run in conversation['messages']:
        for message in run:
            text = _normalize(message['text'])
            if not text:
                continue
            if turns and message['sender'] == last_sender:
                turns[-1].append(text)
            else:
                turns.append([text])
                last_sender = message['sender']
    return tuple(MESSAGE_JOINER.join(parts) for parts in turns)


@functools.lru_cache(maxsize=2)
def load_turns(path: str | None = None) -> Mapping[str, tuple[str, ...]]:
    """The turns of every conversation of the dataset, by conversation id.

    Read once per process and path (about half a second; kept in memory as
    strings only, without timestamps or sender ids). The file is read as UTF-8
    whatever the locale.

    :param path: a JSON file in the package's format; default :func:`dataset_path`.
    :return: a read-only mapping in the file's order, conversation id -> turns.
    """
    with open(path or dataset_path(), encoding='utf-8') as fh:
        raw = json.load(fh)
    return types.MappingProxyType(
        {cid: conversation_turns(conv) for cid, conv in raw.items()}
    )


def split_of(conversation_id: str) -> str:
    """The split (``'train'``, ``'valid'`` or ``'test'``) a conversation belongs to.

    The first 8 bytes of the SHA-256 of the UTF-8 id, as a big-endian integer
    modulo 100, fall into consecutive ranges of sizes :data:`SPLIT_PERCENT`
    (``[0, 90)`` train, ``[90, 95)`` valid, ``[95, 100)`` test). Depends on
    nothing but the id, unlike Python's salted ``hash()``.
    """
    digest = hashlib.sha256(conversation_id.encode('utf-8')).digest()
    bucket = int.from_bytes(digest[:8], 'big') % 100
    upper = 0
    for split, percent in SPLIT_PERCENT.items():
        upper += percent
        if bucket < upper:
            return split
    raise AssertionError('SPLIT_PERCENT must sum to 100')  # pragma: no cover


def select_conversations(
    turns_by_id: Mapping[str, Sequence[str]],
    split: str,
    max_conversations: int = 0,
) -> list[str]:
    """The ids of the conversations a teacher of ``split`` uses, in its order.

    :param turns_by_id: conversation id -> turns, as from :func:`load_turns`.
    :param split: ``'train'``, ``'valid'`` or ``'test'``.
    :param max_conversations: keep only the first this many (0: keep all).
    :return: the ids of ``split`` with at least 2 turns (the others, a single
        speaker talking alone, give no example), sorted so that the order does
        not depend on the file's, cut to the first ``max_conversations``.
    """
    if split not in SPLIT_PERCENT:
        raise ValueError(
            f'unknown split {split!r}; expected one of {list(SPLIT_PERCENT)}'
        )
    if max_conversations < 0:
        raise ValueError(f'max_conversations must be >= 0, got {max_conversations}')
    ids = sorted(
        cid
        for cid, turns in turns_by_id.items()
        if len(turns) >= 2 and split_of(cid) == split
    )
    return ids[:max_conversations] if max_conversations else ids


def build_episodes(
    turns: Sequence[str], delimiter: str = DEFAULT_DELIMITER, max_turns: int = 0
) -> list[Episode]:
    """The ParlAI episodes of one conversation: lists of ``(text, label)`` pairs.

    With turns ``t0 .. t(n-1)`` (after keeping only the first ``max_turns`` if it
    is non-zero), the model plays each side once:

    * second speaker: ``(t0, t1), (t2, t3), (t4, t5), ...``;
    * first speaker: ``(t0 + delimiter + t1, t2), (t3, t4), (t5, t6), ...``.

    A trailing turn with no reply is not a text. An agent that joins its history
    with ``delimiter`` and adds each label to it (ParlAI's default
    ``--use-reply label``) thus sees, before the label ``t(k)``, exactly
    ``t0 .. t(k-1)`` joined with ``delimiter``: the whole conversation so far.
    Every turn but ``t0`` is a label exactly once. Conversations of fewer than 2
    turns give no episode, of exactly 2 only the second speaker's.

    :param turns: the conversation's turns, as from :func:`conversation_turns`.
    :param delimiter: the agent's ``--delimiter`` (ParlAI's default ``'\\n'``).
    :param max_turns: use only the first this many turns (0: all); 1 is refused
        as it would give no example.
    :return: zero, one or two non-empty episodes, second speaker's first.
    """
    if max_turns < 0 or max_turns == 1:
        raise ValueError(f'max_turns must be 0 (all) or >= 2, got {max_turns}')
    if max_turns:
        turns = turns[:max_turns]
    n = len(turns)
    episodes: list[Episode] = []
    if n >= 2:
        episodes.append([(turns[i - 1], turns[i]) for i in range(1, n, 2)])
    if n >= 3:
        first: Episode = [(turns[0] + delimiter + turns[1], turns[2])]
        first += [(turns[i - 1], turns[i]) for i in range(4, n, 2)]
        episodes.append(first)
    return episodes


def count_episodes(turn_counts: Iterable[int], max_turns: int = 0) -> tuple[int, int]:
    """``(episodes, examples)`` that :func:`build_episodes` gives, from turn counts.

    Equal to building every conversation's episodes and counting, without
    building any string: ``n`` turns (after ``max_turns``) give ``n - 1`` examples
    in ``min(n - 1, 2)`` episodes (none if ``n < 2``).
    """
    episodes = examples = 0
    for n in turn_counts:
        if max_turns:
            n = min(n, max_turns)
        if n >= 2:
            examples += n - 1
            episodes += min(n - 1, 2)
    return episodes, examples
