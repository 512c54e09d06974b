"""Distillation objectives against values computed by hand.

Every reference here is plain Python (``math.exp``/``math.log`` over nested
lists), written from the formulas in the papers, not from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anti_scaling import losses as L
from anti_scaling.agents.objectives import OBJECTIVES, objective


def prediction_loss(kind, s, t, m, temperature=1.0, beta=0.5):
    """A prediction objective by its ``--pred-loss-type`` name, as the agents call it."""
    spec = objective(kind)
    params = {'temperature': temperature}
    if 'beta' in spec.params:
        params['beta'] = beta
    return spec.function(s, t, m, **params)


# --------------------------------------------------------------------------
# plain-Python references
# --------------------------------------------------------------------------


def softmax(xs):
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    z = sum(exps)
    return [e / z for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def jsd(p, q, beta):
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def entropy(p):
    return -sum(a * math.log(a) for a in p if a > 0)


def per_token(kind, s_row, t_row, temp=1.0, beta=0.5):
    """One token's value of a prediction objective, from the formulas."""
    if kind == 'logit_mse':
        kept = [(a, b) for a, b in zip(s_row, t_row) if a > -65504 and b > -65504]
        return sum((a - b) ** 2 for a, b in kept) / len(kept)
    keep = [i for i in range(len(s_row)) if s_row[i] > -1e19 and t_row[i] > -1e19]
    q = softmax([s_row[i] / temp for i in keep])
    p = softmax([t_row[i] / temp for i in keep])
    value = {
        'kl': lambda: kl(p, q),
        'reverse_kl': lambda: kl(q, p),
        'jsd': lambda: jsd(p, q, beta),
        'soft_ce': lambda: -sum(a * math.log(b) for a, b in zip(p, q)),
    }[kind]()
    return temp**2 * value


def per_example(values_of_example):
    """(totals, counts) from a list of per-example lists of token values."""
    return (
        [sum(vals) for vals in values_of_example],
        [len(vals) for vals in values_of_example],
    )


def check(result, totals, counts, rel=1e-5, abs_=1e-6):
    assert result.total.tolist() == pytest.approx(totals, rel=rel, abs=abs_)
    assert result.count.tolist() == pytest.approx(counts)
    assert float(result.mean().detach()) == pytest.approx(
        sum(totals) / max(sum(counts), 1), rel=rel, abs=abs_
    )


# --------------------------------------------------------------------------
# prediction-layer objectives
# --------------------------------------------------------------------------

# [B=2, T=3, V=4]; the last position of example 1 is padding
S_LOGITS = [
    [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 1.5], [2.0, -1.0, 0.0, 0.5]],
    [[-0.5, 0.5, 1.0, 0.0], [1.2, 1.1, -0.3, 0.2], [9.0, -9.0, 9.0, 9.0]],
]
T_LOGITS = [
    [[0.2, 2.5, -0.5, 0.0], [1.0, -0.7, 0.4, 2.0], [3.0, 0.0, -1.0, 0.0]],
    [[0.5, 0.0, 2.0, -1.0], [0.1, 2.2, 0.3, -0.4], [-9.0, 9.0, 0.0, 1.0]],
]
MASK = [[True, True, True], [True, True, False]]
KINDS = ['kl', 'reverse_kl', 'jsd', 'logit_mse', 'soft_ce']


def tensors(s=S_LOGITS, t=T_LOGITS, mask=MASK):
    return torch.tensor(s), torch.tensor(t), torch.tensor(mask)


def reference(kind, s=S_LOGITS, t=T_LOGITS, mask=MASK, temp=1.0, beta=0.5):
    return per_example(
        [
            [
                per_token(kind, s[b][i], t[b][i], temp, beta)
                for i in range(len(m))
                if m[i]
            ]
            for b, m in enumerate(mask)
        ]
    )


@pytest.mark.parametrize('temp', [1.0, 2.0, 0.5])
@pytest.mark.parametrize('kind', KINDS)
def test_prediction_objectives_match_hand_values(kind, temp):
    s, t, m = tensors()
    result = prediction_loss(kind, s, t, m, temperature=temp, beta=0.3)
    check(result, *reference(kind, temp=temp, beta=0.3))


def test_named_functions_match_the_dispatcher():
    s, t, m = tensors()
    pairs = [
        (L.reverse_prediction_kl(s, t, m, 2.0), 'reverse_kl'),
        (L.prediction_jsd(s, t, m, 2.0, beta=0.3), 'jsd'),
        (L.logit_mse(s, t, m), 'logit_mse'),
        (L.soft_cross_entropy(s, t, m, 2.0), 'soft_ce'),
    ]
    for result, kind in pairs:
        check(result, *reference(kind, temp=2.0, beta=0.3))


@pytest.mark.parametrize('temp', [1.0, 3.0])
def test_forward_kl_equals_the_kl_divergence_rows(temp):
    """The fused soft-target form equals sum_v p (log p - log q) row by row."""
    s, t, m = tensors()
    new = prediction_loss('kl', s, t, m, temperature=temp)
    log_q = F.log_softmax(s[m] / temp, dim=-1)
    log_p = F.log_softmax(t[m] / temp, dim=-1)
    rows = (log_p.exp() * (log_p - log_q)).sum(-1) * temp**2
    assert torch.allclose(new.total.sum(), rows.sum(), rtol=1e-5)
    assert new.count.sum() == m.sum()


def test_temperature_scaling_is_t_squared():
    """At T=2 the loss is 4 x the divergence of the softened distributions."""
    s, t, m = tensors()
    row_s, row_t = S_LOGITS[0][0], T_LOGITS[0][0]
    one = torch.tensor([[True, False, False], [False, False, False]])
    q = softmax([x / 2 for x in row_s])
    p = softmax([x / 2 for x in row_t])
    expected = {
        'kl': 4 * kl(p, q),
        'reverse_kl': 4 * kl(q, p),
        'jsd': 4 * jsd(p, q, 0.5),
        'soft_ce': 4 * (kl(p, q) + entropy(p)),
    }
    for kind, value in expected.items():
        got = prediction_loss(kind, s, t, one, temperature=2.0)
        assert float(got.mean()) == pytest.approx(value, rel=1e-5)
        # and T really matters for these kinds
        plain = prediction_loss(kind, s, t, one, temperature=1.0)
        assert abs(float(plain.mean()) - value) > 1e-3


def test_logit_mse_does_not_depend_on_temperature():
    s, t, m = tensors()
    values = [
        float(prediction_loss('logit_mse', s, t, m, temperature=temp).mean())
        for temp in (0.5, 1.0, 4.0)
    ]
    hand = sum(reference('logit_mse')[0]) / 5
    assert values == pytest.approx([hand] * 3, rel=1e-6)


@pytest.mark.parametrize('kind', KINDS)
def test_padded_token_values_change_nothing(kind):
    s, t, m = tensors()
    before = prediction_loss(kind, s, t, m, temperature=2.0, beta=0.3)
    s2, t2 = s.clone(), t.clone()
    s2[1, 2] = torch.tensor([1e4, -1e4, float('-inf'), 3.0])
    t2[1, 2] = torch.tensor([float('nan'), 5.0, -1e20, 1e4])
    after = prediction_loss(kind, s2, t2, m, temperature=2.0, beta=0.3)
    assert torch.equal(before.total, after.total)
    assert torch.equal(before.count, after.count)


@pytest.mark.parametrize('kind', KINDS)
def test_adding_padding_changes_nothing(kind):
    s, t, m = tensors()
    before = prediction_loss(kind, s, t, m, temperature=2.0, beta=0.3)
    pad = torch.full((2, 2, 4), 7.0)
    s2, t2 = torch.cat([s, pad], 1), torch.cat([t, -pad], 1)
    m2 = torch.cat([m, torch.zeros(2, 2, dtype=torch.bool)], 1)
    # and a third example that is padding only
    s2 = torch.cat([s2, torch.randn(1, 5, 4)])
    t2 = torch.cat([t2, torch.randn(1, 5, 4)])
    m2 = torch.cat([m2, torch.zeros(1, 5, dtype=torch.bool)])
    after = prediction_loss(kind, s2, t2, m2, temperature=2.0, beta=0.3)
    assert after.total[:2].tolist() == pytest.approx(before.total.tolist(), rel=1e-6)
    assert after.total[2] == 0 and after.count.tolist() == [3, 2, 0]
    assert float(after.mean()) == pytest.approx(float(before.mean()), rel=1e-6)


@pytest.mark.parametrize('beta', [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize('kind', ['kl', 'reverse_kl', 'jsd', 'logit_mse'])
def test_zero_when_student_equals_teacher(kind, beta):
    _, t, m = tensors()
    result = prediction_loss(kind, t.clone(), t, m, temperature=2.0, beta=beta)
    assert result.total.abs().max() < 1e-6
    assert result.count.tolist() == [3, 2]


def test_soft_ce_of_teacher_itself_is_its_entropy():
    _, t, m = tensors()
    result = prediction_loss('soft_ce', t.clone(), t, m, temperature=2.0)
    totals = [
        sum(
            4 * entropy(softmax([x / 2 for x in T_LOGITS[b][i]]))
            for i in range(3)
            if MASK[b][i]
        )
        for b in range(2)
    ]
    check(result, totals, [3, 2])
    assert min(totals) > 0.5  # not a vacuous zero


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t, m = tensors()
    check(L.prediction_jsd(s, t, m, beta=0.0), *reference('kl'))
    check(L.prediction_jsd(s, t, m, beta=1.0), *reference('reverse_kl'))


def test_jsd_limits_scale_like_forward_and_reverse_kl():
    """JSD(beta)/beta -> KL(p||q) as beta -> 0; JSD/(1-beta) -> KL(q||p) as beta -> 1."""
    s, t = torch.tensor([[[3.0, 0.0, -2.0, 0.0]]]), torch.tensor(
        [[[0.0, 2.0, 0.0, -3.0]]]
    )
    m = torch.tensor([[True]])
    p = softmax(t[0, 0].tolist())
    q = softmax(s[0, 0].tolist())
    forward, backward = kl(p, q), kl(q, p)
    assert abs(forward - backward) > 0.3  # the two limits are distinguishable
    eps = 1e-3
    low = float(L.prediction_jsd(s, t, m, beta=eps).mean()) / eps
    high = float(L.prediction_jsd(s, t, m, beta=1 - eps).mean()) / eps
    assert low == pytest.approx(forward, rel=2e-2)
    assert high == pytest.approx(backward, rel=2e-2)
    # the unscaled value itself vanishes at both ends of the open interval
    assert low * eps < 0.01 * forward and high * eps < 0.01 * backward


def test_jsd_symmetry_and_bound():
    s, t, m = tensors()
    ab = L.prediction_jsd(s, t, m, beta=0.5)
    ba = L.prediction_jsd(t, s, m, beta=0.5)
    assert torch.allclose(ab.total, ba.total, rtol=1e-5)
    assert (ab.total / ab.count).max() <= math.log(2)
    # in general JSD_beta(p, q) = JSD_(1-beta)(q, p), and beta != 0.5 is asymmetric
    a = L.prediction_jsd(s, t, m, beta=0.2)
    b = L.prediction_jsd(t, s, m, beta=0.8)
    c = L.prediction_jsd(t, s, m, beta=0.2)
    assert torch.allclose(a.total, b.total, rtol=1e-5)
    assert not torch.allclose(a.total, c.total, rtol=1e-3)


@pytest.mark.parametrize('fill', [-1e20, float('-inf'), -65504.0])
@pytest.mark.parametrize('kind', KINDS)
def test_masked_start_token_gives_finite_gradients(kind, fill):
    """ParlAI writes -1e20 (fp16: -65504) at the start token in both models."""
    s, t, m = tensors()
    s[..., 0] = fill
    t[..., 0] = fill
    s.requires_grad_(True)
    result = prediction_loss(kind, s, t, m, temperature=2.0, beta=0.3)
    result.mean().backward()
    assert torch.isfinite(result.total).all()
    assert torch.isfinite(s.grad).all()
    assert s.grad[..., 0].abs().max() == 0
    # the masked entry is simply not part of the vocabulary
    reduced_s = [[row[1:] for row in ex] for ex in S_LOGITS]
    reduced_t = [[row[1:] for row in ex] for ex in T_LOGITS]
    check(result, *reference(kind, reduced_s, reduced_t, temp=2.0, beta=0.3))


def test_logit_mse_propagates_nan_of_real_tokens():
    s, t, m = tensors()
    s[0, 1, 2] = float('nan')
    assert torch.isnan(L.logit_mse(s, t, m).total[0])


def test_teacher_minus_inf_student_minus_1e20_is_finite():
    s, t, m = tensors()
    s[..., 0] = -1e20
    t[..., 0] = float('-inf')
    s.requires_grad_(True)
    for kind in KINDS:
        result = prediction_loss(kind, s, t, m, beta=0.3)
        result.mean().backward()
        assert torch.isfinite(result.total).all() and torch.isfinite(s.grad).all()


def test_prediction_loss_rejects_bad_arguments():
    s, t, m = tensors()
    with pytest.raises(ValueError) as err:
        prediction_loss('kld', s, t, m)
    for kind in KINDS:
        assert kind in str(err.value) and kind in OBJECTIVES
    with pytest.raises(ValueError, match='temperature'):
        prediction_loss('jsd', s, t, m, temperature=0.0)
    with pytest.raises(ValueError, match='temperature'):
        prediction_loss('logit_mse', s, t, m, temperature=-1.0)
    with pytest.raises(ValueError, match='beta'):
        prediction_loss('jsd', s, t, m, beta=1.5)
    with pytest.raises(ValueError, match='shapes'):
        prediction_loss('reverse_kl', s[..., :3], t, m)


# --------------------------------------------------------------------------
# hidden-state objectives
# --------------------------------------------------------------------------

# [B=2, T=2, D]; position 1 of example 1 is padding
H_S = [[[1.0, 2.0], [0.5, -1.0]], [[-1.0, 0.5], [4.0, 4.0]]]
H_T = [[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]]
H_MASK = [[True, True], [True, False]]
W = [[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]  # P(x) = W x : 2 -> 3


def project(x):
    return [sum(w * v for w, v in zip(row, x)) for row in W]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def unit(a):
    n = math.sqrt(sum(x * x for x in a))
    return [x / n for x in a]


def hidden_reference(token_value):
    return per_example(
        [
            [
                token_value(project(H_S[b][i]), H_T[b][i])
                for i in range(2)
                if H_MASK[b][i]
            ]
            for b in range(2)
        ]
    )


def projection(x):
    return x @ torch.tensor(W).T


def hidden_tensors():
    return torch.tensor(H_S), torch.tensor(H_T), torch.tensor(H_MASK)


def test_cosine_embedding_loss_hand_values():
    s, t, m = hidden_tensors()
    result = L.cosine_embedding_loss(s, t, m, projection)
    check(result, *hidden_reference(lambda a, b: 1 - cosine(a, b)))


def test_normalized_state_mse_hand_values():
    s, t, m = hidden_tensors()
    result = L.normalized_state_mse(s, t, m, projection)

    def value(a, b):
        return sum((x - y) ** 2 for x, y in zip(unit(a), unit(b)))

    check(result, *hidden_reference(value))
    # per token it is 2 - 2 cos, whatever the width
    check(result, *hidden_reference(lambda a, b: 2 - 2 * cosine(a, b)))


@pytest.mark.parametrize('fn', [L.cosine_embedding_loss, L.normalized_state_mse])
def test_hidden_objectives_ignore_padding_and_norms(fn):
    s, t, m = hidden_tensors()
    before = fn(s, t, m, projection)
    s2, t2 = s.clone(), t.clone()
    s2[1, 1] = torch.tensor([1e6, float('nan')])
    t2[1, 1] = torch.tensor([-3.0, 1e9, 0.0])
    assert torch.equal(fn(s2, t2, m, projection).total, before.total)
    # scaling the states changes nothing (direction only)
    scaled = fn(s * 0.25, t * 3.0, m, projection)
    assert torch.allclose(scaled.total, before.total, rtol=1e-5)
    # same direction: zero; opposite direction: 2 (cosine) or 4 (normalised MSE)
    same = fn(t * 2.0, t, m)
    opposite = fn(-t, t, m)
    assert same.total.abs().max() < 1e-6
    worst = 2.0 if fn is L.cosine_embedding_loss else 4.0
    check(opposite, [2 * worst, worst], [2, 1])


@pytest.mark.parametrize('fn', [L.cosine_embedding_loss, L.normalized_state_mse])
def test_hidden_objectives_need_a_projection_for_other_widths(fn):
    s, t, m = hidden_tensors()
    with pytest.raises(ValueError, match='projection'):
        fn(s, t, m)
    with pytest.raises(ValueError, match='shapes'):
        fn(s[:, :1], t, m)


@pytest.mark.parametrize('fn', [L.cosine_embedding_loss, L.normalized_state_mse])
def test_hidden_gradients_are_finite_for_a_zero_state(fn):
    s, t, m = hidden_tensors()
    t = t[..., :2]
    s = s.clone()
    s[0, 0] = 0.0
    s.requires_grad_(True)
    fn(s, t, m).mean().backward()
    assert torch.isfinite(s.grad).all()


# --------------------------------------------------------------------------
# attention objectives
# --------------------------------------------------------------------------

KEY_MASK = [[True, True, True], [True, True, False]]


def pairs_of(mask, causal=False):
    return [
        [
            [mask[b][q] and mask[b][k] and (not causal or k <= q) for k in range(3)]
            for q in range(3)
        ]
        for b in range(len(mask))
    ]


def random_list(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 2).tolist()


def attention_reference(s_scores, t_scores, valid, heads):
    """MiniLM: KL(softmax(A_T) || softmax(A_S)) per head and query, valid keys only."""
    values = []
    for b, rows in enumerate(valid):
        vals = []
        for h in range(heads):
            for q, row in enumerate(rows):
                keys = [k for k, ok in enumerate(row) if ok]
                if not keys:
                    continue
                p = softmax([t_scores[b][h][q][k] for k in keys])
                r = softmax([s_scores[b][h][q][k] for k in keys])
                vals.append(kl(p, r))
        values.append(vals)
    return per_example(values)


def parlai_scores(raw, valid, heads, fill=-1e20):
    """[B*H, Q, K] scores with the invalid pairs overwritten, as ParlAI does."""
    x = torch.tensor(raw)
    x = x.masked_fill(~torch.tensor(valid).unsqueeze(1), fill)
    return x.view(-1, *x.shape[2:])


@pytest.mark.parametrize('causal', [False, True])
def test_attention_distribution_kl_hand_values(causal):
    valid = pairs_of(KEY_MASK, causal)
    raw_s, raw_t = random_list(2, 2, 3, 3, seed=1), random_list(2, 2, 3, 3, seed=2)
    result = L.attention_distribution_kl(
        parlai_scores(raw_s, valid, 2),
        parlai_scores(raw_t, valid, 2),
        torch.tensor(valid),
    )
    totals, counts = attention_reference(raw_s, raw_t, valid, 2)
    assert counts == [6, 4]  # 2 heads x real queries
    check(result, totals, counts)


@pytest.mark.parametrize('fill', [0.0, 50.0, float('-inf'), -65504.0])
def test_attention_distribution_kl_ignores_invalid_scores(fill):
    valid = pairs_of(KEY_MASK, causal=True)
    raw_s, raw_t = random_list(2, 2, 3, 3, seed=3), random_list(2, 2, 3, 3, seed=4)
    v = torch.tensor(valid)
    before = L.attention_distribution_kl(
        parlai_scores(raw_s, valid, 2), parlai_scores(raw_t, valid, 2), v
    )
    s = parlai_scores(raw_s, valid, 2, fill=fill).requires_grad_(True)
    after = L.attention_distribution_kl(
        s, parlai_scores(raw_t, valid, 2, fill=-fill), v
    )
    assert torch.allclose(after.total, before.total, rtol=1e-6, atol=1e-7)
    after.mean().backward()
    assert torch.isfinite(s.grad).all()
    invalid = ~v.unsqueeze(1).expand(2, 2, 3, 3).reshape(4, 3, 3)
    assert s.grad[invalid].abs().max() == 0


def test_attention_distribution_kl_zero_and_head_mismatch():
    valid = torch.tensor(pairs_of(KEY_MASK))
    scores = parlai_scores(random_list(2, 2, 3, 3, seed=5), pairs_of(KEY_MASK), 2)
    same = L.attention_distribution_kl(scores.clone(), scores, valid)
    assert same.total.abs().max() < 1e-6 and same.count.tolist() == [6, 4]
    with pytest.raises(ValueError, match='head counts'):
        L.attention_distribution_kl(scores, torch.cat([scores, scores]), valid)
    with pytest.raises(ValueError, match='not'):
        L.attention_distribution_kl(scores[:, :2], scores[:, :2], valid)


def relation_reference(xs, xt, valid, heads_s, heads_t):
    """Per example: sum over heads and valid rows of KL(Rel_T || Rel_S)."""

    def relations(x, heads, b, r, t, keys):
        size = len(x[b][0]) // heads
        part = range(r * size, (r + 1) * size)
        return softmax(
            [sum(x[b][t][d] * x[b][j][d] for d in part) / math.sqrt(size) for j in keys]
        )

    values = []
    for b, rows in enumerate(valid):
        vals = []
        for r in range(heads_s):
            for t, row in enumerate(rows):
                keys = [j for j, ok in enumerate(row) if ok]
                if keys:
                    p = relations(xt, heads_t, b, r, t, keys)
                    q = relations(xs, heads_s, b, r, t, keys)
                    vals.append(kl(p, q))
        values.append(vals)
    return per_example(values)


@pytest.mark.parametrize('causal', [False, True])
def test_value_relation_kl_hand_values(causal):
    """Same head count (2), different widths: d_h = 2 for the student, 3 for the teacher."""
    valid = pairs_of(KEY_MASK, causal)
    vs, vt = random_list(2, 3, 4, seed=6), random_list(2, 3, 6, seed=7)
    result = L.value_relation_kl(
        torch.tensor(vs), torch.tensor(vt), torch.tensor(valid), heads=2
    )
    check(result, *relation_reference(vs, vt, valid, 2, 2))
    assert result.count.tolist() == [6, 4]


def test_value_relation_kl_ignores_padded_keys():
    valid = torch.tensor(pairs_of(KEY_MASK))
    vs, vt = torch.tensor(random_list(2, 3, 4, seed=8)), torch.tensor(
        random_list(2, 3, 6, seed=9)
    )
    before = L.value_relation_kl(vs, vt, valid, heads=2)
    vs2, vt2 = vs.clone(), vt.clone()
    vs2[1, 2] = torch.tensor([100.0, -7.0, float('nan'), 3.0])
    vt2[1, 2] = 1e4
    vs2.requires_grad_(True)
    after = L.value_relation_kl(vs2, vt2, valid, heads=2)
    assert torch.allclose(after.total, before.total, rtol=1e-6, atol=1e-7)
    after.mean().backward()
    assert torch.isfinite(vs2.grad).all() and vs2.grad[1, 2].abs().max() == 0
    with pytest.raises(ValueError, match='divisible'):
        L.value_relation_kl(vs, vt, valid, heads=4)  # 6 % 4 != 0


@pytest.mark.parametrize(
    'width_s, width_t, heads', [(4, 6, 2), (3, 6, 3), (4, 6, 1), (6, 3, 3)]
)
@pytest.mark.parametrize('causal', [False, True])
def test_relation_kl_hand_values_for_other_widths(width_s, width_t, heads, causal):
    """MiniLMv2: any widths (and so any attention head counts), R relation heads."""
    valid = pairs_of(KEY_MASK, causal)
    xs = random_list(2, 3, width_s, seed=10)
    xt = random_list(2, 3, width_t, seed=11)
    result = L.relation_kl(
        torch.tensor(xs), torch.tensor(xt), torch.tensor(valid), relation_heads=heads
    )
    check(result, *relation_reference(xs, xt, valid, heads, heads))
    assert result.count.tolist() == [3 * heads, 2 * heads]


def test_relation_kl_cross_attention_keys_use_the_context_mask():
    """Keys/values of encoder-decoder attention are encoder states: context pairs."""
    context = [[True, True, False], [True, False, False]]
    valid = L.self_attention_pairs(torch.tensor(context))
    xs, xt = random_list(2, 3, 4, seed=12), random_list(2, 3, 8, seed=13)
    result = L.relation_kl(torch.tensor(xs), torch.tensor(xt), valid, relation_heads=2)
    check(result, *relation_reference(xs, xt, pairs_of(context), 2, 2))
    # a single real key: every relation row is a point mass, nothing to learn
    assert result.total[1].abs() < 1e-6 and result.count.tolist() == [4, 2]


def test_relation_kl_adding_padding_changes_nothing():
    mask = torch.tensor(KEY_MASK)
    xs = torch.tensor(random_list(2, 3, 4, seed=14))
    xt = torch.tensor(random_list(2, 3, 6, seed=15))
    before = L.relation_kl(xs, xt, L.causal_attention_pairs(mask), relation_heads=2)
    xs2 = torch.cat([xs, torch.randn(2, 2, 4) * 10], 1)
    xt2 = torch.cat([xt, torch.randn(2, 2, 6) * 10], 1)
    mask2 = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1)
    after = L.relation_kl(xs2, xt2, L.causal_attention_pairs(mask2), relation_heads=2)
    assert torch.allclose(after.total, before.total, rtol=1e-5, atol=1e-7)
    assert torch.equal(after.count, before.count)


def test_relation_kl_zero_when_equal_and_errors():
    valid = L.self_attention_pairs(torch.tensor(KEY_MASK))
    x = torch.tensor(random_list(2, 3, 6, seed=16))
    same = L.relation_kl(x.clone(), x, valid, relation_heads=3)
    assert same.total.abs().max() < 1e-6 and same.count.tolist() == [9, 6]
    with pytest.raises(ValueError, match='divisible'):
        L.relation_kl(x[..., :4], x, valid, relation_heads=3)
    with pytest.raises(ValueError, match='shapes'):
        L.relation_kl(x[:, :2], x, valid, relation_heads=3)
    with pytest.raises(ValueError, match='positive'):
        L.relation_kl(x, x, valid, relation_heads=0)


# --------------------------------------------------------------------------
# DistiLLM's skew divergences and TAID's interpolated target
# --------------------------------------------------------------------------


def skewed_reference(kind, alpha, temp):
    """Per-example (totals, counts) of the skew divergences, from the formulas."""

    def token(s_row, t_row):
        q = softmax([x / temp for x in s_row])
        p = softmax([x / temp for x in t_row])
        if kind == 'skew_kl':  # KL(p || a p + (1 - a) q)
            m = [alpha * a + (1 - alpha) * b for a, b in zip(p, q)]
            return temp**2 * kl(p, m)
        m = [alpha * b + (1 - alpha) * a for a, b in zip(p, q)]  # a q + (1 - a) p
        return temp**2 * kl(q, m)

    return per_example(
        [
            [token(S_LOGITS[b][i], T_LOGITS[b][i]) for i in range(3) if MASK[b][i]]
            for b in range(2)
        ]
    )


@pytest.mark.parametrize('alpha', [0.1, 0.5])
@pytest.mark.parametrize('temp', [1.0, 2.0])
@pytest.mark.parametrize('kind', ['skew_kl', 'skew_reverse_kl'])
def test_skew_divergences_match_hand_values(kind, temp, alpha):
    s, t, m = tensors()
    fn = L.skew_kl if kind == 'skew_kl' else L.skew_reverse_kl
    check(fn(s, t, m, temp, alpha=alpha), *skewed_reference(kind, alpha, temp))
    # bounded by T^2 log(1 / alpha), whatever the distributions
    assert float(
        fn(s, t, m, temp, alpha=alpha).total.max()
    ) <= 3 * temp**2 * math.log(1 / alpha)


def test_skew_alpha_zero_is_the_plain_divergence():
    s, t, m = tensors()
    check(L.skew_kl(s, t, m, 2.0, alpha=0.0), *reference('kl', temp=2.0))
    check(
        L.skew_reverse_kl(s, t, m, 2.0, alpha=0.0), *reference('reverse_kl', temp=2.0)
    )
    with pytest.raises(ValueError, match='skew alpha'):
        L.skew_kl(s, t, m, alpha=1.0)


@pytest.mark.parametrize('interpolation', [0.0, 0.4, 1.0])
def test_interpolated_target_matches_hand_values(interpolation):
    temp = 2.0

    def token(s_row, t_row):
        mixed = [
            (1 - interpolation) * a + interpolation * b for a, b in zip(s_row, t_row)
        ]
        target = softmax([x / temp for x in mixed])
        q = softmax([x / temp for x in s_row])
        return temp**2 * kl(target, q)

    totals, counts = per_example(
        [
            [token(S_LOGITS[b][i], T_LOGITS[b][i]) for i in range(3) if MASK[b][i]]
            for b in range(2)
        ]
    )
    s, t, m = tensors()
    s.requires_grad_(True)
    result = L.interpolated_kl(s, t, m, temp, interpolation=interpolation)
    check(result, totals, counts)
    result.mean().backward()
    if interpolation == 0.0:  # the target is the student itself: nothing to learn
        assert float(s.grad.abs().max()) < 1e-6
    if interpolation == 1.0:  # the forward KL, gradient included
        s2 = s.detach().clone().requires_grad_(True)
        L.prediction_kl(s2, t, m, temp).mean().backward()
        assert torch.allclose(s.grad, s2.grad, atol=1e-7)


def test_taid_schedule_is_linear_then_adaptive_by_hand():
    from anti_scaling.agents.schedules import InterpolationSchedule

    linear = InterpolationSchedule(start=0.4, end=1.0, steps=10, adaptive=False)
    assert [linear.value(s) for s in (0, 5, 10, 50)] == pytest.approx(
        [0.4, 0.7, 1.0, 1.0]
    )
    sched = InterpolationSchedule(
        start=0.4, end=1.0, steps=1000, rate=0.1, momentum=0.5
    )
    sched.update(0, 2.0)  # first value: only the linear floor moves it
    assert sched.value(1) == pytest.approx(0.4 + 0.6 / 1000)
    sched.update(1, 1.0)  # the objective halved: delta 0.5, m = 0.25
    t = 0.4 + 0.6 / 1000
    expected = t + 0.1 * (1 / (1 + math.exp(-0.25))) * (1 - t)
    assert sched.value(2) == pytest.approx(expected)
    sched.update(1, 0.5)  # a second batch of the same step does not count
    assert sched.value(2) == pytest.approx(expected)
    restored = InterpolationSchedule(
        start=0.4, end=1.0, steps=1000, rate=0.1, momentum=0.5
    )
    restored.load_state_dict(sched.state_dict())
    assert restored.value(2) == sched.value(2)
