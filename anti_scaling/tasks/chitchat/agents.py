"""ParlAI teacher for the open-domain conversations of the ``chitchat_dataset`` package.

The Chit Chat Challenge dataset (PyPI ``chitchat-dataset``, MIT): 7,168 human
conversations between two people, 258k messages, read offline from the JSON
file inside the installed package (nothing is downloaded, and nothing is
written to ``--datapath``).

Use it with any agent, e.g. ``parlai train_model -m transformer/generator``::

    parlai display_data -t anti_scaling.tasks.chitchat -dp /tmp/parlai_data

``-t anti_scaling.tasks.chitchat`` is the shortest name ParlAI 1.7.2 resolves:
short names (``-t babi``) are only looked up inside ``parlai.tasks``, and a
dotted name is imported as a module whose ``DefaultTeacher`` is used, so the
package ``anti_scaling.tasks.chitchat`` re-exports it. The longer
``-t anti_scaling.tasks.chitchat.agents`` and
``-t anti_scaling.tasks.chitchat.agents:ChitchatTeacher`` name the same teacher.

Examples (see :mod:`anti_scaling.tasks.chitchat.data` for the exact rules):

* a *turn* is the run of consecutive messages of one sender, joined with a
  space; conversations with a single turn (3,150 of them: the partner never
  replied) give no example;
* each conversation of ``n >= 3`` turns gives two episodes, one per side (the
  model plays the second speaker, then the first); with ``n = 2`` only the
  second speaker's. Every turn after the first is a label exactly once, so a
  conversation gives ``n - 1`` examples. (ParlAI's DailyDialog teacher instead
  opens the first speaker's side with ``__SILENCE__``; here the opening turn,
  which nothing precedes, is never a label);
* the context of each label is the whole conversation so far, as ParlAI's
  history builds it from the episode's ``text`` fields and the agent's own
  previous labels joined with ``--delimiter`` (the first example of the first
  speaker's episode carries two turns, joined with the agent's ``--delimiter``
  if the options have one, else ``'\\n'``). Contexts are long (in train, a
  mean of about 1,060 whitespace tokens, median 465; labels about 18): agents
  truncate them with ``--text-truncate`` / ``--history-size`` as usual;
* splits are by conversation, 90/5/5 percent train/valid/test by the SHA-256
  of the conversation id: disjoint, covering every conversation, the same on
  every machine. ``--datatype`` works as for any ParlAI ``DialogTeacher``:
  ``train`` draws episodes at random (with replacement) forever,
  ``train:stream`` loops over them in order, ``train:ordered`` goes through
  them once in order; ``train:evalmode``, ``valid`` and ``test`` go through
  their split once in order and give ``eval_labels`` instead of ``labels``.
  Train/valid/test hold 6,443 / 350 / 375 conversations, of which 3,621 / 184 /
  212 give examples: 6,738 / 346 / 395 episodes, 118,217 / 6,195 / 7,136
  examples.

Options: ``--chitchat-max-conversations N`` uses only the first ``N``
conversations of the split (ordered by id, counting only those that give
examples); ``--chitchat-max-turns K`` uses only the first ``K`` turns of each
conversation.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from parlai.core.opt import Opt

from ..corpus_teacher import PackagedCorpusTeacher
from .data import load_turns, select_conversations


class ChitchatTeacher(PackagedCorpusTeacher):
    """Multi-turn episodes of the Chit Chat Challenge dataset, both sides.

    Reads ``opt['datatype']`` (its fold picks the split),
    ``opt['chitchat_max_conversations']``, ``opt['chitchat_max_turns']`` and, if
    present, the agent's ``opt['delimiter']``. Raises ``ValueError`` on a
    negative count or ``--chitchat-max-turns 1``.
    """

    task_name = 'chitchat'
    corpus_source = 'chitchat_dataset'
    options_title = 'Chitchat dataset'
    max_conversations_help = (
        'Use only the first N conversations of the split, in order of '
        'their ids (0: all). Deterministic; for quick runs.'
    )

    @classmethod
    def add_corpus_options(cls, group: argparse._ArgumentGroup) -> None:
        """Add ``--chitchat-max-turns``."""
        group.add_argument(
            '--chitchat-max-turns',
            type=int,
            default=0,
            help='Use only the first K turns (runs of one speaker) of each '
            'conversation (0: all; otherwise at least 2).',
        )

    def read_options(self, opt: Opt) -> None:
        """Read ``--chitchat-max-conversations`` and ``--chitchat-max-turns``.

        :raises ValueError: on a negative count or ``--chitchat-max-turns 1``.
        """
        super().read_options(opt)
        self.max_turns = int(opt.get('chitchat_max_turns') or 0)
        if self.max_turns < 0 or self.max_turns == 1:
            raise ValueError(
                f'--chitchat-max-turns must be 0 (all) or >= 2, got {self.max_turns}'
            )

    #: Which conversations of a split the teacher uses, and their order.
    select_conversations = staticmethod(select_conversations)

    def corpus_turns(self) -> Mapping[str, Sequence[str]]:
        """Every conversation of the package's ``dataset.json``."""
        return load_turns()


class DefaultTeacher(ChitchatTeacher):
    """The teacher of ``-t anti_scaling.tasks.chitchat``: :class:`ChitchatTeacher`."""
