"""Run a teacher once over a task and cache its prediction-layer outputs.

    python -m anti_scaling.scripts.cache_teacher_outputs --teacher-model T -t TASK \\
        --cache-dir DIR --top-k K [--distill-temperature 1] [--cache-dtype float16] \\
        [--splits train] [-bs 32] [-dp DP] [--chunk-size 10000] [--overwrite true] \\
        [task and text options...]

For every label token of every example of the task's split(s) (one ordered
pass, every label of multi-label examples), stores the teacher's ``K`` most
probable tokens, their log-probabilities at temperature ``T`` and the
probability mass left outside them, in the memory-mapped format of
:mod:`anti_scaling.cache.store`. The teacher agent vectorises the data itself,
so the entries are keyed by exactly the ids a student with the teacher's
dictionary and text options sees; ParlAI flags (``--text-truncate``, task
options...) apply as in ``parlai eval_model -mf T``. A student then reads its
prediction targets from ``DIR`` instead of running the teacher.

The build writes ``DIR.partial/`` in chunks; rerunning the same command after an
interruption resumes after the last complete chunk (another command discards
the partial build, saying why). ``DIR`` appears only once complete and
verified; an existing ``DIR`` is replaced only with ``--overwrite true``.

Float16 log-probabilities (the default) halve their array; their rounding
error is at most ``2^-11 |log p|`` per value, which moves the KL by about
``1e-3`` of the value or less (measured in tests/test_teacher_cache.py). Token
ids are uint16 when the vocabulary has at most 65,536 entries, else int32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import parlai.utils.logging as logging
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript
from parlai.core.torch_agent import Batch

from .. import losses
from ..cache import fingerprint as fp
from ..cache.build import CacheWriter, check_destination
from ..cache.keys import batch_keys, bytes_per_label_token
from ..cache.store import LOGPROB_DTYPES
from ..errors import DistillationError, install_excepthook
from ..precompute import (
    BatchTap,
    create_teacher_agent,
    forced_scores,
    label_vectors,
    require_task,
    run_world,
    split_datatype,
    task_world,
    teacher_pass_parser,
    vocab_size,
)


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    """ParlAI's parser with the task, the teacher's options and the cache flags."""
    parser = teacher_pass_parser(
        parser, 'Cache a teacher\'s top-k output distributions'
    )
    group = parser.add_argument_group('Teacher output cache')
    group.add_argument('--cache-dir', type=str, default=None, help='Output folder.')
    group.add_argument(
        '--top-k',
        type=int,
        default=32,
        help='Teacher tokens kept per label token (the rest is stored as one mass).',
    )
    group.add_argument(
        '--distill-temperature',
        type=float,
        default=1.0,
        help='Temperature T of the stored distribution softmax(z/T); students must '
        'train with the same --distill-temperature.',
    )
    group.add_argument(
        '--cache-dtype',
        type=str,
        default='float16',
        choices=list(LOGPROB_DTYPES),
        help='Storage type of the log-probabilities.',
    )
    group.add_argument(
        '--splits',
        type=str,
        default=None,
        help='Comma-separated splits to cache (default: the split of -dt, train).',
    )
    group.add_argument(
        '--chunk-size',
        type=int,
        default=10000,
        help='Examples per chunk: an interrupted build resumes after the last chunk.',
    )
    group.add_argument(
        '--overwrite',
        type='bool',
        default=False,
        help='Replace an existing cache (only once the new one is complete).',
    )
    return parser


def cache_splits(opt: dict) -> list[str]:
    """The splits to cache: ``--splits``, else the split of ``-dt``."""
    raw = opt.get('splits') or opt.get('datatype') or 'train'
    splits = [s.strip().split(':')[0] for s in raw.split(',') if s.strip()]
    for split in splits:
        split_datatype(split)
    if not splits or len(set(splits)) != len(splits):
        raise DistillationError(
            f'--splits {raw!r}: give distinct splits, e.g. train,valid'
        )
    return splits


class _Recorder:
    """Per batch: the teacher's top-k targets for every label of every example."""

    def __init__(
        self, agent: Any, writer: CacheWriter, top_k: int, temperature: float, skip: int
    ):
        self.agent = agent
        self.writer = writer
        self.top_k = top_k
        self.temperature = temperature
        self.skip = skip
        self.index = 0
        self.tap = BatchTap(agent, self.step)

    def step(self, batch: Batch, observations: list) -> None:
        index = self.index
        self.index += 1
        if index < self.skip:
            return None
        if batch.text_vec is not None and batch.label_vec is not None:
            for rows, label_vec in self._label_passes(batch, observations):
                text_vec = batch.text_vec if rows is None else batch.text_vec[rows]
                self._record(batch, text_vec, label_vec)
        self.writer.batch_done()
        return None

    def _label_passes(self, batch: Batch, observations: list) -> list:
        """``(rows, label_vec)`` per label position; one pass for single labels."""
        labels = [
            list(o.get('labels') or o.get('eval_labels') or []) for o in observations
        ]
        most = max((len(lbls) for lbls in labels), default=0)
        if most <= 1:
            return [(None, batch.label_vec)]
        passes = []
        for j in range(most):
            rows = [r for r, lbls in enumerate(labels) if len(lbls) > j]
            label_vec = label_vectors(
                self.agent,
                [observations[r] for r in rows],
                [labels[r][j] for r in rows],
            )
            passes.append((rows, label_vec))
        return passes

    def _record(self, batch: Batch, text_vec: Any, label_vec: Any) -> None:
        import torch

        label_vec = label_vec.to(text_vec.device)
        scores = forced_scores(self.agent, batch, text_vec, label_vec)
        log_p = losses.tempered_log_probs(scores.float(), self.temperature)
        top = log_p.topk(self.top_k, dim=-1, sorted=True)
        rest = log_p.scatter(-1, top.indices, float('-inf')).logsumexp(dim=-1).exp()
        keys, mask = batch_keys(text_vec, label_vec, self.agent.NULL_IDX)
        lengths = mask.sum(axis=1)
        keep = lengths > 0
        token_mask = torch.from_numpy(mask).to(log_p.device)
        self.writer.add(
            keys[keep],
            lengths[keep].astype(np.int32),
            top.indices[token_mask].cpu().numpy(),
            top.values[token_mask].cpu().numpy(),
            rest[token_mask].cpu().numpy(),
        )


class CacheTeacherOutputs(ParlaiScript):
    """``python -m anti_scaling.scripts.cache_teacher_outputs`` (see the module doc)."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict[str, Any]:
        opt = self.opt
        if not opt.get('cache_dir'):
            raise DistillationError('--cache-dir is required: the folder to write')
        require_task(opt, 'the data to run the teacher on')
        top_k = int(opt['top_k'])
        temperature = float(opt['distill_temperature'])
        if top_k < 1:
            raise DistillationError(f'--top-k is {top_k}: it must be at least 1')
        if temperature <= 0:
            raise DistillationError(
                f'--distill-temperature is {temperature}: it must be > 0'
            )
        if int(opt.get('chunk_size') or 0) < 1:
            raise DistillationError('--chunk-size must be at least 1')
        check_destination(opt['cache_dir'], bool(opt.get('overwrite')))
        splits = cache_splits(opt)
        agent = create_teacher_agent(opt)
        vocab = vocab_size(agent)
        if top_k > vocab:
            raise DistillationError(
                f'--top-k {top_k} is larger than the vocabulary ({vocab} tokens)'
            )
        id_dtype = 'uint16' if vocab <= 65536 else 'int32'
        teacher = {
            **fp.teacher_fingerprint(agent.opt['model_file']),
            'model_file': os.path.abspath(agent.opt['model_file']),
            'model': agent.opt.get('model'),
        }
        meta = {
            'temperature': temperature,
            'vocab_size': vocab,
            'null_idx': int(agent.NULL_IDX),
            'teacher': teacher,
            'dictionary': fp.dictionary_fingerprint(
                agent.opt.get('dict_file'), agent.opt
            ),
            'vectorization': fp.vectorization_fingerprint(agent.opt),
            'task': fp.task_fingerprint(opt['task'], opt),
            'splits': splits,
        }
        build = {
            **meta,
            'top_k': top_k,
            'id_dtype': id_dtype,
            'logprob_dtype': opt['cache_dtype'],
            'batchsize': int(opt.get('batchsize') or 1),
        }
        writer = CacheWriter(
            opt['cache_dir'],
            build,
            top_k,
            id_dtype,
            opt['cache_dtype'],
            chunk_examples=int(opt['chunk_size']),
            overwrite=bool(opt.get('overwrite')),
        )
        skip = writer.start()
        _Recorder(agent, writer, top_k, temperature, skip)
        for split in splits:
            run_world(task_world(opt, agent, split), f'teacher outputs ({split})')
        cache = writer.finish(meta)
        size = cache.size_bytes()
        summary = {
            'cache_dir': cache.path,
            'examples': cache.num_examples,
            'tokens': cache.num_tokens,
            'duplicates': int(cache.meta.get('duplicates', 0)),
            'top_k': top_k,
            'logprob_dtype': opt['cache_dtype'],
            'id_dtype': id_dtype,
            'bytes': size,
            'bytes_per_1000_label_tokens': 1000.0 * size / cache.num_tokens,
            'token_bytes_per_1000_label_tokens': 1000
            * bytes_per_label_token(top_k, id_dtype, opt['cache_dtype']),
        }
        logging.info(
            f'Wrote {cache.describe()}: {size / 1e6:.2f} MB, '
            f"{summary['bytes_per_1000_label_tokens'] / 1e3:.1f} kB per 1,000 label "
            f"tokens ({summary['duplicates']} duplicate examples stored once)"
        )
        return summary


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Entry point: one line on bad input, the summary dict otherwise."""
    install_excepthook()
    return CacheTeacherOutputs.main(*(args or []))


if __name__ == '__main__':
    main()
