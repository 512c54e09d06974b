"""The English conversations of the ``chatterbot_corpus`` package as turns, splits and episodes.

Pure Python (no ParlAI import), so every rule of the task can be tested on its own:

* **Files.** Every ``data/english/*.yml`` file of the installed package, in the
  order of their names. Each holds ``conversations:``, a list of conversations,
  each a list of statements; consecutive statements alternate between the two
  speakers (the corpus names no senders). Files are read with YAML's base
  loader, so every statement stays the string written in the file (``Yes`` or
  ``1984`` are not turned into a boolean or a number).
* **Turns.** A statement's whitespace collapses to single spaces, so a turn
  never contains a newline (ParlAI's default history delimiter). An entry that
  is not a list of non-empty strings is skipped: its speakers cannot be told
  apart (1.3.3 has one, a trivia question whose answer lost its ``- `` and is
  read into the question's string).
* **Duplicates.** The corpus repeats itself (in 1.3.3, 2,026 English entries
  hold 898 distinct well-formed conversations; one tech-support exchange
  appears 121 times). Only the first occurrence of each distinct list of turns
  is kept.
* **Ids.** ``<file name without .yml>/<position in the file>``, e.g.
  ``greetings/3``: stable for one version of the package.
* **Splits.** By the *opening turn*: a conversation belongs to ``train``,
  ``valid`` or ``test`` by :func:`~anti_scaling.tasks.episodes.split_of`
  (the SHA-256 rule of the chitchat task, 90/5/5) of its first turn in lower
  case. The corpus is mostly one question and one answer, often the same
  question with several answers (``Hello`` -> ``Hi`` / ``Hi, how are you?``);
  keying on the opening keeps every answer to one opening in one split, so no
  valid or test conversation opens with a turn that opens a train conversation.
* **Episodes.** As in the chitchat task
  (:func:`~anti_scaling.tasks.episodes.build_episodes`): the model plays
  each side once, every turn after the first is a label exactly once.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ..episodes import collapse_whitespace, conversations_in_split, count_episodes

__all__ = [
    'conversation_turns',
    'corpus_dir',
    'corpus_files',
    'load_turns',
    'read_file',
    'select_conversations',
    'split_key',
    'split_statistics',
]


def corpus_dir() -> str:
    """The ``data/english`` folder inside the installed ``chatterbot_corpus`` package."""
    import chatterbot_corpus

    return os.path.join(os.path.dirname(chatterbot_corpus.__file__), 'data', 'english')


def conversation_turns(statements: Any) -> tuple[str, ...] | None:
    """The turns of one conversation: its statements with whitespace collapsed.

    :param statements: one entry of a file's ``conversations`` list.
    :return: the turns, or ``None`` for an entry that is not a list of non-empty
        strings (a malformed entry: its speakers cannot be told apart).
    """
    if not isinstance(statements, list) or not all(
        isinstance(s, str) for s in statements
    ):
        return None
    turns = tuple(collapse_whitespace(s) for s in statements)
    return turns if all(turns) else None


def read_file(path: str) -> list[tuple[str, tuple[str, ...] | None]]:
    """``(id, turns)`` for every entry of one ``*.yml`` file, in file order.

    Ids are ``<file name without .yml>/<position>``; ``turns`` is ``None`` for a
    malformed entry (see :func:`conversation_turns`). The file is read as UTF-8
    with YAML's base loader, which keeps every scalar a string.

    :raises ValueError: if the file's ``conversations`` is not a list.
    """
    import yaml

    with open(path, encoding='utf-8') as fh:
        data = yaml.load(fh, Loader=yaml.BaseLoader)
    conversations = data.get('conversations', []) if isinstance(data, dict) else []
    if not isinstance(conversations, list):
        raise ValueError(f'{path}: "conversations" must be a list')
    stem = os.path.splitext(os.path.basename(path))[0]
    return [(f'{stem}/{i}', conversation_turns(c)) for i, c in enumerate(conversations)]


def corpus_files(directory: str | None = None) -> list[str]:
    """The ``*.yml`` files of ``directory`` (default :func:`corpus_dir`), by name.

    :raises ValueError: if there is none.
    """
    folder = directory or corpus_dir()
    paths = sorted(glob.glob(os.path.join(folder, '*.yml')))
    if not paths:
        raise ValueError(f'no *.yml conversation file in {folder}')
    return paths


@functools.lru_cache(maxsize=2)
def load_turns(directory: str | None = None) -> Mapping[str, tuple[str, ...]]:
    """The turns of every distinct well-formed conversation of the corpus, by id.

    :param directory: a folder of ``*.yml`` files in the package's format;
        default :func:`corpus_dir`.
    :return: a read-only mapping, in file-name then file order, id -> turns;
        malformed entries and conversations equal (turn by turn) to an earlier
        one are left out.
    """
    seen: set[tuple[str, ...]] = set()
    turns_by_id: dict[str, tuple[str, ...]] = {}
    for path in corpus_files(directory):
        for cid, turns in read_file(path):
            if turns is not None and turns not in seen:
                seen.add(turns)
                turns_by_id[cid] = turns
    return types.MappingProxyType(turns_by_id)


def split_key(turns: Sequence[str]) -> str:
    """What decides a conversation's split: its opening turn in lower case."""
    return turns[0].casefold()


def _order_key(conversation_id: str) -> str:
    # Mixes the files, so that the first N conversations of a split are not all
    # from the alphabetically first topic.
    return hashlib.sha256(conversation_id.encode('utf-8')).hexdigest()


def select_conversations(
    turns_by_id: Mapping[str, Sequence[str]],
    split: str,
    max_conversations: int = 0,
) -> list[str]:
    """The ids of the conversations a teacher of ``split`` uses, in its order.

    :param turns_by_id: id -> turns, as from :func:`load_turns`.
    :param split: ``'train'``, ``'valid'`` or ``'test'``.
    :param max_conversations: keep only the first this many (0: keep all).
    :return: the ids of ``split`` with at least 2 turns, ordered by the SHA-256
        of the id (a fixed shuffle of the topics), cut to ``max_conversations``.
    """
    return conversations_in_split(
        turns_by_id,
        split,
        max_conversations,
        lambda cid, turns: split_key(turns),
        order_key=_order_key,
    )


def split_statistics(
    turns_by_id: Mapping[str, Sequence[str]], split: str
) -> dict[str, int]:
    """Sizes of one split: what a teacher of it gives, and its whitespace tokens.

    :return: ``conversations``, ``turns``, ``tokens`` (whitespace-separated, all
        turns), ``episodes``, ``examples`` and ``label_tokens`` (whitespace
        tokens of the turns that are labels: every turn but the first).
    """
    ids = select_conversations(turns_by_id, split)
    convs = [turns_by_id[cid] for cid in ids]
    episodes, examples = count_episodes(len(t) for t in convs)
    return {
        'conversations': len(convs),
        'turns': sum(len(t) for t in convs),
        'tokens': sum(len(turn.split()) for t in convs for turn in t),
        'episodes': episodes,
        'examples': examples,
        'label_tokens': sum(len(turn.split()) for t in convs for turn in t[1:]),
    }
