"""Files are replaced whole or not at all: write to a temporary file, then rename.

Folders likewise (:func:`atomic_directory`): written beside their final place,
then renamed into it. Also: one reader for the JSON/YAML files users give, with
one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from .errors import DistillationError, describe_exception


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory
    )
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from others
    try:
        yield tmp
        with open(tmp, 'rb') as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_directory(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a new empty folder beside ``path``; on success it becomes ``path``.

    An existing ``path`` is replaced only when ``overwrite`` (callers check
    first, to refuse before any work): it is moved aside, the new folder
    renamed in, and the old one deleted. On error the new folder is deleted
    and ``path`` is left as it was.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.', dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(path)
            old = tempfile.mkdtemp(
                prefix='.' + os.path.basename(path) + '.old.', dir=parent
            )
            os.rename(path, os.path.join(old, 'previous'))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str, write: Callable[[IO[Any]], None], mode: str = 'w') -> None:
    """Call ``write(fh)`` on a temporary file that then atomically becomes ``path``."""
    encoding = None if 'b' in mode else 'utf-8'
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            write(fh)


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` (contents and mode) so that ``dst`` is never partial."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)


def read_json(path: str, what: str) -> Any:
    """The JSON value in ``path``; one-line :class:`DistillationError` naming
    ``what`` (e.g. ``'report'``) when it is missing or unreadable."""
    from .errors import DistillationError, describe_exception

    try:
        with open(path, encoding='utf-8') as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DistillationError(f'{what} not found: {path}') from None
    except (OSError, ValueError) as e:
        raise DistillationError(
            f'{what} {path} is not readable JSON ({describe_exception(e)})'
        ) from None


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file's contents (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_json_or_yaml(path: str, what: str) -> Any:
    """The data of a ``.json``, ``.yaml`` or ``.yml`` file.

    ``what`` names the file in messages (e.g. ``'recipe file'``). Raises
    :class:`DistillationError` (one line) when the file is missing or does not
    parse.
    """
    if not os.path.isfile(path):
        raise DistillationError(f'{what} {path}: file not found')
    is_yaml = path.endswith(('.yaml', '.yml'))
    try:
        with open(path, encoding='utf-8') as fh:
            if is_yaml:
                import yaml

                return yaml.safe_load(fh)
            return json.load(fh)
    except Exception as e:
        kind = 'YAML' if is_yaml else 'JSON'
        raise DistillationError(
            f'{what} {path}: not valid {kind} ({describe_exception(e)})'
        ) from None
