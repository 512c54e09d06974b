"""The ParlAI teacher of conversations read from an installed package, both sides.

A corpus task subclasses :class:`PackagedCorpusTeacher` and says where its
conversations come from (:meth:`~PackagedCorpusTeacher.corpus_turns`) and which
of them a split uses (:meth:`~PackagedCorpusTeacher.select_conversations`); the
episodes, counts and options are the same for every corpus.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.teachers import DialogTeacher
from parlai.utils.data import DatatypeHelper

from .episodes import DEFAULT_DELIMITER, build_episodes, count_episodes


class PackagedCorpusTeacher(DialogTeacher):
    """Multi-turn episodes of a packaged corpus's conversations, both sides.

    Reads ``opt['datatype']`` (its fold picks the split),
    ``opt['<task_name>_max_conversations']`` and, if present, the agent's
    ``opt['delimiter']``. Raises ``ValueError`` on a negative count.
    Nothing is downloaded and nothing is written to ``--datapath``.
    """

    #: The task's id, and the prefix of its options (``--<task_name>-max-conversations``).
    task_name: ClassVar[str]
    #: Names the data in the ``datafile`` that ``DialogTeacher`` requires.
    corpus_source: ClassVar[str]
    #: The title of the task's group of options.
    options_title: ClassVar[str]
    #: The help of ``--<task_name>-max-conversations``: the order the first N follow.
    max_conversations_help: ClassVar[str]
    #: Turns of each conversation used (0: all); a subclass may make it an option.
    max_turns: int = 0

    @classmethod
    def add_cmdline_args(
        cls, parser: ParlaiParser, partial_opt: Opt | None = None
    ) -> ParlaiParser:
        """Add ``--<task_name>-max-conversations`` and :meth:`add_corpus_options`."""
        super().add_cmdline_args(parser, partial_opt)
        group = parser.add_argument_group(cls.options_title)
        group.add_argument(
            f'--{cls.task_name}-max-conversations',
            type=int,
            default=0,
            help=cls.max_conversations_help,
        )
        cls.add_corpus_options(group)
        return parser

    @classmethod
    def add_corpus_options(cls, group: argparse._ArgumentGroup) -> None:
        """Add the corpus's own options to its group (none by default)."""

    def corpus_turns(self) -> Mapping[str, Sequence[str]]:
        """Every conversation of the corpus: id -> turns."""
        raise NotImplementedError

    @staticmethod
    def select_conversations(
        turns_by_id: Mapping[str, Sequence[str]], split: str, max_conversations: int
    ) -> list[str]:
        """The ids of the first ``max_conversations`` (0: all) of ``split``, in order."""
        raise NotImplementedError

    def read_options(self, opt: Opt) -> None:
        """Read and check the task's options (a subclass adds its own after these).

        :raises ValueError: on a negative ``--<task_name>-max-conversations``.
        """
        self.max_conversations = int(
            opt.get(f'{self.task_name}_max_conversations') or 0
        )
        if self.max_conversations < 0:
            raise ValueError(
                f'--{self.task_name}-max-conversations must be >= 0 (0: all), '
                f'got {self.max_conversations}'
            )

    def __init__(self, opt: Opt, shared: dict | None = None) -> None:
        opt = copy.deepcopy(opt)
        self.id = self.task_name
        self.fold = DatatypeHelper.fold(opt['datatype'])
        self.read_options(opt)
        self.delimiter = opt.get('delimiter') or DEFAULT_DELIMITER
        # DialogTeacher requires a datafile. This one names the data and is never
        # opened; train:stream never writes '<datafile>.lengths' because
        # num_episodes/num_examples are computed here.
        opt['datafile'] = f'{self.corpus_source}:{self.fold}'
        turns = self.corpus_turns()
        if shared and self._shared_key in shared:
            self.conversation_ids: list[str] = shared[self._shared_key]
        else:
            self.conversation_ids = self.select_conversations(
                turns, self.fold, self.max_conversations
            )
        self._counts = count_episodes(
            (len(turns[cid]) for cid in self.conversation_ids), self.max_turns
        )
        super().__init__(opt, shared)

    @property
    def _shared_key(self) -> str:
        return f'{self.task_name}_ids'

    def setup_data(self, datafile: str) -> Iterator[tuple[tuple[str, str], bool]]:
        """Yield ``((text, label), new_episode)`` for every example of the split.

        Conversations in the order of :attr:`conversation_ids`; each one's
        episodes as :func:`~anti_scaling.tasks.episodes.build_episodes` gives
        them. ``datafile`` is ignored (the data comes from the package).
        """
        turns = self.corpus_turns()
        for cid in self.conversation_ids:
            for episode in build_episodes(turns[cid], self.delimiter, self.max_turns):
                for i, (text, label) in enumerate(episode):
                    yield (text, label), i == 0

    def share(self) -> dict:
        """Share the selected conversation ids with copies (batch workers)."""
        shared = super().share()
        shared[self._shared_key] = self.conversation_ids
        return shared

    def num_episodes(self) -> int:
        """Episodes in the split (all of them, also when streaming)."""
        if self.stream:
            return self._counts[0]
        return super().num_episodes()

    def num_examples(self) -> int:
        """Examples in the split (all of them, also when streaming)."""
        if self.stream:
            return self._counts[1]
        return super().num_examples()
