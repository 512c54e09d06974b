"""Open-domain conversations of the ``chitchat_dataset`` package as a ParlAI task.

``-t anti_scaling.tasks.chitchat`` uses :class:`DefaultTeacher`, re-exported here
from :mod:`anti_scaling.tasks.chitchat.agents` (which documents the task).
"""

from .agents import ChitchatTeacher, DefaultTeacher

__all__ = ['ChitchatTeacher', 'DefaultTeacher']
