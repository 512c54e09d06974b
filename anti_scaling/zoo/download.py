"""Download a zoo model so that a later run finds a complete, verified model or nothing.

Layout under ``<datapath>/models/anti_scaling/``::

    NAME/                        the installed model (ParlAI loads NAME/model)
    NAME/.anti_scaling_zoo.json  marker: verified checksums of the downloads and
                                 of every installed file
    .NAME.download/              partial downloads kept for resuming
    .NAME.lock                   serialises concurrent downloads of NAME

How a download goes:

1. Each file streams into ``.NAME.download/<sha256 prefix>-<file>.part``. A
   part left by an interrupted transfer is resumed with an HTTP ``Range``
   request; a server that ignores it (``200``) or refuses it (``416``) restarts
   the file from byte 0. A dropped connection is retried (resuming) a few times.
2. A finished file must have the manifest's size and SHA-256; if not, the part
   is deleted and the download fails with one line. Nothing is installed.
3. Archives are unpacked (tar, with the ``data`` safety filter) into a
   temporary directory next to ``NAME/``; the marker is written inside it and
   only then is the directory renamed to ``NAME/`` (replacing an outdated one).

``NAME/`` therefore exists only when complete. A later call that finds the
marker's checksums equal to the manifest's and every recorded file present
with its size returns at once; anything else is downloaded again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import DistillationError
from ..fileio import atomic_write, sha256_of
from .manifest import (
    NAME_PATTERN,
    Catalog,
    ZooFile,
    ZooModel,
    base_url,
    file_url,
    format_size,
    load_catalog,
    unknown_model_message,
)
from .transfer import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Log,
    fetch_file,
    log_to_stderr,
)

MARKER = '.anti_scaling_zoo.json'
ZOO_SUBDIR = os.path.join('models', 'anti_scaling')


def default_datapath() -> str:
    """ParlAI's data directory: ``$PARLAI_DATAPATH``, else ``<parlai home>/data``."""
    env = os.environ.get('PARLAI_DATAPATH')
    if env:
        return env
    import parlai

    home = os.path.dirname(os.path.dirname(os.path.realpath(parlai.__file__)))
    return os.path.join(home, 'data')


def models_root(datapath: str | None) -> str:
    """``<datapath>/models/anti_scaling``: where zoo models are installed."""
    return os.path.join(datapath or default_datapath(), ZOO_SUBDIR)


def model_dir(datapath: str | None, name: str) -> str:
    """The directory model ``name`` is installed in (it may not exist)."""
    return os.path.join(models_root(datapath), name)


# installed models ---------------------------------------------------------------


def read_marker(directory: str) -> dict[str, Any] | None:
    """The marker of an installed model, or None if missing or unreadable."""
    try:
        with open(os.path.join(directory, MARKER), encoding='utf-8') as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get('files'), dict):
        return None
    return marker


def _source_checksums(model: ZooModel) -> list[list]:
    return [[f.url, f.sha256, f.size] for f in model.files]


def installed(directory: str, model: ZooModel | None = None) -> bool:
    """Whether ``directory`` holds a complete install (of ``model``'s current files).

    Cheap: compares the marker's download checksums with the manifest's and
    checks that every recorded file exists with its recorded size. Use
    :func:`verify_installed` to re-hash the files.
    """
    marker = read_marker(directory)
    if marker is None:
        return False
    if model is not None and marker.get('sources') != _source_checksums(model):
        return False
    for rel, info in marker['files'].items():
        path = os.path.join(directory, rel)
        try:
            if os.path.getsize(path) != info['size']:
                return False
        except (OSError, KeyError, TypeError):
            return False
    model_file = marker.get('model_file')
    return bool(model_file) and os.path.isfile(os.path.join(directory, model_file))


def verify_installed(directory: str) -> list[str]:
    """Re-hash every installed file against the marker; returns the problems found."""
    marker = read_marker(directory)
    if marker is None:
        return [f'{directory} has no readable {MARKER}: it is not a verified install']
    problems = []
    for rel, info in sorted(marker['files'].items()):
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            problems.append(f'{rel} is missing')
        elif sha256_of(path) != info.get('sha256'):
            problems.append(f'{rel} does not match its recorded SHA-256')
    return problems


def installed_model_file(datapath: str | None, name: str) -> str | None:
    """Path of the model file of an installed ``name``, or None if not installed."""
    directory = model_dir(datapath, name)
    if not installed(directory):
        return None
    marker = read_marker(directory) or {}
    return os.path.join(directory, marker['model_file'])


# one file -----------------------------------------------------------------------


# a whole model ------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, 'a') as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _part_name(zoo_file: ZooFile) -> str:
    return f'{(zoo_file.sha256 or "unknown")[:16]}-{zoo_file.filename}.part'


def _unpack(archive: str, target: str, filename: str) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter='data')
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DistillationError(
            f'{filename} matches its checksum but cannot be unpacked '
            f'({type(e).__name__}: {e}); nothing was installed'
        ) from None


def _record_files(directory: str) -> dict[str, dict[str, Any]]:
    files = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory).replace(os.sep, '/')
            files[rel] = {'size': os.path.getsize(path), 'sha256': sha256_of(path)}
    return files


def _install(model: ZooModel, parts: list[str], root: str, dest: str) -> None:
    """Unpack/move the verified ``parts`` into a new directory renamed to ``dest``."""
    staging = tempfile.mkdtemp(prefix=f'.{model.name}.', suffix='.tmp', dir=root)
    old = None
    try:
        for zoo_file, part in zip(model.files, parts):
            if zoo_file.unpack:
                _unpack(part, staging, zoo_file.filename)
            else:
                shutil.copyfile(part, os.path.join(staging, zoo_file.filename))
        needed = [model.model_file]
        if model.format == 'parlai':
            needed.append(model.model_file + '.opt')
        missing = [p for p in needed if not os.path.isfile(os.path.join(staging, p))]
        if missing:
            raise DistillationError(
                f'the files of zoo model {model.name} do not contain '
                f'{", ".join(missing)}; nothing was installed'
            )
        marker = {
            'name': model.name,
            'model_file': model.model_file,
            'sources': _source_checksums(model),
            'files': _record_files(staging),
            'manifest': model.origin,
        }
        atomic_write(
            os.path.join(staging, MARKER),
            lambda fh: (json.dump(marker, fh, indent=2), fh.write('\n')),
        )
        os.chmod(staging, 0o755 & ~_umask())
        if os.path.lexists(dest):
            old = tempfile.mkdtemp(prefix=f'.{model.name}.', suffix='.old', dir=root)
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(staging, dest)
    except BaseException:
        if old is not None and not os.path.lexists(dest):
            os.replace(old, dest)  # put the earlier install back
            old = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fetch_model(
    name: str,
    datapath: str | None = None,
    *,
    mirror: str | None = None,
    manifests: Sequence[str] | None = None,
    catalog: Catalog | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
    log: Log = log_to_stderr,
) -> str:
    """Make zoo model ``name`` available under ``datapath``; return its directory.

    ``datapath`` defaults to ParlAI's (``$PARLAI_DATAPATH`` or ParlAI's ``data``).
    ``mirror`` (else ``$ANTI_SCALING_ZOO_MIRROR``) replaces the base URL of every
    file; ``manifests`` are user manifests read after the packaged one and
    ``$ANTI_SCALING_ZOO_MANIFEST``. Returns at once when an up-to-date verified
    install exists (also for a name no manifest lists any more). Raises
    :class:`DistillationError` (one line) for an unknown name, a model without
    published checksums, an HTTP error, a truncated or corrupted file, or a
    transfer that kept failing (its partial file is kept to resume); in every
    case nothing is installed and an earlier install is left as it was.
    """
    if catalog is None:
        catalog = load_catalog(manifests)
    if not NAME_PATTERN.match(name or ''):  # never a path outside the zoo
        raise DistillationError(unknown_model_message(name, catalog.models))
    root = models_root(datapath)
    dest = os.path.join(root, name)
    model = catalog.models.get(name)
    if model is None:
        if installed(dest):
            return dest
        raise DistillationError(unknown_model_message(name, catalog.models))
    if installed(dest, model):
        return dest
    if model.unverifiable:
        alternative = model.extra.get('parlai_zoo')
        hint = (
            f"use ParlAI's own unverified download with {alternative}, or "
            if alternative
            else ''
        )
        raise DistillationError(
            f'zoo model {name} cannot be downloaded with verification: no SHA-256 is '
            f'published for {", ".join(model.unverifiable)}; {hint}pin it in a user '
            f'manifest (--manifest or ANTI_SCALING_ZOO_MANIFEST)'
        )
    base = base_url(model, mirror)
    os.makedirs(root, exist_ok=True)
    with _locked(os.path.join(root, f'.{name}.lock')):
        if installed(dest, model):  # another process finished it meanwhile
            return dest
        downloads = os.path.join(root, f'.{name}.download')
        os.makedirs(downloads, exist_ok=True)
        wanted = {_part_name(f) for f in model.files}
        for stale in os.listdir(downloads):
            if stale not in wanted:  # parts of another version of the model
                os.remove(os.path.join(downloads, stale))
        log(f'downloading {name} ({format_size(model.size)}) from {base}')
        parts = []
        try:
            for zoo_file in model.files:
                part = os.path.join(downloads, _part_name(zoo_file))
                fetch_file(
                    file_url(base, zoo_file),
                    part,
                    zoo_file,
                    timeout=timeout,
                    retries=retries,
                    backoff=backoff,
                    log=log,
                )
                parts.append(part)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(downloads)  # only if no partial file is kept for resuming
            raise
        try:
            _install(model, parts, root, dest)
        except DistillationError:
            shutil.rmtree(downloads, ignore_errors=True)
            raise
        shutil.rmtree(downloads, ignore_errors=True)
    log(f'installed {name} in {dest}')
    return dest


def fetch_model_file(name: str, datapath: str | None = None, **kwargs: Any) -> str:
    """:func:`fetch_model`, returning the path of the model file to load (``-mf``)."""
    directory = fetch_model(name, datapath, **kwargs)
    marker = read_marker(directory) or {}
    return os.path.join(directory, marker.get('model_file', 'model'))
