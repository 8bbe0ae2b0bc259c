"""The threshold search (csrc/include/wgsef/threshold.h) through wgsef._C.threshold_search:
exact roots, and work that grows linearly with the number of groups on adversarial inputs."""

import math

import numpy as np
import pytest

import wgsef
from tests import reference as ref


def organ_pipe(m):
    half = np.arange(1, m // 2 + 1, dtype=np.float64)
    return np.concatenate([half, half[::-1], [1.0] * (m % 2)])


# families of (c, w) whose breakpoints defeat naive pivots: all tied, sorted,
# reversed, organ pipe, spread over 12 decades, two tight clusters, and the
# value's root equation (w = 0, only one breakpoint per group)
FAMILIES = {
    "random": lambda m, r: (r.random(m) + 0.01, r.random(m)),
    "all_tied": lambda m, r: (np.ones(m), np.full(m, 0.5)),
    "sorted": lambda m, r: (np.arange(1.0, m + 1), 0.5 * np.arange(1.0, m + 1)),
    "reversed": lambda m, r: (np.arange(m, 0.0, -1), np.full(m, 2.0)),
    "organ_pipe": lambda m, r: (organ_pipe(m), np.full(m, 1.0)),
    "geometric": lambda m, r: (np.geomspace(1e-6, 1e6, m), np.full(m, 1.0)),
    "two_clusters": lambda m, r: (np.where(np.arange(m) % 2 == 0, 1.0, 1.0 + 1e-12), np.full(m, 3.0)),
    "value_equation": lambda m, r: (r.random(m) + 0.01, np.zeros(m)),
}


def h(c, w, eta, k):
    return np.clip(c * eta - w, 0.0, 1.0).sum() - k


@pytest.mark.parametrize("family", FAMILIES)
def test_work_is_linear(family):
    rng = np.random.default_rng(0)
    per_group = {}
    for m in (100, 1000, 10_000, 100_000):
        c, w = FAMILIES[family](m, rng)
        for k in (1, m // 2, m - 1):
            eta, work, rounds = wgsef._C.threshold_search(c.tolist(), w.tolist(), k)
            scale = np.clip(c * eta, 1.0, None).sum()
            assert abs(h(c, w, eta, k)) <= 1e-9 * scale
            assert rounds <= math.log2(2 * m) + 2
            per_group[(m, k)] = work / m
    # bounded work per group, and no growth with m beyond the series' constant
    assert max(per_group.values()) <= 40
    small = max(v for (m, _), v in per_group.items() if m == 1000)
    large = max(v for (m, _), v in per_group.items() if m == 100_000)
    assert large <= 1.5 * small


def test_roots_match_breakpoint_enumeration():
    rng = np.random.default_rng(1)
    for _ in range(300):
        m = int(rng.integers(2, 40))
        k = int(rng.integers(1, m))
        c = rng.random(m) + 0.05
        if rng.random() < 0.3:
            c[rng.integers(0, m, m // 2)] = c[0]  # ties
        w = rng.random(m) * (10.0 ** rng.uniform(-3, 2))
        eta, _, _ = wgsef._C.threshold_search(c.tolist(), w.tolist(), k)
        t = c * eta - w
        t[np.abs(t) <= 8 * ref.EPS * np.maximum(c * eta, w)] = 0.0
        np.testing.assert_allclose(np.clip(t, 0, 1), ref.prox_shares(c, w, k), atol=1e-12)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        wgsef._C.threshold_search([1.0, 2.0], [0.0, 0.0], 2)
    with pytest.raises(ValueError):
        wgsef._C.threshold_search([1.0, -2.0], [0.0, 0.0], 1)
