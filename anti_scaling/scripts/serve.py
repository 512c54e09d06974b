"""Serve a CTranslate2 export over HTTP: JSON replies to ParlAI-style histories.

    python -m anti_scaling.scripts.serve FOLDER [--port 8080] [--host 127.0.0.1] \\
        [--threads 1] [--parallel 1] [--device cpu|cuda] [--compute-type default] \\
        [--max-batch 64] [--max-chars 20000]

``POST /reply`` takes ``{"history": ["hi!", "hello!", "how are you?"]}`` (or
``{"histories": [[...], [...]]}``, and ``"beam": B``) and answers ``{"reply":
...}`` (``{"replies": [...]}``); ``GET /health`` says it is up. Concurrent
requests are batched into one engine call (:mod:`anti_scaling.serving.server`).
``--threads``: CTranslate2's threads per batch; ``--parallel``: batches at once.
A port in use, a missing package or a folder that is not an export: one line,
before anything starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import install_excepthook
from . import command_line

if TYPE_CHECKING:
    from ..serving.replier import Replier


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads``, ``--parallel``, ``--compute-type`` (also chat's)."""
    p.add_argument('folder', help='a folder written by export_ct2')
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    p.add_argument('--threads', type=int, default=1, help='threads per batch (1)')
    p.add_argument('--parallel', type=int, default=1, help='batches at once (1)')
    p.add_argument(
        '--compute-type',
        default='default',
        help="CTranslate2 compute type (default: the folder's weights)",
    )
    p.add_argument('--beam', type=int, default=None, help="beam size (the model's)")
    p.add_argument(
        '--exact-beam',
        action='store_true',
        help="beam search replays ParlAI's (its replies; several times slower "
        "than CTranslate2's own, the default)",
    )


def replier_from_args(args: argparse.Namespace) -> Replier:
    """The :class:`~anti_scaling.serving.replier.Replier` that
    :func:`add_engine_args`' options describe (also chat's)."""
    from ..serving.replier import Replier

    return Replier(
        args.folder,
        args.device,
        args.threads,
        args.parallel,
        args.compute_type,
        exact_beam=args.exact_beam,
    )


def parser() -> argparse.ArgumentParser:
    """The command-line parser (documented in the module docstring)."""
    from ..serving.server import MAX_BATCH, MAX_CHARS

    p = command_line.script_parser('serve', 'Serve a CTranslate2 export over HTTP.')
    add_engine_args(p)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=8080)
    p.add_argument('--max-batch', type=int, default=MAX_BATCH)
    p.add_argument('--max-chars', type=int, default=MAX_CHARS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; 2 (one line on stderr) on bad input."""
    install_excepthook()
    args = parser().parse_args(command_line.command_argv(argv))
    return command_line.exit_status(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    from ..errors import check_at_least_one
    from ..serving.replier import require_serve_extra
    from ..serving.server import bind, make_app, serve

    check_at_least_one(args, ['threads', 'parallel', 'max_batch', 'max_chars'])
    require_serve_extra()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        from ..errors import DistillationError

        raise DistillationError(
            "aiohttp is not installed: pip install -c constraints.txt -e '.[serve]'"
        ) from None
    sock = bind(args.host, args.port)
    replier = replier_from_args(args)
    if args.beam:
        replier.engine.generation['beam_size'] = args.beam
    app = make_app(replier, args.max_chars, args.max_batch)
    print(
        f'serving {args.folder} on http://{args.host}:{sock.getsockname()[1]}',
        flush=True,
    )
    serve(app, sock, quiet=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
