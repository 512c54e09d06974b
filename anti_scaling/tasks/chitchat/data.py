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
  SHA-256 of its id (:func:`~anti_scaling.tasks.episodes.split_of`): 90/5/5
  percent, disjoint, covering every conversation, and the same on every machine
  and Python run.
* **Episodes.** :func:`~anti_scaling.tasks.episodes.build_episodes` turns a
  conversation of turns ``t0, t1, ..., t(n-1)`` into up to two ParlAI episodes,
  one per side, so that every turn after the first is a label exactly once.
"""

from __future__ import annotations

import functools
import json
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ..episodes import collapse_whitespace, conversations_in_split

__all__ = [
    'MESSAGE_JOINER',
    'conversation_turns',
    'dataset_path',
    'load_turns',
    'select_conversations',
]

#: Joins the messages of one speaker's consecutive run into a turn.
MESSAGE_JOINER = ' '


def dataset_path() -> str:
    """The path of ``dataset.json`` inside the installed ``chitchat_dataset`` package."""
    import chitchat_dataset

    return os.path.join(os.path.dirname(chitchat_dataset.__file__), 'dataset.json')


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
            text = collapse_whitespace(message['text'])
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
    return conversations_in_split(
        turns_by_id, split, max_conversations, lambda cid, turns: cid
    )
