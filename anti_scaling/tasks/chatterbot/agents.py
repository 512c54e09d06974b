"""ParlAI teacher for the English conversations of the ``chatterbot_corpus`` package.

Source: the ChatterBot language training corpus (PyPI ``chatterbot-corpus``
1.3.3, BSD 3-Clause; user-contributed, "to train chat bots to communicate"),
read offline from the YAML files inside the installed package (nothing is
downloaded, and nothing is written to ``--datapath``)::

    parlai display_data -t anti_scaling.tasks.chatterbot -dp /tmp/parlai_data

What it is, honestly: small, written rather than spoken, and mostly one
question and one answer. Its 21 English topic files (greetings, conversations,
emotion, trivia, ai, tech support, ...) hold 2,026 conversations, of which 898
are distinct and well formed (1,127 repeat an earlier one; one trivia entry is
malformed in the package and skipped); 819 of those have two turns, the
longest 26. It is a second corpus *unlike* the chitchat task's: short
bot-style exchanges instead of long conversations between two people.

Examples (see :mod:`anti_scaling.tasks.chatterbot.data` for the exact rules):

* a *turn* is one statement of the file (speakers alternate), whitespace
  collapsed; duplicate conversations are kept once;
* episodes as in ``anti_scaling.tasks.chitchat``: a conversation of ``n``
  turns gives ``n - 1`` examples, in one episode per side (``n >= 3``) or one
  (``n = 2``); the context of each label is the whole conversation so far;
* splits are 90/5/5 percent train/valid/test by the SHA-256 of the opening turn
  in lower case: disjoint, covering every conversation, the same on every
  machine, and every answer to one opening falls in one split. ``--datatype``
  works as for any ParlAI ``DialogTeacher`` (``train`` draws episodes at random
  forever, ``train:stream`` loops in order, ``train:ordered`` goes once;
  ``train:evalmode``, ``valid`` and ``test`` go once and give ``eval_labels``).

=========  =============  =====  ==================  ========  ========  ============
split      conversations  turns  tokens (whitespace)  episodes  examples  label tokens
=========  =============  =====  ==================  ========  ========  ============
train      799            1,856  14,764              871       1,057     9,929
valid      48             102    625                 50        54        388
test       51             119    848                 56        68        568
=========  =============  =====  ==================  ========  ========  ============

Option: ``--chatterbot-max-conversations N`` uses only the first ``N``
conversations of the split (in a fixed order that mixes the topics).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.teachers import DialogTeacher
from parlai.utils.data import DatatypeHelper

from ..chitchat.data import DEFAULT_DELIMITER
from .data import build_episodes, count_episodes, load_turns, select_conversations


class ChatterbotTeacher(DialogTeacher):
    """Multi-turn episodes of the ChatterBot English corpus, both sides.

    Reads ``opt['datatype']`` (its fold picks the split),
    ``opt['chatterbot_max_conversations']`` and, if present, the agent's
    ``opt['delimiter']``. Raises ``ValueError`` on a negative count.
    """

    @classmethod
    def add_cmdline_args(
        cls, parser: ParlaiParser, partial_opt: Opt | None = None
    ) -> ParlaiParser:
        """Add ``--chatterbot-max-conversations``."""
        super().add_cmdline_args(parser, partial_opt)
        group = parser.add_argument_group('ChatterBot corpus')
        group.add_argument(
            '--chatterbot-max-conversations',
            type=int,
            default=0,
            help='Use only the first N conversations of the split, in a fixed '
            'order that mixes the topics (0: all). Deterministic; for quick runs.',
        )
        return parser

    def __init__(self, opt: Opt, shared: dict | None = None) -> None:
        opt = copy.deepcopy(opt)
        self.id = 'chatterbot'
        self.fold = DatatypeHelper.fold(opt['datatype'])
        self.max_conversations = int(opt.get('chatterbot_max_conversations') or 0)
        if self.max_conversations < 0:
            raise ValueError(
                '--chatterbot-max-conversations must be >= 0 (0: all), '
                f'got {self.max_conversations}'
            )
        self.delimiter = opt.get('delimiter') or DEFAULT_DELIMITER
        # DialogTeacher requires a datafile. This one names the data and is never
        # opened; train:stream never writes '<datafile>.lengths' because
        # num_episodes/num_examples are computed here.
        opt['datafile'] = f'chatterbot_corpus:{self.fold}'
        turns = load_turns()
        if shared and 'chatterbot_ids' in shared:
            self.conversation_ids: list[str] = shared['chatterbot_ids']
        else:
            self.conversation_ids = select_conversations(
                turns, self.fold, self.max_conversations
            )
        self._counts = count_episodes(len(turns[c]) for c in self.conversation_ids)
        super().__init__(opt, shared)

    def setup_data(self, datafile: str) -> Iterator[tuple[tuple[str, str], bool]]:
        """Yield ``((text, label), new_episode)`` for every example of the split.

        Conversations in the order of :attr:`conversation_ids`; each one's
        episodes as :func:`~anti_scaling.tasks.chitchat.data.build_episodes`
        gives them. ``datafile`` is ignored (the data comes from the package).
        """
        turns = load_turns()
        for cid in self.conversation_ids:
            for episode in build_episodes(turns[cid], self.delimiter):
                for i, (text, label) in enumerate(episode):
                    yield (text, label), i == 0

    def share(self) -> dict:
        """Share the selected conversation ids with copies (batch workers)."""
        shared = super().share()
        shared['chatterbot_ids'] = self.conversation_ids
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


class DefaultTeacher(ChatterbotTeacher):
    """The teacher of ``-t anti_scaling.tasks.chatterbot``: :class:`ChatterbotTeacher`."""
