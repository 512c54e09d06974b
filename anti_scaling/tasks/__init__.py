"""ParlAI tasks (teachers) shipped with anti_scaling.

Each task lives in its own sub-package, ``anti_scaling.tasks.<name>``, with its
teachers in ``agents.py`` as ParlAI expects; pass the dotted module path to
``-t`` (ParlAI only resolves short names such as ``-t babi`` inside ``parlai.tasks``).
"""
