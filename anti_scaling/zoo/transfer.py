"""Fetch one file of a zoo model over HTTP(S) or ``file:``, resumable and verified.

A file streams into a ``.part`` file. A part left by an interrupted transfer is
resumed with an HTTP ``Range`` request; a server that ignores it (``200``) or
refuses it (``416``) restarts the file from byte 0. A dropped connection is
retried (resuming) a few times. A finished file must have the manifest's size
and SHA-256, or it is deleted.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from .. import __version__
from ..errors import DistillationError
from ..fileio import sha256_of
from .manifest import ZooFile

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    """Progress and retry messages of downloads: one line on stderr."""
    print(f'anti_scaling.zoo: {message}', file=sys.stderr, flush=True)


class _Interrupted(Exception):
    """A transfer stopped early; the part file holds what arrived."""


def _open(url: str, start: int, timeout: float):  # noqa: ANN202
    request = urllib.request.Request(
        url, headers={'User-Agent': f'anti_scaling/{__version__}'}
    )
    if start:
        request.add_header('Range', f'bytes={start}-')
    return urllib.request.urlopen(request, timeout=timeout)


def _content_range_start(value: str | None) -> int | None:
    """``'bytes 100-199/200'`` -> 100."""
    if not value or not value.startswith('bytes '):
        return None
    try:
        return int(value[6:].split('-', 1)[0])
    except ValueError:
        return None


def _transfer(url: str, part: str, limit: int | None, timeout: float, log: Log) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size when possible.

    Stops as soon as ``part`` would exceed ``limit`` bytes (the expected size).
    Raises :class:`_Interrupted` for anything worth retrying (connection
    problems, early end of data) and :class:`DistillationError` for the rest.
    """
    start = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            os.remove(part)  # the part cannot be resumed: start over
            raise _Interrupted('the server refused to resume; restarting') from None
        raise DistillationError(f'HTTP {e.code} {e.reason} for {url}') from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', None) or e
        if url.startswith('file:'):  # a local mirror: retrying will not help
            raise DistillationError(f'cannot read {url} ({reason})') from None
        raise _Interrupted(f'cannot connect: {reason}') from None
    with response:
        status = getattr(response, 'status', None) or 200
        mode = 'wb'
        if status == 206 and start:
            if _content_range_start(response.headers.get('Content-Range')) != start:
                os.remove(part)
                raise _Interrupted('the server resumed at the wrong byte; restarting')
            mode = 'ab'
        elif status not in (200, 206):
            raise DistillationError(f'unexpected HTTP status {status} for {url}')
        elif start:
            log(f'{url} does not support resuming; downloading it from the start')
        length = response.headers.get('Content-Length')
        expected = int(length) if length and length.isdigit() else None
        offset = start if mode == 'ab' else 0
        received = 0
        with open(part, mode) as fh:
            try:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    received += len(chunk)
                    if limit is not None and offset + received > limit:
                        break  # longer than expected: fetch_file reports it
            except (OSError, http.client.HTTPException) as e:
                raise _Interrupted(f'{type(e).__name__}: {e}'.rstrip(': ')) from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
        if (
            expected is not None
            and received < expected
            and (limit is None or offset + received <= limit)
        ):
            raise _Interrupted(
                f'the connection closed after {received} of {expected} bytes'
            )


def fetch_file(
    url: str,
    part: str,
    zoo_file: ZooFile,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
    log: Log = log_to_stderr,
) -> None:
    """Download ``url`` into ``part`` and check its size and SHA-256.

    A partial ``part`` is resumed. Interrupted transfers are retried (resuming)
    ``retries`` times, waiting ``backoff * attempt`` seconds; if they keep
    failing, :class:`DistillationError` says so and ``part`` is kept for the
    next call to resume. A complete file of the wrong size or checksum is
    deleted and reported with :class:`DistillationError`.
    """
    size, sha256 = zoo_file.size, zoo_file.sha256
    attempt = 0
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have > size:
            os.remove(part)
            have = 0
        if size is not None and have == size:
            break
        if have:
            log(f'resuming {zoo_file.filename} at byte {have}')
        try:
            _transfer(url, part, size, timeout, log)
            break
        except _Interrupted as e:
            attempt += 1
            got = os.path.getsize(part) if os.path.exists(part) else 0
            if attempt > retries:
                if not got:
                    if os.path.exists(part):
                        os.remove(part)
                    raise DistillationError(
                        f'download of {url} failed ({e}); nothing was downloaded'
                    ) from None
                of = f' of {size}' if size is not None else ''
                raise DistillationError(
                    f'download of {url} failed after {got}{of} bytes ({e}); the '
                    'partial file is kept: run the same command again to resume'
                ) from None
            log(f'{zoo_file.filename}: {e}; retrying ({attempt}/{retries})')
            time.sleep(backoff * attempt)
    actual = os.path.getsize(part)
    if size is not None and actual != size:
        os.remove(part)
        what = 'truncated' if actual < size else 'too long'
        raise DistillationError(
            f'{zoo_file.filename} from {url} is {what}: {actual} bytes, expected '
            f'{size}; it was deleted and nothing was installed'
        )
    digest = sha256_of(part)
    if digest != sha256:
        os.remove(part)
        raise DistillationError(
            f'checksum mismatch for {zoo_file.filename} from {url}: SHA-256 '
            f'{digest}, expected {sha256}; it was deleted and nothing was installed'
        )
