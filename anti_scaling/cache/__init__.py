"""Cached teacher outputs: run the teacher once, distil many times.

- :mod:`~anti_scaling.cache.store`: the format and :class:`TeacherOutputCache`
  (open, check against a run, look up a batch's targets);
- :mod:`~anti_scaling.cache.keys`: example keys and array arithmetic;
- :mod:`~anti_scaling.cache.build`: the chunked, resumable writer;
- :mod:`~anti_scaling.cache.fingerprint`: what a cache depends on.

Build one with ``python -m anti_scaling.scripts.cache_teacher_outputs``; the
loss against it is :func:`anti_scaling.losses.topk_prediction_kl`.
"""

from .keys import CachedTargets, bytes_per_label_token, example_key
from .store import TeacherOutputCache, open_for_run

__all__ = [
    'CachedTargets',
    'TeacherOutputCache',
    'bytes_per_label_token',
    'example_key',
    'open_for_run',
]
