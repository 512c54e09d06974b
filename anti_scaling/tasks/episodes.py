"""Conversations as splits and ParlAI episodes: the rules every corpus task shares.

Pure Python (no ParlAI import), so every rule can be tested on its own:

* **Splits.** A conversation belongs to ``train``, ``valid`` or ``test`` by the
  SHA-256 of a key its task chooses (:func:`split_of`): 90/5/5 percent,
  disjoint, covering every conversation, and the same on every machine and
  Python run. :func:`conversations_in_split` picks a split's conversations in
  the task's fixed order.
* **Episodes.** :func:`build_episodes` turns a conversation of turns
  ``t0, t1, ..., t(n-1)`` into up to two ParlAI episodes, one per side, so that
  every turn after the first is a label exactly once (see its docstring);
  :func:`count_episodes` counts them without building them.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: The splits, and the percentage of conversations each receives.
SPLIT_PERCENT: Mapping[str, int] = types.MappingProxyType(
    {'train': 90, 'valid': 5, 'test': 5}
)
#: Joins turns in the first example of the first speaker's episode; the same as
#: ParlAI's default ``--delimiter``, with which agents join their history.
DEFAULT_DELIMITER = '\n'

Episode = list[tuple[str, str]]


def collapse_whitespace(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space, stripped."""
    return ' '.join(text.split())


def split_of(key: str) -> str:
    """The split (``'train'``, ``'valid'`` or ``'test'``) a conversation belongs to.

    The first 8 bytes of the SHA-256 of the UTF-8 ``key`` (what the task splits
    by, e.g. the conversation id), as a big-endian integer modulo 100, fall
    into consecutive ranges of sizes :data:`SPLIT_PERCENT` (``[0, 90)`` train,
    ``[90, 95)`` valid, ``[95, 100)`` test). Depends on nothing but the key,
    unlike Python's salted ``hash()``.
    """
    digest = hashlib.sha256(key.encode('utf-8')).digest()
    bucket = int.from_bytes(digest[:8], 'big') % 100
    upper = 0
    for split, percent in SPLIT_PERCENT.items():
        upper += percent
        if bucket < upper:
            return split
    raise AssertionError('SPLIT_PERCENT must sum to 100')  # pragma: no cover


def conversations_in_split(
    turns_by_id: Mapping[str, Sequence[str]],
    split: str,
    max_conversations: int,
    split_key: Callable[[str, Sequence[str]], str],
    order_key: Callable[[str], Any] | None = None,
) -> list[str]:
    """The ids of ``split``'s conversations with at least 2 turns, in a fixed order.

    A conversation of fewer than 2 turns gives no example, so it is left out.

    :param turns_by_id: conversation id -> turns.
    :param split: ``'train'``, ``'valid'`` or ``'test'``.
    :param max_conversations: keep only the first this many (0: keep all).
    :param split_key: ``(id, turns) -> key`` whose :func:`split_of` is the split.
    :param order_key: sorts the ids (default: the ids themselves), so that the
        order does not depend on the source file's.
    :raises ValueError: on an unknown split or a negative ``max_conversations``.
    """
    if split not in SPLIT_PERCENT:
        raise ValueError(
            f'unknown split {split!r}; expected one of {list(SPLIT_PERCENT)}'
        )
    if max_conversations < 0:
        raise ValueError(f'max_conversations must be >= 0, got {max_conversations}')
    ids = sorted(
        (
            cid
            for cid, turns in turns_by_id.items()
            if len(turns) >= 2 and split_of(split_key(cid, turns)) == split
        ),
        key=order_key,
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

    :param turns: the conversation's turns.
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
