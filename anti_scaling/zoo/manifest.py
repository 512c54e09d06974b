"""What the zoo can download: manifests of models, their files, checksums and origin.

A manifest is a JSON file::

    {"format": 1,
     "base_url": "https://example.org/zoo/",        (optional)
     "models": [
       {"name": "my_student", "description": "...", "kind": "student",
        "agent": "transformer/generator", "model_file": "model",
        "files": [{"url": "my_student.tar.gz", "sha256": "<64 hex>",
                   "size": 123456, "unpack": true}],
        "recipe": "blender_400Mdistill", "teacher": "zoo:blender/blender_3B/model",
        "report": {...}},
       ...]}

File URLs are relative to a base URL, so a mirror can serve the same paths. The
base of a model is, in order: the mirror (``--mirror`` or the environment
variable ``ANTI_SCALING_ZOO_MIRROR``), the model's ``base_url``, the manifest's
``base_url``, and for a manifest read from disk, the directory it lies in. A
``sha256``/``size`` of ``null`` means unknown: such a model is listed but cannot
be downloaded until a user manifest pins its checksum.

The package ships ``models.json``; user manifests (``--manifest`` or
``ANTI_SCALING_ZOO_MANIFEST``, several separated by ``os.pathsep``) add models or
replace packaged ones of the same name.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DistillationError
from ..fileio import atomic_write, read_json

FORMAT = 1
ENV_MIRROR = 'ANTI_SCALING_ZOO_MIRROR'
ENV_MANIFEST = 'ANTI_SCALING_ZOO_MANIFEST'
PACKAGED_MANIFEST = os.path.join(os.path.dirname(__file__), 'models.json')
KINDS = ('teacher', 'student')
FORMATS = ('parlai', 'fairseq')
# Names become directories and ParlAI module names (zoo:anti_scaling/NAME/model):
# no dots, slashes or spaces.
NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_-]*$')
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar', '.tar.bz2', '.tar.xz')


@dataclass(frozen=True)
class ZooFile:
    """One downloadable file: URL relative to the model's base, checksum, size."""

    url: str
    sha256: str | None
    size: int | None
    unpack: bool

    @property
    def filename(self) -> str:
        """The file's name (last part of its URL)."""
        return posix_basename(self.url)

    def to_json(self) -> dict[str, Any]:
        return {
            'url': self.url,
            'sha256': self.sha256,
            'size': self.size,
            'unpack': self.unpack,
        }


@dataclass(frozen=True)
class ZooModel:
    """A model the zoo knows: where its files are and what it is."""

    name: str
    description: str
    kind: str
    files: tuple[ZooFile, ...]
    model_file: str = 'model'
    agent: str | None = None
    format: str = 'parlai'
    base_url: str | None = None
    recipe: str | None = None
    teacher: str | None = None
    report: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str = ''  # manifest it was read from
    default_base: str | None = None  # manifest base_url or manifest directory

    @property
    def size(self) -> int | None:
        """Total download size in bytes, or None when a size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)

    @property
    def unverifiable(self) -> list[str]:
        """Files without a known SHA-256 (they cannot be downloaded)."""
        return [f.filename for f in self.files if not f.sha256]

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (what :func:`manifest_json` writes for this model)."""
        entry: dict[str, Any] = {
            'name': self.name,
            'description': self.description,
            'kind': self.kind,
            'format': self.format,
            'agent': self.agent,
            'model_file': self.model_file,
        }
        if self.base_url:
            entry['base_url'] = self.base_url
        entry['files'] = [f.to_json() for f in self.files]
        entry['recipe'] = self.recipe
        entry['teacher'] = self.teacher
        entry['report'] = self.report
        entry.update(self.extra)
        return entry


@dataclass
class Catalog:
    """Every known model, by name (later manifests replaced earlier ones)."""

    models: dict[str, ZooModel]
    manifests: list[str]

    def get(self, name: str) -> ZooModel:
        """The model ``name``; :class:`DistillationError` lists the known names."""
        if name in self.models:
            return self.models[name]
        raise DistillationError(unknown_model_message(name, self.models))


def unknown_model_message(name: str, known: Iterable[str]) -> str:
    """One line naming the unknown model and the known ones."""
    names = ', '.join(sorted(known)) or '(none)'
    return (
        f'unknown zoo model {name!r}: known models are {names} (add your own with '
        f'--manifest or {ENV_MANIFEST}; see python -m anti_scaling.scripts.zoo list)'
    )


def posix_basename(url: str) -> str:
    """Last path component of a URL or relative URL."""
    return urllib.parse.urlsplit(url).path.rstrip('/').rsplit('/', 1)[-1]


def is_archive(filename: str) -> bool:
    """Whether ``filename`` names a tar archive the downloader unpacks."""
    return filename.endswith(_ARCHIVE_SUFFIXES)


def _fail(origin: str, where: str, problem: str) -> DistillationError:
    return DistillationError(f'bad zoo manifest {origin}: {where}: {problem}')


def _parse_file(raw: Any, origin: str, where: str) -> ZooFile:
    if not isinstance(raw, dict):
        raise _fail(origin, where, 'each file must be an object')
    url = raw.get('url')
    if not isinstance(url, str) or not url:
        raise _fail(origin, where, 'file without "url"')
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith('/'):
        raise _fail(
            origin,
            where,
            f'file url {url!r} must be relative (put the host in "base_url")',
        )
    if '..' in parts.path.split('/') or not posix_basename(url):
        raise _fail(origin, where, f'file url {url!r} is not a plain relative path')
    sha = raw.get('sha256')
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise _fail(origin, where, f'sha256 of {url} must be 64 lowercase hex digits')
    size = raw.get('size')
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or size < 0
    ):
        raise _fail(origin, where, f'size of {url} must be a byte count or null')
    unpack = raw.get('unpack', is_archive(posix_basename(url)))
    if not isinstance(unpack, bool):
        raise _fail(origin, where, f'unpack of {url} must be true or false')
    return ZooFile(url, sha, size, unpack)


_KNOWN_KEYS = {
    'name',
    'description',
    'kind',
    'files',
    'model_file',
    'agent',
    'format',
    'base_url',
    'recipe',
    'teacher',
    'report',
}


def parse_model(raw: Any, origin: str, default_base: str | None = None) -> ZooModel:
    """Check one manifest entry and build its :class:`ZooModel`.

    Raises :class:`DistillationError` naming the manifest and the problem.
    """
    if not isinstance(raw, dict):
        raise _fail(origin, 'models', 'each model must be an object')
    name = raw.get('name')
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _fail(
            origin,
            f'model {name!r}',
            'name must be letters, digits, "_" or "-" (no dots or slashes)',
        )
    where = f'model {name}'
    kind = raw.get('kind', 'student')
    if kind not in KINDS:
        raise _fail(origin, where, f'kind must be one of {", ".join(KINDS)}')
    fmt = raw.get('format', 'parlai')
    if fmt not in FORMATS:
        raise _fail(origin, where, f'format must be one of {", ".join(FORMATS)}')
    files_raw = raw.get('files')
    if not isinstance(files_raw, list) or not files_raw:
        raise _fail(origin, where, '"files" must be a non-empty list')
    files = tuple(_parse_file(f, origin, where) for f in files_raw)
    names = [f.filename for f in files]
    if len(set(names)) != len(names):
        raise _fail(origin, where, 'two files have the same name')
    model_file = raw.get('model_file', 'model')
    if (
        not isinstance(model_file, str)
        or not model_file
        or model_file.startswith('/')
        or '..' in model_file.split('/')
    ):
        raise _fail(origin, where, 'model_file must be a relative path')
    report = raw.get('report')
    if report is not None and not isinstance(report, dict):
        raise _fail(origin, where, 'report must be an object or null')
    base_url = raw.get('base_url')
    if base_url is not None and not isinstance(base_url, str):
        raise _fail(origin, where, 'base_url must be a string')
    return ZooModel(
        name=name,
        description=str(raw.get('description') or ''),
        kind=kind,
        files=files,
        model_file=model_file,
        agent=raw.get('agent'),
        format=fmt,
        base_url=base_url,
        recipe=raw.get('recipe'),
        teacher=raw.get('teacher'),
        report=report,
        extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        origin=origin,
        default_base=default_base,
    )


def parse_manifest(
    data: Any, origin: str, directory: str | None = None
) -> dict[str, ZooModel]:
    """The models of a manifest document (already parsed JSON), by name.

    ``directory`` is where the manifest file lies: the base of models that name
    no other.
    """
    if not isinstance(data, dict) or not isinstance(data.get('models'), list):
        raise _fail(origin, 'top level', 'expected {"format": 1, "models": [...]}')
    if data.get('format', FORMAT) != FORMAT:
        raise _fail(
            origin,
            'format',
            f'{data.get("format")!r} is not supported (this version reads {FORMAT})',
        )
    default_base = data.get('base_url')
    if default_base is None and directory is not None:
        default_base = directory_url(directory)
    models: dict[str, ZooModel] = {}
    for raw in data['models']:
        model = parse_model(raw, origin, default_base)
        if model.name in models:
            raise _fail(origin, f'model {model.name}', 'listed twice')
        models[model.name] = model
    return models


def read_manifest(path: str, packaged: bool = False) -> dict[str, ZooModel]:
    """Read and check the manifest file ``path`` (see :func:`parse_manifest`)."""
    data = read_json(path, 'zoo manifest')
    directory = None if packaged else os.path.dirname(os.path.abspath(path))
    return parse_manifest(data, path, directory)


def manifests_from_env() -> list[str]:
    """User manifests named by ``ANTI_SCALING_ZOO_MANIFEST`` (``os.pathsep``-separated)."""
    value = os.environ.get(ENV_MANIFEST, '')
    return [p for p in value.split(os.pathsep) if p.strip()]


def load_catalog(manifests: Sequence[str] | None = None) -> Catalog:
    """The packaged models, then those of ``$ANTI_SCALING_ZOO_MANIFEST``, then ``manifests``.

    A later manifest's model replaces an earlier one of the same name.
    """
    models = dict(read_manifest(PACKAGED_MANIFEST, packaged=True))
    paths = [PACKAGED_MANIFEST]
    for path in [*manifests_from_env(), *(manifests or [])]:
        path = os.path.expanduser(path)
        models.update(read_manifest(path))
        paths.append(path)
    return Catalog(models, paths)


def directory_url(path: str) -> str:
    """``file:`` URL of a local directory, ending in ``/``."""
    url = urllib.parse.urljoin(
        'file:', urllib.request.pathname2url(os.path.abspath(path))
    )
    return url.rstrip('/') + '/'


def normalize_base(base: str) -> str:
    """A base URL ending in ``/``; a local directory becomes a ``file:`` URL."""
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme in ('http', 'https', 'file'):
        return base.rstrip('/') + '/'
    if scheme and len(scheme) > 1:
        raise DistillationError(
            f'unsupported zoo mirror {base!r}: give an http(s):// or file:// URL or '
            'a local directory'
        )
    return directory_url(os.path.expanduser(base))


def mirror_from_env() -> str | None:
    """The mirror set by ``ANTI_SCALING_ZOO_MIRROR``, if any."""
    return os.environ.get(ENV_MIRROR) or None


def base_url(model: ZooModel, mirror: str | None = None) -> str:
    """Where ``model``'s relative file URLs start (see the module docstring)."""
    base = mirror or mirror_from_env() or model.base_url or model.default_base
    if not base:
        raise DistillationError(
            f'zoo model {model.name} has no download location: pass --mirror URL or '
            f'set {ENV_MIRROR}'
        )
    return normalize_base(base)


def file_url(base: str, zoo_file: ZooFile) -> str:
    """Absolute URL of ``zoo_file`` under ``base``."""
    return urllib.parse.urljoin(base, zoo_file.url)


def manifest_json(models: Iterable[ZooModel], base: str | None = None) -> dict:
    """A manifest document holding ``models`` (sorted by name)."""
    doc: dict[str, Any] = {'format': FORMAT}
    if base:
        doc['base_url'] = base
    doc['models'] = [m.to_json() for m in sorted(models, key=lambda m: m.name)]
    return doc


def write_manifest(path: str, doc: dict) -> None:
    """Write a manifest document atomically (pretty-printed JSON)."""
    atomic_write(path, lambda fh: (json.dump(doc, fh, indent=2), fh.write('\n')))


def merge_into_manifest(path: str, model: ZooModel) -> None:
    """Add ``model`` to the manifest file ``path`` (created if missing), replacing
    a model of the same name; the file is replaced atomically.

    Entries already in the file are kept as written.
    """
    if os.path.exists(path):
        read_manifest(path)  # refuse to rewrite a broken manifest
        with open(path, encoding='utf-8') as fh:
            doc = json.load(fh)
    else:
        doc = {'format': FORMAT, 'models': []}
    entries = [e for e in doc['models'] if e.get('name') != model.name]
    entries.append(model.to_json())
    doc['models'] = sorted(entries, key=lambda e: e['name'])
    write_manifest(path, doc)


def format_size(size: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``; None -> ``'size unknown'``."""
    if size is None:
        return 'size unknown'
    value = float(size)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if value < 1024 or unit == 'GiB':
            return f'{int(value)} B' if unit == 'B' else f'{value:.1f} {unit}'
        value /= 1024
    raise AssertionError('unreachable')
