"""Test helpers for the zoo: a loopback HTTP file server and small archives.

The server listens on 127.0.0.1 only (port chosen by the OS), runs in a daemon
thread, and is stopped by its context manager. It can drop a connection after
some bytes (an interrupted transfer) and ignore ``Range`` requests.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import urllib.parse
from typing import Any

PROXY_VARIABLES = (
    'http_proxy',
    'https_proxy',
    'HTTP_PROXY',
    'HTTPS_PROXY',
    'all_proxy',
    'ALL_PROXY',
)


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # seconds a stuck connection may hold a server thread

    def log_message(self, format, *args):  # noqa: A002, ANN001
        pass

    def do_GET(self) -> None:  # noqa: N802
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip('/')
        range_header = self.headers.get('Range')
        owner.requests.append((path, range_header))
        if path not in owner.files:
            self.send_error(404)
            return
        data = owner.files[path]
        rule = owner.rules.get(path, {})
        start = 0
        match = re.fullmatch(r'bytes=(\d+)-', range_header or '')
        if match and not rule.get('ignore_range'):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header(
                'Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}'
            )
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Content-Type', 'application/octet-stream')
        self.end_headers()
        drop_after = rule.pop('drop_after', None)  # applies to one request
        if drop_after is not None:
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class FileServer:
    """Serve ``files`` (relative path -> bytes) at ``url`` on 127.0.0.1.

    ``rules[path]`` may hold ``drop_after`` (send that many body bytes of the
    next response, then close the connection) and ``ignore_range`` (answer
    ``Range`` requests with the whole file). ``requests`` lists
    ``(path, Range header)`` of every request.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={'poll_interval': 0.05}
        )
        self._thread.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}/'

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``files`` (archive name -> contents)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(path: str, models: list[dict[str, Any]], **top: Any) -> str:
    """Write a user manifest file holding ``models``; returns ``path``."""
    with open(path, 'w', encoding='utf-8') as fh:
        json.dump({'format': 1, **top, 'models': models}, fh)
    return path


def model_entry(model: str, url: str, data: bytes, **overrides: Any) -> dict:
    """A manifest entry for archive ``url`` whose true contents are ``data``.

    ``file={...}`` changes the file's fields; other keywords the entry's.
    """
    file = {'url': url, 'sha256': sha256(data), 'size': len(data), 'unpack': True}
    file.update(overrides.pop('file', {}))
    entry = {
        'name': model,
        'description': f'test model {model}',
        'kind': 'student',
        'agent': 'transformer/generator',
        'files': [file],
    }
    entry.update(overrides)
    return entry
