"""Property tests: optimality certificates and the sparsity rules of docs/design.md."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wgsef
from tests import reference as ref

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def problems(draw):
    m = draw(st.integers(1, 9))
    size = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, size)) * 10.0 ** rng.uniform(-2, 2)
    x[rng.random(m) < 0.2] = 0.0
    if m > 2 and rng.random() < 0.3:
        x[1] = x[0]  # an exact tie
    d = np.ones(m) if rng.random() < 0.5 else 10.0 ** rng.uniform(-0.5, 0.5, m)
    k = draw(st.integers(0, m + 1))
    lam = float(10.0 ** draw(st.floats(-3, 2)))
    return torch.from_numpy(x), torch.from_numpy(d), k, lam


def group_sq(x):
    return (x**2).sum(1).numpy()


@SETTINGS
@given(problems())
def test_fenchel_young_certificate(p):
    # p = prox(v) iff y = (v - p)/lam is a subgradient at p iff W(p) + W*(y) = <p, y>
    v, d, k, lam = p
    if k == 0:
        return
    out = wgsef.prox(v, k, lam, weights=d)
    y = (v - out) / lam
    gap = (
        ref.value_from_sq(group_sq(out), d.numpy(), k)
        + ref.conjugate_from_sq(group_sq(y), d.numpy(), k)
        - float((out * y).sum())
    )
    scale = 1.0 + float((v**2).sum()) / lam
    assert abs(gap) <= 1e-9 * scale


@SETTINGS
@given(problems(), st.integers(0, 2**31 - 1))
def test_firmly_nonexpansive(p, seed):
    v, d, k, lam = p
    u = v + torch.from_numpy(np.random.default_rng(seed).standard_normal(v.shape))
    pu, pv = wgsef.prox(u, k, lam, weights=d), wgsef.prox(v, k, lam, weights=d)
    # ||P u - P v||^2 <= <P u - P v, u - v>
    assert float(((pu - pv) ** 2).sum()) <= float(((pu - pv) * (u - v)).sum()) + 1e-9 * (
        1 + float(((u - v) ** 2).sum())
    )


@SETTINGS
@given(problems())
def test_group_scaling_support_and_saturation(p):
    v, d, k, lam = p
    out = wgsef.prox(v, k, lam, weights=d)
    vn, on = v.norm(dim=1), out.norm(dim=1)
    nz = vn > 0
    factor = torch.where(nz, on / torch.where(nz, vn, 1), 0)
    assert ((factor >= 0) & (factor <= 1 + 1e-12)).all()
    # same direction: out_i = factor_i * v_i
    torch.testing.assert_close(out, factor[:, None] * v, rtol=1e-12, atol=1e-300)
    # saturated groups (plain ridge factor) number at most k, unless no pruning is needed
    ridge = 1 / (1 + lam * d)
    saturated = (nz & (torch.abs(factor - ridge) <= 1e-12)).sum().item()
    if nz.sum() > k:
        assert saturated <= k
    # the support is a super-level set of a_i = ||v_i|| / sqrt(d_i)
    a = vn / d.sqrt()
    kept = on > 0
    if kept.any() and (~kept & nz).any():
        assert a[kept].min() > a[~kept & nz].max()


@SETTINGS
@given(problems())
def test_exact_sparsity_rule(p):
    v, d, k, _ = p
    a = (v.norm(dim=1) / d.sqrt()).numpy()
    lc = ref.lambda_crit(a, d.numpy(), k)
    nonzero_in = int((a > 0).sum())
    for lam in (lc * 1.01, lc * 0.99, lc * 3, 0.5):
        if not np.isfinite(lam) or lam <= 0:
            continue
        kept = int((wgsef.prox(v, k, lam, weights=d).norm(dim=1) > 0).sum())
        assert (kept <= k) == (nonzero_in <= k or lam >= lc)


@SETTINGS
@given(problems(), st.floats(0.1, 10.0))
def test_value_bounds_homogeneity_and_euler(p, scale):
    x, d, k, _ = p
    if k == 0:
        return
    m = x.shape[0]
    ridge = 0.5 * float((d * (x**2).sum(1)).sum())
    w = wgsef.value(x, k, weights=d).item()
    assert ridge * (1 - 1e-12) <= w <= max(1, m / k) * ridge * (1 + 1e-12)
    scaled = wgsef.value(scale * x, k, weights=d).item()
    assert abs(scaled - scale**2 * w) <= 1e-12 * scale**2 * w
    # 2-homogeneous: <grad W(x), x> = 2 W(x)
    xg = x.clone().requires_grad_(True)
    wgsef.value(xg, k, weights=d).backward()
    assert abs(float((xg.grad * x).sum()) - 2 * w) <= 1e-10 * (1 + w)


@SETTINGS
@given(problems(), st.floats(0.0, 1.0))
def test_value_is_convex(p, t):
    x, d, k, _ = p
    if k == 0:
        return
    y = torch.randn_like(x)
    mid = wgsef.value(t * x + (1 - t) * y, k, weights=d).item()
    ends = t * wgsef.value(x, k, weights=d).item() + (1 - t) * wgsef.value(y, k, weights=d).item()
    assert mid <= ends * (1 + 1e-12) + 1e-12
