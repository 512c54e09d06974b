"""``zoo:anti_scaling/NAME/model`` wherever ParlAI accepts a model file.

ParlAI 1.7.2 resolves ``zoo:A/B/file`` in ``parlai.core.build_data.modelzoo_path``
by importing ``parlai.zoo.A.B``, calling its ``download(datapath)`` and returning
``<datapath>/models/A/B/file``. :func:`install_zoo_finder` adds an import hook
that serves ``parlai.zoo.anti_scaling`` and ``parlai.zoo.anti_scaling.NAME``;
the latter's ``download`` fetches and verifies zoo model ``NAME`` into
``<datapath>/models/anti_scaling/NAME/`` (see :mod:`anti_scaling.zoo.download`),
taking the mirror and user manifests from the environment
(``ANTI_SCALING_ZOO_MIRROR``, ``ANTI_SCALING_ZOO_MANIFEST``).

The hook exists once ``anti_scaling.zoo`` is imported, which our agents do: so
``--teacher-model``, ``--init-model``, ``-mf`` and ``--dict-file`` take zoo names
in any command with ``-m anti_scaling.distillation:...``. A plain ParlAI command
(``-m transformer/generator``) never imports us: there, run
``python -m anti_scaling.scripts.zoo download NAME`` and pass the path it prints.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

ZOO_PACKAGE = 'parlai.zoo.anti_scaling'
ZOO_PREFIX = 'zoo:anti_scaling/'


def zoo_path(name: str, file: str = 'model') -> str:
    """The ParlAI path of zoo model ``name``: ``zoo:anti_scaling/NAME/model``."""
    return f'{ZOO_PREFIX}{name}/{file}'


def _download_function(name: str):  # noqa: ANN202
    def download(datapath: str | None) -> None:
        """Fetch and verify zoo model ``name`` into ``<datapath>/models/anti_scaling``."""
        from .download import fetch_model

        fetch_model(name, datapath)

    download.__qualname__ = f'download[{name}]'
    return download


class ZooFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook serving ``parlai.zoo.anti_scaling[.NAME]`` modules."""

    anti_scaling_zoo = True  # how install_zoo_finder recognises an installed one

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname == ZOO_PACKAGE:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        prefix = ZOO_PACKAGE + '.'
        if fullname.startswith(prefix) and '.' not in fullname[len(prefix) :]:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return None  # default module creation

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == ZOO_PACKAGE:
            module.__doc__ = 'anti_scaling zoo models (served by anti_scaling.zoo).'
            return
        name = module.__name__.rsplit('.', 1)[1]
        module.__doc__ = f'anti_scaling zoo model {name}.'
        module.download = _download_function(name)


def install_zoo_finder() -> None:
    """Let ParlAI resolve ``zoo:anti_scaling/NAME/...`` (idempotent, cheap).

    Adds :class:`ZooFinder` at the front of ``sys.meta_path`` unless one is
    there already. Only the names ``parlai.zoo.anti_scaling[.NAME]`` are served;
    every other import is left to Python.
    """
    if any(getattr(f, 'anti_scaling_zoo', False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, ZooFinder())
