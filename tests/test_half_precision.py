"""Half precision: every objective computes in float32 whatever its inputs' dtype.

Tolerances: on the same half-precision values, an objective gives what float32
inputs holding those values give, to 1e-5 (relative); against the original
float32 values before rounding to half precision, to 3e-2 (the rounding of the
inputs themselves, 2^-11 for fp16 and 2^-8 for bf16 per value).
"""

from __future__ import annotations

import pytest
import torch

from anti_scaling import losses
from anti_scaling.agents.objectives import OBJECTIVES

HALF = [torch.float16, torch.bfloat16]
SAME_VALUES = 1e-5
ROUNDED_INPUTS = 3e-2


def _close(value, reference, rel):
    return torch.allclose(value, reference, rtol=rel, atol=rel * 1e-3)


def _check(fn, dtype, *tensors, **kwargs):
    """``fn`` on half inputs: finite, float32, and close to the float32 references."""
    half = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    upcast = [t.float() if t.is_floating_point() else t for t in half]
    value = fn(*half, **kwargs)
    assert value.total.dtype == torch.float32
    assert torch.isfinite(value.total).all(), fn.__name__
    assert _close(value.total, fn(*upcast, **kwargs).total, SAME_VALUES)
    assert _close(value.total, fn(*tensors, **kwargs).total, ROUNDED_INPUTS)
    return value


def _mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length // 2 :] = False
    return mask


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('name', ['mse', 'cosine', 'pkd'])
def test_hidden_states_of_std_20_over_128_tokens(dtype, name):
    torch.manual_seed(0)
    student = torch.randn(2, 128, 64) * 20
    teacher = torch.randn(2, 128, 64) * 20
    mask = _mask(2, 128)
    if name == 'mse':  # the case that overflowed: a sum of ~800 per token x 128
        naive = ((student - teacher).to(dtype) ** 2).mean(-1).sum(-1)
        assert dtype == torch.bfloat16 or torch.isinf(naive).any()
    _check(OBJECTIVES[name].function, dtype, student, teacher, mask)


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('name', ['attention_mse', 'attention_kl'])
def test_attention_scores_of_32_heads_over_128_positions(dtype, name):
    torch.manual_seed(0)
    heads, length = 32, 128
    mask = _mask(2, length)
    valid = losses.causal_attention_pairs(mask)
    student = torch.randn(2 * heads, length, length) * 4
    teacher = torch.randn(2 * heads, length, length) * 4
    # ParlAI writes the fp16 minimum where a key is not allowed
    blocked = ~valid.repeat_interleave(heads, dim=0)
    student[blocked] = -65504.0
    teacher[blocked] = -65504.0
    _check(OBJECTIVES[name].function, dtype, student, teacher, valid)


@pytest.mark.parametrize('dtype', HALF)
def test_relations_of_wide_states(dtype):
    torch.manual_seed(0)
    mask = _mask(2, 64)
    valid = losses.self_attention_pairs(mask)
    student = torch.randn(2, 64, 64) * 20
    teacher = torch.randn(2, 64, 128) * 20
    _check(losses.relation_kl, dtype, student, teacher, valid, relation_heads=8)
    _check(losses.value_relation_kl, dtype, student, student * 0.5, valid, heads=4)


@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize(
    'name', [n for n, o in OBJECTIVES.items() if o.compares == 'logits']
)
def test_prediction_objectives_with_masked_start_logits(dtype, name):
    torch.manual_seed(0)
    student = torch.randn(2, 24, 1000) * 5
    teacher = torch.randn(2, 24, 1000) * 5
    floor = -65504.0 if dtype == torch.float16 else -1e20  # ParlAI's neginf(dtype)
    student[..., 1] = floor
    teacher[..., 1] = floor
    mask = _mask(2, 24)
    spec = OBJECTIVES[name]
    params = {'temperature': 2.0, 'beta': 0.3, 'alpha': 0.1, 'interpolation': 0.6}
    kwargs = {k: v for k, v in params.items() if k in spec.params}
    student_half = student.to(dtype).requires_grad_(True)
    value = spec.function(student_half, teacher.to(dtype), mask, **kwargs)
    value.mean().backward()
    assert student_half.grad.dtype == dtype
    assert torch.isfinite(student_half.grad.float()).all()
    _check(spec.function, dtype, student, teacher, mask, **kwargs)


@pytest.mark.parametrize('dtype', HALF)
def test_attention_score_gradient_comes_back_in_the_students_dtype(dtype):
    torch.manual_seed(0)
    mask = _mask(2, 16)
    valid = losses.self_attention_pairs(mask)
    student = (torch.randn(8, 16, 16) * 4).to(dtype).requires_grad_(True)
    teacher = (torch.randn(8, 16, 16) * 4).to(dtype)
    losses.attention_score_mse(student, teacher, valid).mean().backward()
    assert student.grad.dtype == dtype
    reference = student.detach().float().requires_grad_(True)
    losses.attention_score_mse(reference, teacher.float(), valid).mean().backward()
    assert torch.allclose(student.grad.float(), reference.grad, rtol=1e-2, atol=1e-6)
