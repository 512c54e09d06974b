"""Replies in text from an exported CTranslate2 folder: the serving wing's Python API.

    from anti_scaling.serving import Replier

    replier = Replier('student-ct2', threads=1)
    replier.reply(['hi there!', 'hello, how are you?', 'fine. and you?'])  # one history
    replier.reply([['hi!'], ['what do you do?', 'i teach.', 'nice!']])     # a batch

A history is ParlAI's: the turns of a conversation, oldest first, the last one
the partner's (a text alone is a one-turn history); it is turned into the
model's input exactly as ParlAI did in training (:mod:`anti_scaling.export.ct2.engine`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import DistillationError
from ..export.ct2.engine import Engine
from ..export.ct2.generation import GENERATION_FILE
from ..export.hf.parlai_inputs import SETTINGS_FILE

#: What a folder written by ``export_ct2`` holds, at least.
FOLDER_FILES = (
    'model.bin',
    'config.json',
    'shared_vocabulary.json',
    'tokenizer.json',
    SETTINGS_FILE,
    GENERATION_FILE,
)

#: One history: a text, or its turns oldest first.
History = str | Sequence[str]


def require_serve_extra() -> None:
    """One line naming the extra when ``ctranslate2`` is missing."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise DistillationError(
            "ctranslate2 is not installed: pip install -c constraints.txt -e '.[serve]'"
        ) from None


def check_history(history: Any, where: str = 'history') -> list[str]:
    """``history`` as a list of turns; one line when it is not a text or a list of texts."""
    if isinstance(history, str):
        return [history]
    if (
        isinstance(history, (list, tuple))
        and history
        and all(isinstance(t, str) for t in history)
    ):
        return list(history)
    raise DistillationError(
        f'{where} must be a text or a non-empty list of texts (its turns, oldest first)'
    )


def split_request(value: Any) -> tuple[list[list[str]], bool]:
    """The histories of ``value`` and whether it was a batch.

    A text or a list of texts is one history; a list whose items are lists is
    a batch (each item a list of turns or a text).
    """
    if (
        isinstance(value, (list, tuple))
        and value
        and any(isinstance(v, (list, tuple)) for v in value)
    ):
        return [check_history(h, f'history {i}') for i, h in enumerate(value)], True
    return [check_history(value)], False


class Replier:
    """Replies to ParlAI-style histories with an exported CTranslate2 folder.

    ``threads``: CTranslate2's threads per batch (``intra_threads``);
    ``parallel``: batches decoded at once (``inter_threads``); ``compute_type``
    ``default`` runs the stored weight type (CTranslate2 converts what the
    device cannot run); ``exact_beam``: beam search gives ParlAI's replies
    (replayed step by step, several times slower), else CTranslate2's own
    (fast; its replies can differ from ParlAI's on some contexts).
    """

    def __init__(
        self,
        folder: str,
        device: str = 'cpu',
        threads: int = 1,
        parallel: int = 1,
        compute_type: str = 'default',
        exact_beam: bool = False,
    ) -> None:
        require_serve_extra()
        if threads < 1 or parallel < 1:
            raise DistillationError('threads and parallel must be >= 1')
        missing = [
            n for n in FOLDER_FILES if not os.path.isfile(os.path.join(folder, n))
        ]
        if missing:
            raise DistillationError(
                f'{folder} is not a CTranslate2 export of anti_scaling (no '
                f'{", ".join(missing)}; write one with python -m '
                'anti_scaling.scripts.export_ct2)'
            )
        try:
            self.engine = Engine(
                folder, device, compute_type, threads, parallel, exact_beam
            )
        except (OSError, RuntimeError, ValueError) as e:
            raise DistillationError(
                f'{folder} is not a CTranslate2 export of anti_scaling '
                f'(python -m anti_scaling.scripts.export_ct2): {e}'
            ) from None

    @property
    def max_context_tokens(self) -> int | None:
        """The model's context limit (ParlAI's ``--text-truncate``)."""
        return self.engine.inputs.settings['text_truncate']

    def submit(
        self, histories: Sequence[History], beam: int | None = None
    ) -> list[Any]:
        """Start decoding (CTranslate2's asynchronous results; :meth:`text_of` reads them)."""
        return self.engine.submit([check_history(h) for h in histories], beam)

    def text_of(self, result: Any) -> str:
        """The reply text of a finished asynchronous result (blocks until it is)."""
        return self.engine.text(self.engine.finish(result.result()))

    def reply(self, history_or_batch: Any, beam: int | None = None) -> str | list[str]:
        """The reply to one history (a text), or to each history of a batch (texts).

        ``beam``: beam size (default: the model's own, from its ParlAI options).
        """
        histories, batch = split_request(history_or_batch)
        texts = [self.text_of(r) for r in self.engine.submit(histories, beam)]
        return texts if batch else texts[0]
