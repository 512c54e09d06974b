"""An HTTP JSON endpoint for a :class:`~.replier.Replier` (aiohttp).

- ``POST /reply`` with ``{"history": [...turns...]}`` (or a text) answers
  ``{"reply": "..."}``; with ``{"histories": [[...], [...]]}`` it answers
  ``{"replies": [...]}``. ``"beam": B`` sets the beam size (default: the model's).
- ``GET /health`` answers ``{"status": "ok", ...}`` with the model folder and settings.

Requests that arrive while the engine is busy are gathered, and each beam size's
histories go to the engine in one asynchronous CTranslate2 call (up to
``max_batch`` histories), so concurrent clients are batched together.
Malformed JSON, a missing or mistyped field, a history over ``max_chars``
characters or a batch over ``max_batch`` histories get a 400 with a one-line
``{"error": ...}``; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from ..errors import DistillationError
from .replier import Replier, check_history

#: Characters a history may have, all turns together, unless told otherwise.
MAX_CHARS = 20_000
#: Histories one engine call takes, unless told otherwise.
MAX_BATCH = 64


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; one line when the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DistillationError(
            f'cannot listen on {host}:{port} ({e.strerror or e}): the port is in use '
            'or not allowed; pick another with --port'
        ) from None
    sock.listen(128)
    return sock


@dataclass
class _Job:
    histories: list[list[str]]
    beam: int | None
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers concurrent requests into engine calls (one per beam size)."""

    def __init__(self, replier: Replier, max_batch: int = MAX_BATCH) -> None:
        self.replier = replier
        self.max_batch = max_batch
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.calls = 0

    async def reply(self, histories: list[list[str]], beam: int | None) -> list[str]:
        """The replies to ``histories`` (batched with whatever else is waiting)."""
        job = _Job(histories, beam, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    def _take(self, first: _Job) -> list[_Job]:
        """``first`` and the jobs waiting behind it, up to ``max_batch`` histories."""
        jobs = [first]
        size = len(first.histories)
        while not self.queue.empty():
            nxt = self.queue._queue[0]  # type: ignore[attr-defined]
            if size + len(nxt.histories) > self.max_batch:
                break
            jobs.append(self.queue.get_nowait())
            size += len(nxt.histories)
        return jobs

    def _run(self, jobs: list[_Job]) -> list[list[str] | BaseException]:
        """Submit every beam size's histories at once, then read the results."""
        pending = []
        for beam in {job.beam for job in jobs}:
            group = [job for job in jobs if job.beam == beam]
            flat = [h for job in group for h in job.histories]
            self.calls += 1
            pending.append((group, self.replier.submit(flat, beam)))
        outcome: dict[int, list[str] | BaseException] = {}
        for group, results in pending:
            try:
                texts = [self.replier.text_of(r) for r in results]
            except Exception as e:  # noqa: BLE001 (the clients get it)
                for job in group:
                    outcome[id(job)] = e
                continue
            for job in group:
                outcome[id(job)], texts = (
                    texts[: len(job.histories)],
                    texts[len(job.histories) :],
                )
        return [outcome[id(job)] for job in jobs]

    async def work(self) -> None:
        """Serve the queue forever (a task of the server's loop)."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = self._take(await self.queue.get())
            try:
                results = await loop.run_in_executor(None, self._run, jobs)
            except Exception as e:  # noqa: BLE001
                results = [e] * len(jobs)
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


def parse_request(
    body: Any, max_chars: int, max_batch: int
) -> tuple[list[list[str]], bool, int | None]:
    """Histories, whether a batch was asked, and the beam; one line on bad input."""
    if not isinstance(body, dict):
        raise DistillationError('the request must be a JSON object')
    beam = body.get('beam')
    if beam is not None and (not isinstance(beam, int) or beam < 1 or beam > 16):
        raise DistillationError('beam must be an integer from 1 to 16')
    if 'histories' in body:
        value = body['histories']
        if not isinstance(value, list) or not value:
            raise DistillationError('histories must be a non-empty list of histories')
        histories = [check_history(h, f'histories[{i}]') for i, h in enumerate(value)]
        batch = True
    elif 'history' in body:
        histories, batch = [check_history(body['history'])], False
    else:
        raise DistillationError('missing field: history (or histories)')
    if len(histories) > max_batch:
        raise DistillationError(f'at most {max_batch} histories per request')
    for i, history in enumerate(histories):
        chars = sum(len(t) for t in history)
        if chars > max_chars:
            raise DistillationError(
                f'history {i} has {chars} characters; at most {max_chars}'
            )
    return histories, batch, beam


def make_app(
    replier: Replier, max_chars: int = MAX_CHARS, max_batch: int = MAX_BATCH
) -> Any:
    """The aiohttp application serving ``replier`` (module doc)."""
    from aiohttp import web

    batcher = Batcher(replier, max_batch)

    def error(message: str, status: int = 400) -> Any:
        return web.json_response({'error': message}, status=status)

    async def reply(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(f'malformed JSON: {e}')
        try:
            histories, batch, beam = parse_request(body, max_chars, max_batch)
            texts = await batcher.reply(histories, beam)
        except DistillationError as e:
            return error(str(e))
        return web.json_response({'replies': texts} if batch else {'reply': texts[0]})

    async def health(request: web.Request) -> web.Response:
        engine = replier.engine
        return web.json_response(
            {
                'status': 'ok',
                'folder': engine.folder,
                'device': engine.translator.device,
                'compute_type': engine.translator.compute_type,
                'engine_calls': batcher.calls,
            }
        )

    worker: list[asyncio.Task] = []

    async def start(app: web.Application) -> None:
        worker.append(asyncio.get_running_loop().create_task(batcher.work()))

    async def stop(app: web.Application) -> None:
        for task in worker:
            task.cancel()

    app = web.Application(client_max_size=4 * max_chars * max_batch + 65536)
    app.router.add_post('/reply', reply)
    app.router.add_get('/health', health)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def serve(app: Any, sock: socket.socket, quiet: bool = False) -> None:
    """Serve ``app`` on the bound ``sock`` until interrupted."""
    from aiohttp import web

    web.run_app(app, sock=sock, print=None if quiet else print, handle_signals=True)
