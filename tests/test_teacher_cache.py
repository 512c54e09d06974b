"""The teacher-output cache: build, read, refuse what does not fit, resume; and the
top-k KL against the full-vocabulary KL."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from helpers import TASK, make_agent

from anti_scaling import losses
from anti_scaling.cache import TeacherOutputCache, bytes_per_label_token, example_key
from anti_scaling.cache.build import CacheWriter
from anti_scaling.errors import DistillationError
from anti_scaling.precompute import (
    BatchTap,
    create_teacher_agent,
    pad,
    run_world,
    task_world,
)
from anti_scaling.scripts import cache_teacher_outputs as script

NARROW = 'anti_scaling.distillation:DistillNarrowTransformerAgent'
MULTITURN = 'integration_tests:multiturn_nocandidate'
ARRAYS = ('keys', 'offsets', 'lengths', 'ids', 'logprobs', 'rest')


def build(teacher_file, datapath, cache_dir, *extra, task=TASK):
    return script.main(
        [
            '--teacher-model',
            teacher_file,
            '-t',
            task,
            '--cache-dir',
            str(cache_dir),
            '-dp',
            datapath,
            *[str(e) for e in extra],
        ]
    )


@pytest.fixture(scope='module')
def train_cache(teacher_file, datapath, tmp_path_factory):
    """Top-8, float16, the whole train split of integration_tests:reverse."""
    path = tmp_path_factory.mktemp('cache') / 'reverse_k8'
    summary = build(teacher_file, datapath, path, '--top-k', 8, '--chunk-size', 200)
    return str(path), summary


@pytest.fixture(scope='module')
def full_cache(teacher_file, datapath, tmp_path_factory):
    """k = V (11), float32, at T = 2, on multi-turn data (labels of 2-5 tokens)."""
    path = tmp_path_factory.mktemp('cache') / 'multiturn_full'
    summary = build(
        teacher_file,
        datapath,
        path,
        '--top-k',
        11,
        '--cache-dtype',
        'float32',
        '--distill-temperature',
        2,
        '--splits',
        'valid',
        '-bs',
        16,
        task=MULTITURN,
    )
    return str(path), summary


def task_examples(teacher_file, datapath, task, split):
    """Every (context ids, label ids) the teacher agent sees in one pass of a split,
    captured from ParlAI's own vectorisation."""
    opt = script.setup_args().parse_args(
        ['--teacher-model', teacher_file, '-t', task, '-dp', datapath, '-bs', '8']
    )
    agent = create_teacher_agent(opt)
    examples = []

    def step(batch, observations):
        null = agent.NULL_IDX
        for text, label in zip(batch.text_vec, batch.label_vec):
            examples.append((text[text != null], label[label != null]))

    BatchTap(agent, step)
    run_world(task_world(opt, agent, split), 'capture')
    return agent, examples


def batches(examples, null_idx, sizes, seed=0):
    """The examples shuffled and cut into padded batches of the given sizes, cycling."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    i, k = 0, 0
    while i < len(order):
        size = sizes[k % len(sizes)]
        chunk = [examples[j] for j in order[i : i + size]]
        yield (
            pad([c for c, _ in chunk], null_idx),
            pad([lab for _, lab in chunk], null_idx),
        )
        i, k = i + size, k + 1


def teacher_logits(agent, text_vec, label_vec):
    with torch.no_grad():
        return agent.model(text_vec, ys=label_vec)[0].float()


# ---------------------------------------------------------------------------
# build and read back
# ---------------------------------------------------------------------------


def test_build_summary_and_meta(train_cache):
    path, summary = train_cache
    assert summary['examples'] == 500 and summary['tokens'] == 2500  # 4 digits + end
    cache = TeacherOutputCache.open(path, verify=True)
    assert (cache.top_k, cache.temperature, cache.vocab_size) == (8, 1.0, 11)
    assert cache.meta['splits'] == ['train'] and cache.meta['task']['task'] == TASK
    assert cache.ids.dtype == np.uint16 and cache.logprobs.dtype == np.float16
    assert not os.path.exists(path + '.partial')
    # each distribution sums to one over the k tokens and the rest
    total = np.exp(cache.logprobs.astype(np.float64)).sum(axis=1) + cache.rest
    assert np.allclose(total, 1.0, atol=2e-3)


def test_lookup_returns_the_teachers_topk_for_shuffled_rebatched_examples(
    train_cache, teacher_file, datapath
):
    cache = TeacherOutputCache.open(train_cache[0])
    agent, examples = task_examples(teacher_file, datapath, TASK, 'train')
    assert len(examples) == 500
    seen = 0
    for text_vec, label_vec in batches(examples, agent.NULL_IDX, [7, 32, 1, 13]):
        targets = cache.lookup(text_vec, label_vec, agent.NULL_IDX)
        assert targets.found.all()
        log_p = torch.log_softmax(teacher_logits(agent, text_vec, label_vec), -1)
        top = log_p.topk(8, dim=-1)
        mask = label_vec != agent.NULL_IDX
        assert torch.equal(targets.ids[mask], top.indices[mask])
        # float16 storage: rounding of at most 2^-11 relative
        assert torch.allclose(
            targets.logprobs[mask], top.values[mask], rtol=1e-3, atol=1e-3
        )
        rest = 1 - top.values.exp().sum(-1)
        assert torch.allclose(targets.rest[mask], rest[mask], atol=1e-5)
        seen += len(text_vec)
    assert seen == 500


def test_lookup_aligns_padding_and_history_on_multiturn_data(
    full_cache, teacher_file, datapath
):
    """Labels of different lengths, contexts with history, T = 2, k = V."""
    path, summary = full_cache
    cache = TeacherOutputCache.open(path)
    agent, examples = task_examples(teacher_file, datapath, MULTITURN, 'valid')
    assert summary['examples'] == len({example_key(c, lab) for c, lab in examples})
    lengths = {len(lab) for _, lab in examples}
    assert lengths == {2, 3, 4, 5}
    for text_vec, label_vec in batches(examples, agent.NULL_IDX, [9, 50], seed=1):
        targets = cache.lookup(text_vec, label_vec, agent.NULL_IDX)
        mask = label_vec != agent.NULL_IDX
        assert not mask.all()  # padding present
        log_p = torch.log_softmax(teacher_logits(agent, text_vec, label_vec) / 2, -1)
        # the start token (logit -1e20) is stored at the float16 floor
        full = torch.gather(log_p, -1, targets.ids).clamp(min=-65504)
        assert torch.allclose(targets.logprobs[mask], full[mask], atol=1e-5)
        assert torch.all(targets.rest[mask] < 1e-6)  # k = V: nothing left over
        # padding positions: finite and harmless
        assert torch.isfinite(targets.logprobs).all()
        assert torch.all(targets.rest[~mask] == 0)


def test_missing_examples_are_an_error_or_flagged(train_cache, teacher_file, datapath):
    cache = TeacherOutputCache.open(train_cache[0])
    agent, examples = task_examples(teacher_file, datapath, TASK, 'valid')
    null = agent.NULL_IDX
    text_vec, label_vec = next(batches(examples, null, [6]))
    with pytest.raises(
        DistillationError, match=r'6 of 6 examples .* not in the teacher'
    ):
        cache.lookup(text_vec, label_vec, null)
    _, train = task_examples(teacher_file, datapath, TASK, 'train')
    mixed = examples[:2] + train[:3]
    text_vec = pad([c for c, _ in mixed], null)
    label_vec = pad([lab for _, lab in mixed], null)
    with pytest.raises(DistillationError, match=r'2 of 5 examples'):
        cache.lookup(text_vec, label_vec, null)
    targets = cache.lookup(text_vec, label_vec, null, allow_missing=True)
    assert targets.found.tolist() == [False, False, True, True, True]
    assert torch.all(targets.ids[:2] == 0) and torch.all(targets.rest[:2] == 0)


# ---------------------------------------------------------------------------
# stale caches
# ---------------------------------------------------------------------------


def _student_opt(teacher_file, datapath, tmp_path, *extra):
    agent = make_agent(
        [
            '-m',
            NARROW,
            '--teacher-model',
            teacher_file,
            '-t',
            TASK,
            '-mf',
            str(tmp_path / 'student' / 'model'),
            '--embedding-size',
            '16',
            '--ffn-size',
            '32',
            '--pred-loss-coeff',
            '1',
            *extra,
        ],
        datapath,
    )
    return agent


def test_compatible_with_a_student_of_the_teacher(
    train_cache, teacher_file, datapath, tmp_path
):
    cache = TeacherOutputCache.open(train_cache[0])
    student = _student_opt(teacher_file, datapath, tmp_path)
    cache.check_compatible(
        student.teacher.path,
        student.opt['dict_file'],
        student.opt,
        vocab_size=student.model.embeddings.num_embeddings,
    )


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--text-truncate', '3'], r'--text-truncate is 3 here but null in the cache'),
        (['--label-truncate', '2'], r'--label-truncate is 2'),
        (['--distill-temperature', '2'], r'cannot be re-tempered'),
        (['--history-size', '1'], r'--history-size is 1'),
    ],
)
def test_stale_options_are_refused(
    train_cache, teacher_file, datapath, tmp_path, extra, message
):
    cache = TeacherOutputCache.open(train_cache[0])
    student = _student_opt(teacher_file, datapath, tmp_path, *extra)
    with pytest.raises(DistillationError, match=message):
        cache.check_compatible(
            student.teacher.path, student.opt['dict_file'], student.opt
        )


def test_changed_teacher_dictionary_or_task_is_refused(
    train_cache, teacher_file, tmp_path
):
    cache = TeacherOutputCache.open(train_cache[0])
    copy = str(tmp_path / 'teacher' / 'model')
    os.makedirs(os.path.dirname(copy))
    for suffix in ('', '.opt', '.dict'):
        shutil.copy(teacher_file + suffix, copy + suffix)
    opt = json.load(open(teacher_file + '.opt'))
    opt.update(task=TASK, distill_temperature=1.0)
    cache.check_compatible(copy, copy + '.dict', opt)  # a copy is the same teacher
    with open(copy, 'ab') as fh:
        fh.write(b'\0')
    with pytest.raises(DistillationError, match='the teacher model file changed'):
        cache.check_compatible(copy, copy + '.dict', opt)
    shutil.copy(teacher_file, copy)
    with open(copy + '.dict', 'a') as fh:
        fh.write('extra\t1\n')
    with pytest.raises(DistillationError, match='dict file content differs'):
        cache.check_compatible(copy, copy + '.dict', opt)
    shutil.copy(teacher_file + '.dict', copy + '.dict')
    with pytest.raises(DistillationError, match="task is 'integration_tests:multiturn"):
        cache.check_compatible(copy, copy + '.dict', {**opt, 'task': MULTITURN})
    with pytest.raises(DistillationError, match='predicts 16 tokens'):
        cache.check_compatible(copy, copy + '.dict', opt, vocab_size=16)


# ---------------------------------------------------------------------------
# corrupt caches
# ---------------------------------------------------------------------------


@pytest.fixture
def cache_copy(train_cache, tmp_path):
    path = str(tmp_path / 'copy')
    shutil.copytree(train_cache[0], path)
    return path


def test_truncated_array_is_refused(cache_copy):
    file = os.path.join(cache_copy, 'ids.npy')
    with open(file, 'r+b') as fh:
        fh.truncate(os.path.getsize(file) - 10)
    with pytest.raises(DistillationError, match=r'corrupt: .*ids\.npy has \d+ bytes'):
        TeacherOutputCache.open(cache_copy)


def test_broken_meta_is_refused(cache_copy):
    meta = os.path.join(cache_copy, 'meta.json')
    with open(meta, 'w') as fh:
        fh.write('{"format": "anti_scaling.teacher_cache", "vers')
    with pytest.raises(DistillationError, match=r'meta\.json is unreadable'):
        TeacherOutputCache.open(cache_copy)
    os.unlink(meta)
    with pytest.raises(DistillationError, match=r'meta\.json is missing'):
        TeacherOutputCache.open(cache_copy)


def test_wrong_version_and_missing_file_are_refused(cache_copy):
    meta_file = os.path.join(cache_copy, 'meta.json')
    meta = json.load(open(meta_file))
    json.dump({**meta, 'version': 99}, open(meta_file, 'w'))
    with pytest.raises(DistillationError, match='format version 99'):
        TeacherOutputCache.open(cache_copy)
    json.dump(meta, open(meta_file, 'w'))
    os.unlink(os.path.join(cache_copy, 'rest.npy'))
    with pytest.raises(DistillationError, match=r'rest\.npy is missing'):
        TeacherOutputCache.open(cache_copy)


def test_flipped_bytes_are_found(cache_copy):
    keys = os.path.join(cache_copy, 'keys.npy')
    original = np.load(keys)
    swapped = original.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    np.save(keys, swapped)  # same size, unsorted
    with pytest.raises(DistillationError, match=r'keys\.npy is not sorted'):
        TeacherOutputCache.open(cache_copy)
    np.save(keys, original)
    logprobs = os.path.join(cache_copy, 'logprobs.npy')
    array = np.load(logprobs)
    array[5, 0] -= 1
    np.save(logprobs, array)
    TeacherOutputCache.open(cache_copy)  # the structure is fine...
    with pytest.raises(
        DistillationError, match=r'logprobs\.npy does not match its SHA'
    ):
        TeacherOutputCache.open(cache_copy, verify=True)  # ...the content is not


def test_wrong_shape_is_refused(cache_copy):
    meta_file = os.path.join(cache_copy, 'meta.json')
    meta = json.load(open(meta_file))
    file = os.path.join(cache_copy, 'lengths.npy')
    np.save(file, np.load(file).astype(np.int64))
    meta['files']['lengths.npy']['size'] = os.path.getsize(file)
    json.dump(meta, open(meta_file, 'w'))
    with pytest.raises(
        DistillationError, match=r'lengths\.npy is int64 .* expected int32'
    ):
        TeacherOutputCache.open(cache_copy)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DistillationError, match='teacher cache not found'):
        TeacherOutputCache.open(str(tmp_path / 'nowhere'))


# ---------------------------------------------------------------------------
# interrupted builds, overwriting
# ---------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _valid_build(teacher_file, datapath, path, *extra):
    return build(
        teacher_file,
        datapath,
        path,
        '--top-k',
        4,
        '--splits',
        'valid',
        '-bs',
        8,
        '--chunk-size',
        16,
        *extra,
    )


def test_interrupted_build_resumes_to_the_same_cache(
    teacher_file, datapath, tmp_path, monkeypatch
):
    reference = tmp_path / 'reference'
    _valid_build(teacher_file, datapath, reference)

    forward_passes = []
    original_forward = script.forced_scores

    def counting_forward(*args, **kwargs):
        forward_passes.append(1)
        return original_forward(*args, **kwargs)

    def interrupt(self, index):
        if index == 1:
            raise _Interrupt()

    monkeypatch.setattr(script, 'forced_scores', counting_forward)
    monkeypatch.setattr(CacheWriter, '_chunk_written', interrupt)
    path = tmp_path / 'resumed'
    with pytest.raises(_Interrupt):
        _valid_build(teacher_file, datapath, path)
    assert not os.path.exists(path) and os.path.isdir(str(path) + '.partial')
    with pytest.raises(DistillationError, match='not finished'):
        TeacherOutputCache.open(str(path))
    done = len(forward_passes)
    assert done == 4  # two chunks of 16 examples, batches of 8

    monkeypatch.setattr(CacheWriter, '_chunk_written', lambda self, index: None)
    forward_passes.clear()
    summary = _valid_build(teacher_file, datapath, path)
    assert len(forward_passes) == 13 - done  # 100 examples: 13 batches in all
    assert summary['examples'] == 100
    assert not os.path.exists(str(path) + '.partial')
    for name in ARRAYS:
        a = np.load(os.path.join(path, f'{name}.npy'))
        b = np.load(os.path.join(reference, f'{name}.npy'))
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_partial_build_with_other_settings_is_discarded(
    teacher_file, datapath, tmp_path, monkeypatch
):
    def interrupt(self, index):
        raise _Interrupt()

    monkeypatch.setattr(CacheWriter, '_chunk_written', interrupt)
    path = tmp_path / 'cache'
    with pytest.raises(_Interrupt):
        _valid_build(teacher_file, datapath, path)
    monkeypatch.setattr(CacheWriter, '_chunk_written', lambda self, index: None)
    summary = _valid_build(teacher_file, datapath, path, '--top-k', 3)
    cache = TeacherOutputCache.open(str(path), verify=True)
    assert summary['examples'] == 100 and cache.top_k == 3


def test_existing_cache_needs_overwrite(teacher_file, datapath, tmp_path):
    path = tmp_path / 'cache'
    _valid_build(teacher_file, datapath, path)
    before = open(os.path.join(path, 'meta.json')).read()
    with pytest.raises(DistillationError, match='already exists: pass --overwrite'):
        _valid_build(teacher_file, datapath, path, '--top-k', 2)
    assert open(os.path.join(path, 'meta.json')).read() == before
    _valid_build(teacher_file, datapath, path, '--top-k', 2, '--overwrite', 'true')
    assert TeacherOutputCache.open(str(path)).top_k == 2
    precious = tmp_path / 'not_a_cache'
    precious.mkdir()
    (precious / 'notes.txt').write_text('keep me')
    with pytest.raises(DistillationError, match='holds no teacher cache'):
        _valid_build(teacher_file, datapath, precious, '--overwrite', 'true')
    assert (precious / 'notes.txt').read_text() == 'keep me'


def test_bad_flags_fail_before_any_work(teacher_file, datapath, tmp_path):
    with pytest.raises(DistillationError, match='larger than the vocabulary'):
        build(
            teacher_file, datapath, tmp_path / 'c', '--top-k', 12, '--splits', 'valid'
        )
    with pytest.raises(DistillationError, match='unknown split'):
        build(teacher_file, datapath, tmp_path / 'c', '--splits', 'dev')
    assert not os.path.exists(tmp_path / 'c')


# ---------------------------------------------------------------------------
# the top-k KL
# ---------------------------------------------------------------------------


def _topk(teacher, k, temperature):
    log_p = torch.log_softmax(teacher / temperature, -1)
    top = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, top.indices, float('-inf')).logsumexp(-1).exp()
    return top.indices, top.values, rest


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_topk_kl_equals_full_kl_when_k_is_the_vocabulary(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 6, 13), 3 * torch.randn(3, 6, 13)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    full = losses.prediction_kl(student, teacher, mask, temperature)
    ids, logprobs, rest = _topk(teacher, 13, temperature)
    cached = losses.topk_prediction_kl(student, ids, logprobs, rest, mask, temperature)
    assert torch.allclose(cached.total, full.total, atol=1e-5)
    assert torch.equal(cached.count, full.count)


@pytest.mark.parametrize('k', [1, 3, 8, 12])
def test_topk_kl_is_a_lower_bound_and_grows_with_k(k):
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 5, 13), 2 * torch.randn(4, 5, 13)
    mask = torch.rand(4, 5) > 0.2
    full = losses.prediction_kl(student, teacher, mask).mean()
    values = []
    for kk in (k, k + 1):
        ids, logprobs, rest = _topk(teacher, kk, 1.0)
        values.append(
            losses.topk_prediction_kl(student, ids, logprobs, rest, mask).mean()
        )
    assert 0 <= values[0] <= values[1] + 1e-6 <= full + 2e-6


def test_topk_kl_ignores_padding_and_has_finite_gradients():
    torch.manual_seed(2)
    student = torch.randn(2, 4, 9, requires_grad=True)
    teacher = torch.randn(2, 4, 9)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    ids, logprobs, rest = _topk(teacher, 9, 1.0)  # k = V: rest exactly 0
    value = losses.topk_prediction_kl(student, ids, logprobs, rest, mask)
    garbage = logprobs.clone()
    garbage[0, 2:] = float('nan')
    ids2 = ids.clone()
    ids2[0, 2:] = 0
    other = losses.topk_prediction_kl(student, ids2, garbage, rest, mask)
    assert torch.equal(value.total, other.total)
    value.mean().backward()
    assert torch.isfinite(student.grad).all()
    assert torch.all(student.grad[0, 2:] == 0)
    # ParlAI's masked start token (-1e20) in both models is fine
    student2, teacher2 = student.detach().clone(), teacher.clone()
    student2[..., 1], teacher2[..., 1] = -1e20, -1e20
    ids, logprobs, rest = _topk(teacher2, 9, 1.0)
    value = losses.topk_prediction_kl(student2, ids, logprobs, rest, mask)
    full = losses.prediction_kl(student2, teacher2, mask)
    assert torch.allclose(value.total, full.total, atol=1e-5)


def test_topk_kl_on_real_teacher_outputs(full_cache, teacher_file, datapath, capsys):
    """Against the full KL on the tiny teacher's own outputs: equal with k = V
    (float32), a lower bound with k < V, and the float16 rounding error."""
    cache = TeacherOutputCache.open(full_cache[0])
    agent, examples = task_examples(teacher_file, datapath, MULTITURN, 'valid')
    null = agent.NULL_IDX
    torch.manual_seed(3)
    errors = []
    for text_vec, label_vec in batches(examples, null, [64]):
        mask = label_vec != null
        logits = teacher_logits(agent, text_vec, label_vec)
        student = logits + torch.randn_like(logits)  # a student near the teacher
        full = losses.prediction_kl(student, logits, mask, temperature=2.0)
        t = cache.lookup(text_vec, label_vec, null)
        cached = losses.topk_prediction_kl(
            student, t.ids, t.logprobs, t.rest, mask, temperature=2.0
        )
        assert torch.allclose(cached.total, full.total, rtol=1e-4, atol=1e-5)
        half = losses.topk_prediction_kl(
            student, t.ids, t.logprobs.half().float(), t.rest, mask, temperature=2.0
        )
        errors.append(abs(half.mean() - full.mean()).item() / full.mean().item())
        for k in (1, 4, 8):
            ids, logprobs = t.ids[..., :k], t.logprobs[..., :k]
            rest = 1 - logprobs.exp().sum(-1)
            lower = losses.topk_prediction_kl(
                student, ids, logprobs, rest.clamp(min=0), mask, temperature=2.0
            )
            assert lower.mean() <= full.mean() + 1e-5
        agreement = losses.cached_agreement(student.argmax(-1), t.ids, mask)
        expected = losses.token_agreement(student.argmax(-1), logits.argmax(-1), mask)
        assert torch.equal(agreement.total, expected.total)
    assert max(errors) < 1e-3
    with capsys.disabled():
        print(f'\nfloat16 cache: relative KL error at most {max(errors):.2e}')


# ---------------------------------------------------------------------------
# size
# ---------------------------------------------------------------------------


def test_cache_size_per_1000_label_tokens(tmp_path, capsys):
    """Measured on disk: a cache of 400 examples of 25 label tokens, V = 50,000."""
    rng = np.random.default_rng(0)
    rows = []
    for k in (8, 32, 64):
        for dtype in ('float16', 'float32'):
            path = str(tmp_path / f'k{k}_{dtype}')
            writer = CacheWriter(path, {'k': k}, k, 'uint16', dtype, chunk_examples=100)
            writer.start()
            for start in range(0, 400, 50):
                n, length = 50, 25
                keys = np.stack(
                    [
                        np.frombuffer(example_key([start + i], [1]), np.uint8)
                        for i in range(n)
                    ]
                )
                logits = rng.normal(size=(n * length, k)).astype(np.float32)
                log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True) * 1.25)
                writer.add(
                    keys,
                    np.full(n, length),
                    rng.integers(0, 50000, size=(n * length, k)),
                    log_p,
                    np.full(n * length, 0.2),
                )
                writer.batch_done()
            cache = writer.finish(
                {
                    'temperature': 1.0,
                    'vocab_size': 50000,
                    'teacher': {},
                    'dictionary': {'sha256': {}, 'options': {}},
                    'vectorization': {},
                    'task': {'task': 'synthetic', 'options': {}},
                    'splits': ['train'],
                }
            )
            per_1000 = 1000 * cache.size_bytes() / cache.num_tokens
            formula = 1000 * bytes_per_label_token(k, 'uint16', dtype)
            # + 28 bytes per example of 25 tokens, + the .npy headers
            assert formula < per_1000 < formula + 1000 * 28 / 25 + 200
            rows.append((k, dtype, per_1000))
    with capsys.disabled():
        print('\ncache size per 1,000 label tokens (uint16 ids, 25 tokens/example):')
        for k, dtype, size in rows:
            print(f'  k={k:3d} {dtype}: {size / 1000:7.1f} kB')


def test_every_label_of_multi_label_examples_is_cached(
    teacher_file, datapath, tmp_path
):
    """ParlAI trains on a random one of several labels: all of them are cached."""
    from parlai.core.agents import create_agent_from_shared
    from parlai.core.message import Message

    data = tmp_path / 'data.txt'
    data.write_text(
        'text:1 2 3\tlabels:3 2 1|1 2 3|2 2\tepisode_done:True\n'
        'text:4 5\tlabels:5 4\tepisode_done:True\n'
        'text:1 2 3\tlabels:3 2 1\tepisode_done:True\n'
    )
    path = tmp_path / 'cache'
    summary = build(
        teacher_file,
        datapath,
        path,
        '--top-k',
        5,
        '--splits',
        'valid',
        '--fromfile-datapath',
        data,
        task='fromfile:parlaiformat',
    )
    assert (summary['examples'], summary['duplicates']) == (4, 1)
    cache = TeacherOutputCache.open(str(path))
    assert cache.meta['task']['options']['fromfile_datapath'] == str(data)
    opt = script.setup_args().parse_args(['--teacher-model', teacher_file])
    agent = create_teacher_agent(opt)
    pairs = [('1 2 3', '3 2 1'), ('1 2 3', '1 2 3'), ('1 2 3', '2 2'), ('4 5', '5 4')]
    observations = [
        create_agent_from_shared(agent.share()).observe(
            Message({'text': t, 'eval_labels': [lab], 'episode_done': True})
        )
        for t, lab in pairs
    ]
    batch = agent.batchify(observations)
    targets = cache.lookup(batch.text_vec, batch.label_vec, agent.NULL_IDX)
    log_p = torch.log_softmax(
        teacher_logits(agent, batch.text_vec, batch.label_vec), -1
    )
    mask = batch.label_vec != agent.NULL_IDX
    assert torch.equal(targets.ids[mask], log_p.topk(5, -1).indices[mask])


# ---------------------------------------------------------------------------
# the agents reading their targets from the cache
# ------------------------------------------------


def test_training_reads_every_target_from_the_cache(
    train_cache, teacher_file, datapath, tmp_path
):
    from helpers import train, train_reports

    model_file = str(tmp_path / 'student' / 'model')
    valid, _ = train(
        datapath,
        model=NARROW,
        teacher_model=teacher_file,
        teacher_cache=train_cache[0],
        n_encoder_layers=1,
        n_decoder_layers=1,
        embedding_size=16,
        ffn_size=32,
        pred_loss_coeff=1.0,
        model_file=model_file,
        num_epochs=1.5,  # shuffled batches, a second epoch
        batchsize=12,
        log_every_n_steps=10,
    )
    reports = train_reports(model_file)
    assert len(reports) >= 5
    assert all(r['cache_hits'] == 1.0 for r in reports)
    assert all('teacher_acc' in r for r in reports)
    assert reports[-1]['pred_loss'] < reports[0]['pred_loss']
    assert valid['cache_hits'] == 0.0  # the valid split was not cached: no targets


def test_agent_with_cache_needs_no_teacher_model_and_matches_the_live_kl(
    full_cache, teacher_file, datapath, tmp_path
):
    """With k = V the cached pred_loss is the live teacher's, without the teacher."""
    from helpers import make_agent
    from parlai.core.torch_agent import Batch

    args = ['-m', NARROW, '--teacher-model', teacher_file, '-t', MULTITURN]
    args += ['-mf', str(tmp_path / 's' / 'model'), '--embedding-size', '16']
    args += ['--n-layers', '1', '--pred-loss-coeff', '1', '--distill-temperature', '2']
    cached = make_agent([*args, '--teacher-cache', full_cache[0]], datapath)
    assert cached.teacher.model is None and cached.distillation.cache is not None
    live = make_agent(args, datapath)
    live.model.load_state_dict(cached.model.state_dict())
    _, examples = task_examples(teacher_file, datapath, MULTITURN, 'valid')
    for text_vec, label_vec in list(batches(examples, live.NULL_IDX, [5, 7]))[:2]:
        batch = Batch(
            text_vec=text_vec,
            label_vec=label_vec,
            batchsize=text_vec.size(0),
            valid_indices=list(range(text_vec.size(0))),
        )
        values = []
        for agent in (cached, live):
            agent.model.eval()
            agent._local_metrics.clear()
            with torch.no_grad():
                values.append(agent.compute_loss(batch).item())
        assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_cache_refuses_runs_it_cannot_serve(
    train_cache, teacher_file, datapath, tmp_path
):
    from helpers import make_agent

    base = ['-m', NARROW, '--teacher-model', teacher_file, '-t', TASK]
    base += ['-mf', str(tmp_path / 's' / 'model'), '--embedding-size', '16']
    base += ['--pred-loss-coeff', '1', '--teacher-cache', train_cache[0]]
    with pytest.raises(DistillationError, match='intermediate terms need the live'):
        make_agent([*base, '--hidden-loss-coeff', '1'], datapath)
    with pytest.raises(DistillationError, match='only kl has a top-k form'):
        make_agent([*base, '--pred-loss-type', 'jsd'], datapath)
    with pytest.raises(DistillationError, match='temperature'):
        make_agent([*base, '--distill-temperature', '3'], datapath)
    with pytest.raises(DistillationError, match='--bpe-dropout'):
        make_agent([*base, '--bpe-dropout', '0.1'], datapath)
    assert not (tmp_path / 's').exists()
