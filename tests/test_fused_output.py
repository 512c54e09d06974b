"""The fused, chunked output layer + task loss + prediction term equals the unfused
computation (ParlAI's F.linear, its cross-entropy, the objective on full logits):
values and gradients w.r.t. the decoder states, the output weight and a bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anti_scaling import losses
from anti_scaling.agents.objectives import objective
from anti_scaling.agents.teacher_targets import mix_logits
from anti_scaling.losses.fused_output import fused_output_loss, masked_logit

KINDS = [
    ('kl', {}),
    ('reverse_kl', {}),
    ('jsd', {'beta': 0.5}),
    ('jsd', {'beta': 0.0}),
    ('skew_kl', {'alpha': 0.1}),
    ('skew_reverse_kl', {'alpha': 0.1}),
    ('taid', {'interpolation': 0.6}),
    ('soft_ce', {}),
    ('logit_mse', {}),
]
B, T, D, V, COLUMN = 3, 5, 8, 40, 1
W_TASK, W_PRED = 0.7, 1.3


def _inputs(dtype=torch.float32, bias=True, teachers=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(V, D, generator=g).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(2, V, (B, T), generator=g)
    labels[0, 3:] = 0  # padding
    labels[2, 1:] = 0
    teacher = [3 * torch.randn(B, T, V, generator=g) for _ in range(teachers)]
    for t in teacher:
        t[..., COLUMN] = -1e20
    return hidden, weight, b, labels, teacher


def _params(kind, extra, temperature):
    spec = objective(kind)
    params = dict(extra)
    if 'temperature' in spec.params:
        params['temperature'] = temperature
    return spec, params


def _teacher_logits(teacher, weights, temperature, spec):
    return mix_logits(teacher, weights, temperature, spec.probabilities)


def unfused(hidden, weight, bias, labels, teacher, kind, extra, temperature, weights):
    """Today's step: ParlAI's output layer and criterion, then the objective."""
    mask = labels != 0
    logits = F.linear(hidden, weight, bias)
    logits[:, :, COLUMN] = masked_logit(logits.dtype)
    per_token = F.cross_entropy(
        logits.reshape(-1, V).float(), labels.view(-1), ignore_index=0, reduction='none'
    ).view(B, T)
    task = per_token.sum() / mask.sum()
    spec, params = _params(kind, extra, temperature)
    target = _teacher_logits(teacher, weights, temperature, spec)
    pred = spec.function(logits, target, mask, **params)
    return W_TASK * task + W_PRED * pred.mean(), per_token, pred, logits.max(-1)[1]


def fused(
    hidden, weight, bias, labels, teacher, kind, extra, temperature, weights, chunk
):
    mask = labels != 0
    spec, params = _params(kind, extra, temperature)
    targets = labels[mask]
    rows = [t[mask] for t in teacher]
    n = int(mask.sum())

    def chunk_loss(z, start, end):
        task = F.cross_entropy(z, targets[start:end], reduction='none')
        target = _teacher_logits(
            [r[start:end] for r in rows], weights, temperature, spec
        )
        every = torch.ones(end - start, 1, dtype=torch.bool)
        value = spec.function(z[:, None], target[:, None], every, **params).total
        return W_TASK * task.sum() / n + W_PRED * value.sum() / n, (task, value)

    return fused_output_loss(hidden[mask], weight, bias, chunk_loss, chunk, COLUMN)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def _close(a, b, rel):
    scale = b.detach().abs().max().clamp(min=1e-30)
    assert float((a.detach() - b.detach()).abs().max() / scale) <= rel


@pytest.mark.parametrize(('kind', 'extra'), KINDS)
@pytest.mark.parametrize(('temperature', 'chunk'), [(1.0, 4), (2.0, 3)])
def test_fused_equals_unfused_in_float32(kind, extra, temperature, chunk):
    hidden, weight, bias, labels, teacher = _inputs()
    args = (hidden, weight, bias, labels, teacher, kind, extra, temperature, [1.0])
    want, per_token, pred, preds = unfused(*args)
    got, (task_rows, pred_rows), argmax = fused(*args, chunk)
    mask = labels != 0
    _close(got, want, 1e-6)
    _close(task_rows, per_token[mask], 1e-6)  # ParlAI's loss and ppl
    assert torch.equal(argmax, preds[mask])  # token_acc
    _close(losses.token_mean.per_example(pred_rows, mask).total, pred.total, 1e-6)
    for g_got, g_want in zip(
        _grads(got, [hidden, weight, bias]),
        _grads(want, [hidden, weight, bias]),
        strict=True,
    ):
        _close(g_got, g_want, 1e-6)


@pytest.mark.parametrize('kind', ['kl', 'jsd', 'logit_mse'])
def test_several_teachers_and_no_bias(kind):
    hidden, weight, _, labels, teacher = _inputs(bias=False, teachers=2, seed=1)
    extra = dict(KINDS)[kind]
    args = (hidden, weight, None, labels, teacher, kind, extra, 2.0, [0.25, 0.75])
    want = unfused(*args)[0]
    got = fused(*args, 5)[0]
    _close(got, want, 1e-6)
    for g_got, g_want in zip(
        _grads(got, [hidden, weight]), _grads(want, [hidden, weight]), strict=True
    ):
        _close(g_got, g_want, 1e-6)


@pytest.mark.parametrize(
    ('dtype', 'rel'), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
)
def test_half_precision_inputs_within_bounds(dtype, rel):
    """Half-precision states and weights (``--fp16``): the logits are made in that
    dtype in both paths; the fused path accumulates the weight's gradient in float32,
    so the two differ by the half-precision rounding of the unfused path's sums."""
    hidden, weight, bias, labels, teacher = _inputs(dtype)
    args = (hidden, weight, bias, labels, teacher, 'kl', {}, 2.0, [1.0])
    want = unfused(*args)[0]
    got = fused(*args, 4)[0]
    assert got.dtype == torch.float32
    _close(got, want, 1e-6)
    for g_got, g_want in zip(
        _grads(got, [hidden, weight, bias]),
        _grads(want, [hidden, weight, bias]),
        strict=True,
    ):
        assert g_got.dtype == dtype
        _close(g_got.float(), g_want.float(), rel)


def test_bf16_autocast_matches_unfused_autocast():
    hidden, weight, bias, labels, teacher = _inputs()
    args = (hidden, weight, bias, labels, teacher, 'reverse_kl', {}, 1.0, [1.0])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        want = unfused(*args)[0]
        got = fused(*args, 4)[0]
    _close(got, want, 1e-5)
    for g_got, g_want in zip(
        _grads(got, [hidden, weight, bias]),
        _grads(want, [hidden, weight, bias]),
        strict=True,
    ):
        _close(g_got, g_want, 2e-2)


def test_gradient_follows_any_upstream_scale():
    """ParlAI's fp16 optimizers scale the loss before backward."""
    hidden, weight, bias, labels, teacher = _inputs()
    args = (hidden, weight, bias, labels, teacher, 'kl', {}, 1.0, [1.0])
    got = fused(*args, 4)[0]
    want = unfused(*args)[0]
    (g_got,) = torch.autograd.grad(1024.0 * got, [weight])
    (g_want,) = torch.autograd.grad(1024.0 * want, [weight])
    _close(g_got, g_want, 1e-6)


@pytest.mark.parametrize('chunk', [0, -2, 1.5, True, '8'])
def test_chunk_size_must_be_a_positive_integer(chunk):
    hidden, weight, bias, _, _ = _inputs()
    with pytest.raises(ValueError, match='chunk size must be a positive integer'):
        fused_output_loss(hidden[0], weight, bias, lambda z, s, e: (z.sum(), ()), chunk)


def test_frozen_output_weight_gets_no_gradient():
    """A frozen output embedding (``--freeze-encoder``, tied): no weight gradient is
    made; the states' gradient is still autograd's."""
    hidden, weight, bias, labels, teacher = _inputs()
    weight.requires_grad_(False)
    args = (hidden, weight, bias, labels, teacher, 'kl', {}, 1.0, [1.0])
    got = fused(*args, 4)[0]
    want = unfused(*args)[0]
    for g_got, g_want in zip(
        _grads(got, [hidden, bias]), _grads(want, [hidden, bias]), strict=True
    ):
        _close(g_got, g_want, 1e-6)
    assert weight.grad is None
