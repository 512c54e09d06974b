"""Serving students at engine speed, from a CTranslate2 export (the ``serve`` extra).

- :mod:`.replier`: :class:`~.replier.Replier`, the Python API (histories in, text out);
- :mod:`.server`: the HTTP JSON endpoint (``POST /reply``, ``GET /health``) that
  batches concurrent requests into one engine call;
- :mod:`.speed`: ParlAI and CTranslate2 timed alike (``benchmark_serving``,
  ``distill_report --runtimes``, ``make demo``).

The command lines are :mod:`anti_scaling.scripts.chat` and
:mod:`anti_scaling.scripts.serve`; the folders come from
:mod:`anti_scaling.scripts.export_ct2`.
"""

from __future__ import annotations

from typing import Any

__all__ = ['Replier']


def __getattr__(name: str) -> Any:
    if name == 'Replier':
        from .replier import Replier

        return Replier
    raise AttributeError(name)
