"""Serving a CTranslate2 export: the Replier, the HTTP endpoint (real requests on
127.0.0.1) and the terminal chat."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip('ctranslate2')
web = pytest.importorskip('aiohttp.web')

from anti_scaling.errors import DistillationError  # noqa: E402
from anti_scaling.serving import Replier  # noqa: E402
from anti_scaling.serving.server import Batcher, bind, make_app  # noqa: E402

HISTORIES = [
    ['hi there!', 'hello, how are you?', 'fine. and you?'],
    ['what do you do for fun?'],
    ['i love dogs', 'me too! do you have one?', 'yes, a puppy named max.'],
    ['where do you live?', 'in a small town.', 'do you like it there?'],
    ['tell me a joke'],
    ["what's your favourite food?", 'pizza, and yours?', 'sushi!'],
]


@pytest.fixture(scope='module')
def folder(tmp_path_factory, datapath, chitchat_model) -> str:
    from anti_scaling.export.ct2.to_ct2 import export_to_ct2

    out = str(tmp_path_factory.mktemp('serve') / 'ct2')
    return export_to_ct2(chitchat_model, out, datapath).out_dir


@pytest.fixture(scope='module')
def replier(folder) -> Replier:
    return Replier(folder, threads=1)


def test_replies_are_parlais(replier, chitchat_model, datapath):
    """Greedy replies in text equal ParlAI's own for the same conversations."""
    from parlai.core.agents import create_agent_from_shared
    from parlai.core.message import Message

    from anti_scaling.export.parlai_model import load_for_export

    agent, _ = load_for_export(chitchat_model, datapath)
    agent.opt['inference'], agent.opt['beam_size'] = 'greedy', 1
    distinct = set()
    for history in HISTORIES:
        bot = create_agent_from_shared(agent.share())
        for i, turn in enumerate(history):
            if i % 2 == 1:
                continue
            if i:
                bot.self_observe(Message({'text': history[i - 1]}))
            bot.observe(Message({'text': turn, 'episode_done': False}))
            if i < len(history) - 1:
                bot.history.add_reply(history[i + 1])
                continue
            expected = bot.act()['text']
        # ParlAI's history above: partner turns observed, own turns as replies.
        ours = replier.reply(history)
        assert ours == expected, (history, ours, expected)
        distinct.add(ours)
    batch = replier.reply(HISTORIES)
    assert batch == [replier.reply(h) for h in HISTORIES]
    assert replier.reply('tell me a joke') == replier.reply(['tell me a joke'])
    with pytest.raises(DistillationError, match='non-empty list of texts'):
        replier.reply([])
    with pytest.raises(DistillationError, match='not a CTranslate2 export'):
        Replier(datapath)


def _start(app, sock) -> None:
    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()


def _post(port: int, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f'http://127.0.0.1:{port}/reply',
        data=data,
        headers={'Content-Type': 'application/json'},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_http_endpoint(replier):
    """Concurrent clients get their own replies; bad requests get a 400 and one line."""
    sock = bind('127.0.0.1', 0)
    port = sock.getsockname()[1]
    _start(make_app(replier, max_chars=2000, max_batch=8), sock)
    deadline = time.time() + 10
    while True:
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/health') as r:
                health = json.load(r)
            break
        except OSError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert health['status'] == 'ok' and health['compute_type'] == 'float32'
    expected = [replier.reply(h) for h in HISTORIES]
    # 24 requests from 8 concurrent clients, each history several times.
    jobs = [HISTORIES[i % len(HISTORIES)] for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda h: _post(port, {'history': h}), jobs))
    for i, (status, body) in enumerate(answers):
        assert status == 200
        assert body == {'reply': expected[i % len(HISTORIES)]}
    status, body = _post(port, {'histories': HISTORIES[:3], 'beam': 2})
    assert status == 200
    assert body['replies'] == replier.reply(HISTORIES[:3], beam=2)
    bad = [
        (b'{"history": ["hi"', 'malformed JSON'),
        ({'text': 'hi'}, 'missing field: history'),
        ({'history': [1, 2]}, 'history must be a text or a non-empty list'),
        ({'history': ['x' * 2001]}, 'history 0 has 2001 characters; at most 2000'),
        ({'histories': [['hi']] * 9}, 'at most 8 histories'),
        ({'history': 'hi', 'beam': 0}, 'beam must be an integer'),
    ]
    for body, reason in bad:
        status, answer = _post(port, body)
        assert status == 400, body
        assert reason in answer['error'] and '\n' not in answer['error']
    # Still serving.
    assert _post(port, {'history': HISTORIES[0]}) == (200, {'reply': expected[0]})


def test_port_in_use_is_one_line():
    taken = socket.socket()
    taken.bind(('127.0.0.1', 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(DistillationError, match=f'127.0.0.1:{port}') as e:
            bind('127.0.0.1', port)
        assert '\n' not in str(e.value)
    finally:
        taken.close()


def test_serve_command_line_refuses_a_taken_port(folder, capsys):
    from anti_scaling.scripts import serve

    taken = socket.socket()
    taken.bind(('127.0.0.1', 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        assert serve.main([folder, '--port', port]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.startswith('anti_scaling: error: cannot listen on 127.0.0.1:')
    assert err.count('\n') == 1


def test_batcher_gathers_waiting_requests(replier):
    """Requests queued while the engine is busy go to it in one call per beam size."""

    async def scenario() -> tuple[list, int]:
        batcher = Batcher(replier, max_batch=64)
        waiting = [
            asyncio.ensure_future(batcher.reply([h], None)) for h in HISTORIES
        ] + [asyncio.ensure_future(batcher.reply([HISTORIES[0]], 3))]
        await asyncio.sleep(0)  # every request is queued before the worker starts
        worker = asyncio.ensure_future(batcher.work())
        answers = await asyncio.gather(*waiting)
        worker.cancel()
        return answers, batcher.calls

    answers, calls = asyncio.run(scenario())
    assert calls == 2
    assert [a[0] for a in answers[:-1]] == [replier.reply(h) for h in HISTORIES]
    assert answers[-1] == [replier.reply(HISTORIES[0], beam=3)]


def test_chat_keeps_parlai_history(replier):
    """The chat loop: each reply joins the history; [DONE] starts over."""
    from anti_scaling.scripts.chat import chat

    out = io.StringIO()
    lines = ['hi there!\n', 'fine. and you?\n', '[DONE]\n', 'tell me a joke\n']
    assert chat(replier, lines, out, None) == 3
    first = replier.reply(['hi there!'])
    second = replier.reply(['hi there!', first, 'fine. and you?'])
    printed = out.getvalue().splitlines()
    assert printed[1:] == [
        f'[model]: {first}',
        f'[model]: {second}',
        '[new conversation]',
        f"[model]: {replier.reply('tell me a joke')}",
    ]


def test_exact_beam_is_parlais(folder, replier, chitchat_model, datapath):
    """exact_beam=True: ParlAI's beam replies (the default is CTranslate2's own)."""
    from anti_scaling.export.cases import parlai_replies, task_cases
    from anti_scaling.export.parlai_model import load_for_export

    exact = Replier(folder, exact_beam=True)
    assert exact.engine.exact_beam is True and replier.engine.exact_beam is False
    agent, _ = load_for_export(chitchat_model, datapath)
    cases = task_cases(agent, 'anti_scaling.tasks.chitchat', 'test', datapath, 8)
    ours = parlai_replies(agent, cases, 3)
    assert exact.engine.reply_ids([c.turns for c in cases], 3) == ours
    assert exact.reply(HISTORIES[0], beam=1) == replier.reply(HISTORIES[0], beam=1)


def test_benchmark_script_runs(chitchat_model, datapath, capsys):
    """benchmark_serving on 3 contexts: a row per runtime, float32 replies ParlAI's."""
    from anti_scaling.scripts import benchmark_serving

    argv = ['--teacher', chitchat_model, '--student', chitchat_model, '-dp', datapath]
    argv += ['--examples', '3', '--batchsize', '2', '--ct2', 'float32']
    assert benchmark_serving.main(argv) == 0
    out = capsys.readouterr().out
    for row in ('teacher, ParlAI', 'student, ParlAI', 'student, CTranslate2 float32'):
        assert f'| {row} |' in out
    assert '1 thread(s)' in out
    assert "student, CTranslate2 float32: replies equal ParlAI's on 3/3 contexts" in out
