"""The device threshold search (csrc/shares_aten.cpp), which the CUDA kernels use,
run here on CPU tensors against the float64 reference."""

import math

import numpy as np
import pytest
import torch
from torch.library import opcheck

import wgsef  # noqa: F401  (registers the ops)

from tests import reference as ref

OPS = torch.ops.wgsef


def random_sq(rng, m):
    sq = rng.random(m) * 10.0 ** rng.uniform(-2, 2)
    sq[rng.random(m) < 0.2] = 0.0
    if m > 3 and rng.random() < 0.4:
        sq[rng.integers(0, m, m // 2)] = sq[0]  # ties
    return sq


def test_prox_factors_value_and_scales_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(400):
        m = int(rng.integers(1, 30))
        sq = random_sq(rng, m)
        d = np.ones(m) if rng.random() < 0.5 else 10.0 ** rng.uniform(-0.5, 0.5, m)
        k = int(rng.integers(0, m + 2))
        lam = 0.0 if rng.random() < 0.1 else float(10.0 ** rng.uniform(-3, 2))
        sq_t, d_t = torch.from_numpy(sq), torch.from_numpy(d)
        got = OPS._shares_prox_factors(sq_t, d_t, k, torch.tensor(lam, dtype=torch.float64)).numpy()
        expect = ref.prox_factors(sq, d, k, lam)
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)
        assert ((got > 0) == (expect > 0)).all()  # the same groups pruned
        value = OPS._shares_value(sq_t, d_t, k).item()
        expect_value = ref.value_from_sq(sq, d, k)
        if math.isinf(expect_value):
            assert math.isinf(value)
        else:
            assert value == pytest.approx(expect_value, rel=1e-10, abs=1e-300)
        if k > 0:
            # subgradient scales: d_i / u_i, so that <grad, x> = 2 W(x)
            scales = OPS._shares_grad_scales(sq_t, d_t, k).numpy()
            assert float((scales * sq).sum()) == pytest.approx(2 * expect_value, rel=1e-9, abs=1e-300)


def test_non_finite_and_empty():
    nan_sq = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    assert torch.isnan(OPS._shares_prox_factors(nan_sq, None, 1, torch.tensor(0.5))).all()
    assert math.isnan(OPS._shares_value(nan_sq, None, 1).item())
    inf_sq = torch.tensor([1.0, float("inf"), 2.0], dtype=torch.float64)
    assert OPS._shares_value(inf_sq, None, 1).item() == float("inf")
    empty = torch.empty(0, dtype=torch.float64)
    assert OPS._shares_prox_factors(empty, None, 1, torch.tensor(0.5)).numel() == 0
    assert OPS._shares_value(empty, None, 1).item() == 0.0


def test_opcheck_shares_ops():
    sq = torch.tensor([4.0, 1.0, 0.0, 9.0], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    opcheck(OPS._shares_prox_factors.default, (sq, w, 2, torch.tensor(0.3)))
    opcheck(OPS._shares_value.default, (sq, None, 2))
    opcheck(OPS._shares_grad_scales.default, (sq, w, 1))
