"""Chat with a CTranslate2 export in the terminal, as ``parlai interactive`` would.

    python -m anti_scaling.scripts.chat FOLDER [--threads 1] [--beam B] [--device cpu]

Each line you type is the partner's turn; the model's replies join the history
exactly as ParlAI's history does (the folder's ``parlai_inputs.json``: delimiter,
person tokens, history size, truncation). ``[DONE]`` starts a new conversation,
``[EXIT]`` (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from ..errors import install_excepthook
from . import command_line
from .serve import add_engine_args, replier_from_args

DONE, EXIT = '[DONE]', '[EXIT]'


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    p = command_line.script_parser('chat', 'Chat with a CTranslate2 export.')
    add_engine_args(p)
    return p


def chat(replier: object, lines: Iterable[str], out: TextIO, beam: int | None) -> int:
    """Run the conversation over ``lines``; the number of replies given."""
    history: list[str] = []
    replies = 0
    out.write('Enter your message ([DONE] new conversation, [EXIT] quit):\n')
    for line in lines:
        text = line.rstrip('\n')
        if text.strip() == EXIT:
            break
        if text.strip() == DONE:
            history = []
            out.write('[new conversation]\n')
            continue
        history.append(text)
        reply = replier.reply(history, beam=beam)  # type: ignore[attr-defined]
        history.append(reply)
        replies += 1
        out.write(f'[model]: {reply}\n')
        out.flush()
    return replies


def main(argv: list[str] | None = None) -> int:
    """Chat until [EXIT] or end of input; 2 (one line on stderr) on bad input."""
    install_excepthook()
    args = parser().parse_args(command_line.command_argv(argv))

    def run() -> int:
        from ..errors import check_at_least_one

        check_at_least_one(args, ['threads', 'parallel'])
        replier = replier_from_args(args)
        chat(replier, sys.stdin, sys.stdout, args.beam)
        return 0

    return command_line.exit_status(run)


if __name__ == '__main__':
    sys.exit(main())
