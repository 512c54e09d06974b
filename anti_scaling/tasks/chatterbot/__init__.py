"""English conversations of the ``chatterbot_corpus`` package as a ParlAI task.

``-t anti_scaling.tasks.chatterbot`` uses :class:`DefaultTeacher`, re-exported
here from :mod:`anti_scaling.tasks.chatterbot.agents` (which documents the task:
source, license, size and splits).
"""

from .agents import ChatterbotTeacher, DefaultTeacher

__all__ = ['ChatterbotTeacher', 'DefaultTeacher']
