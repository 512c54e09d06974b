"""The core loss terms against values computed by hand (plain Python arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from anti_scaling import losses


def test_masked_mse_hand_computed_with_padding():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [-5.0, 7.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    # per token: mean over dims of squared differences
    t00 = ((1 - 1) ** 2 + (2 - 0) ** 2) / 2  # 2.0
    t01 = ((3 - 0) ** 2 + (4 - 4) ** 2) / 2  # 4.5
    t10 = ((0 - 1) ** 2 + (0 - 1) ** 2) / 2  # 1.0
    result = losses.masked_mse(student, teacher, mask)
    assert result.total.tolist() == [t00 + t01, t10]
    assert result.count.tolist() == [2.0, 1.0]
    assert result.mean().item() == pytest.approx((t00 + t01 + t10) / 3)


def test_masked_mse_padded_token_changes_nothing():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    before = losses.masked_mse(student, teacher, mask).mean()
    student[0, 2] = 100.0
    teacher[1, 1:] = -50.0
    assert losses.masked_mse(student, teacher, mask).mean() == before


def test_masked_mse_projection_applied_to_student():
    student = torch.tensor([[[1.0], [2.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [4.0, 1.0]]])
    mask = torch.tensor([[True, True]])

    def projection(x):  # [N, 1] -> [N, 2]: (2x, 0)
        return torch.cat([2 * x, torch.zeros_like(x)], dim=-1)

    # token 0: (2-2)^2, (0-0)^2 -> 0 ; token 1: (4-4)^2, (0-1)^2 -> 0.5
    assert losses.masked_mse(student, teacher, mask, projection).mean().item() == 0.25
    with pytest.raises(ValueError, match='projection is needed'):
        losses.masked_mse(student, teacher, mask)


def _softmax(xs):
    m = max(xs)
    exps = [math.exp(x - m) for x in xs]
    s = sum(exps)
    return [e / s for e in exps]


@pytest.mark.parametrize('temperature', [1.0, 2.0, 0.5])
def test_prediction_kl_hand_computed(temperature):
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    zt = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    student = torch.tensor([zs + [[9.0, 9.0, 9.0]]])  # third token is padding
    teacher = torch.tensor([zt + [[-9.0, 0.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    expected = []
    for s_row, t_row in zip(zs, zt):
        p = _softmax([x / temperature for x in t_row])
        q = _softmax([x / temperature for x in s_row])
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        expected.append(kl * temperature**2)
    result = losses.prediction_kl(student, teacher, mask, temperature)
    assert result.total.item() == pytest.approx(sum(expected), rel=1e-5)
    assert result.mean().item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_prediction_kl_zero_for_identical_and_finite_with_masked_logits():
    logits = torch.tensor([[[1.0, -1e20, 2.0], [0.5, -1e20, 0.1]]])
    student = logits.clone().requires_grad_(True)
    mask = torch.tensor([[True, True]])
    value = losses.prediction_kl(student, logits, mask).mean()
    assert value.item() == pytest.approx(0.0, abs=1e-7)
    value.backward()
    assert torch.isfinite(student.grad).all()


def test_token_agreement():
    student = torch.tensor([[0, 1, 0]])
    teacher = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    result = losses.token_agreement(student, teacher, mask)
    assert result.total.tolist() == [1.0]
    assert result.count.tolist() == [2.0]


def test_attention_score_mse_hand_computed_ignores_padded_keys():
    # B=1, H=2, Q=2, K=3; key 2 is padding
    student = torch.tensor(
        [[[1.0, 2.0, -1e20], [0.0, 1.0, -1e20]], [[3.0, 0.0, -1e20], [1.0, 1.0, -1e20]]]
    )
    teacher = torch.tensor(
        [[[0.0, 2.0, -1e20], [2.0, 1.0, -1e20]], [[1.0, 1.0, -1e20], [1.0, 3.0, -1e20]]]
    )
    valid = losses.self_attention_pairs(torch.tensor([[True, True, False]]))[:, :2, :]
    # squared differences over valid pairs (keys 0, 1) for both heads
    squares = [1, 0, 4, 0, 4, 1, 0, 4]
    result = losses.attention_score_mse(student, teacher, valid)
    assert result.total.item() == pytest.approx(sum(squares))
    assert result.count.item() == 8  # 2 heads * 2 queries * 2 real keys
    assert result.mean().item() == pytest.approx(sum(squares) / 8)
    # a padded key's score changes nothing
    student[:, :, 2] = 123.0
    assert losses.attention_score_mse(student, teacher, valid).mean().item() == (
        pytest.approx(sum(squares) / 8)
    )


def test_attention_score_mse_gradient_is_twice_the_masked_difference():
    torch.manual_seed(0)
    batch, heads, length = 2, 3, 5
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    valid = losses.self_attention_pairs(mask)
    student = torch.randn(batch * heads, length, length, dtype=torch.double)
    student.requires_grad_(True)
    teacher = torch.randn(batch * heads, length, length, dtype=torch.double)
    result = losses.attention_score_mse(student, teacher, valid)
    weights = torch.tensor([0.5, 2.0], dtype=torch.double)  # d loss / d total[b]
    (result.total * weights).sum().backward()
    keep = valid.repeat_interleave(heads, dim=0)
    scale = weights.repeat_interleave(heads).view(-1, 1, 1)
    expected = torch.where(keep, 2 * (student - teacher), 0.0) * scale
    assert torch.allclose(student.grad, expected.detach())
    squares = torch.where(keep, (student - teacher) ** 2, 0.0).detach()
    assert torch.allclose(
        result.total, squares.view(batch, heads, length, length).sum(dim=(1, 2, 3))
    )
    assert torch.autograd.gradcheck(
        lambda s: losses.attention_score_mse(s, teacher, valid).total,
        (student.detach().requires_grad_(True),),
    )


def test_attention_pairs():
    mask = torch.tensor([[True, True, False]])
    assert losses.self_attention_pairs(mask)[0].tolist() == [
        [True, True, False],
        [True, True, False],
        [False, False, False],
    ]
    assert losses.causal_attention_pairs(mask)[0].tolist() == [
        [True, False, False],
        [True, True, False],
        [False, False, False],
    ]
    key_mask = torch.tensor([[True, False]])
    assert losses.cross_attention_pairs(mask, key_mask)[0].tolist() == [
        [True, False],
        [True, False],
        [False, False],
    ]


def test_causal_attention_loss_ignores_future_keys():
    torch.manual_seed(1)
    heads, length = 2, 4
    student, teacher = torch.randn(heads, length, length), torch.randn(
        heads, length, length
    )
    valid = losses.causal_attention_pairs(torch.ones(1, length, dtype=torch.bool))
    before = losses.attention_score_mse(student, teacher, valid)
    future = torch.ones(length, length).triu(1).bool()
    student[:, future] = 77.0
    after = losses.attention_score_mse(student, teacher, valid)
    assert after.total.item() == pytest.approx(before.total.item())
    assert after.count.item() == heads * length * (length + 1) / 2
