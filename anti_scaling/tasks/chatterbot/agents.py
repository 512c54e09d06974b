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

from collections.abc import Mapping, Sequence

from ..corpus_teacher import PackagedCorpusTeacher
from .data import load_turns, select_conversations


class ChatterbotTeacher(PackagedCorpusTeacher):
    """Multi-turn episodes of the ChatterBot English corpus, both sides.

    Reads ``opt['datatype']`` (its fold picks the split),
    ``opt['chatterbot_max_conversations']`` and, if present, the agent's
    ``opt['delimiter']``. Raises ``ValueError`` on a negative count.
    """

    task_name = 'chatterbot'
    corpus_source = 'chatterbot_corpus'
    options_title = 'ChatterBot corpus'
    max_conversations_help = (
        'Use only the first N conversations of the split, in a fixed '
        'order that mixes the topics (0: all). Deterministic; for quick runs.'
    )

    #: Which conversations of a split the teacher uses, and their order.
    select_conversations = staticmethod(select_conversations)

    def corpus_turns(self) -> Mapping[str, Sequence[str]]:
        """The distinct well-formed conversations of the package's English files."""
        return load_turns()


class DefaultTeacher(ChatterbotTeacher):
    """The teacher of ``-t anti_scaling.tasks.chatterbot``: :class:`ChatterbotTeacher`."""
