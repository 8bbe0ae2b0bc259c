"""prox_elements_ on one process (its distributed use is in test_distributed.py):
the prox of single-element groups against the float64 reference, and its arguments."""

import pytest
import torch

import wgsef.ops as ops
from tests import reference as ref


def _call(xs, k, lam, shared, weights=(), counted=None, lr=1.0):
    counted = [True] * len(xs) if counted is None else counted
    ops.prox_elements_(
        xs, list(weights), counted, k, torch.tensor(lam, dtype=torch.float64), torch.tensor(lr), shared, [], 0, 1
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_the_reference(dtype):
    g = torch.Generator().manual_seed(1)
    # 18000 elements: the search brackets the root from a sample first
    xs = [torch.randn(120, 150, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)]
    xs[0][4] = 0
    weights = [torch.rand(x.numel(), generator=g, dtype=torch.float64) + 0.5 for x in xs]
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    cases = (([9000, 5], [0.3, 0.8]), ([0, 21], [0.5, 0.5]), ([17999, 1], [2.0, 0.1]))
    for w in (None, weights) if dtype == torch.float64 else (None,):  # float32: rounding only
        for k, lam in cases if dtype == torch.float64 else cases[:1]:
            got = [x.to(dtype).clone() for x in xs]
            _call(got, k, lam, False, w or (), lr=0.5)
            for x, y, kk, ll, d in zip(xs, got, k, lam, w or [None, None]):
                want = ref.prox(x.to(dtype), kk, 0.5 * ll, "elements", d)
                torch.testing.assert_close(y.double(), torch.from_numpy(want), **tol)
        # one budget over both tensors: the reference on their concatenation
        got = [x.to(dtype).clone() for x in xs]
        _call(got, [12000], [0.4], True, w or ())
        flat = torch.cat([x.to(dtype).reshape(-1) for x in xs])
        want = ref.prox(flat, 12000, 0.4, "elements", None if w is None else torch.cat(w))
        torch.testing.assert_close(torch.cat([y.reshape(-1) for y in got]).double(), torch.from_numpy(want), **tol)


def test_a_tensor_not_counted_is_scaled_like_its_counted_copy():
    # the copy of a tensor that another process counts: scaled by the term's factors,
    # without moving the budget
    x = torch.randn(40, 50, dtype=torch.float64)
    alone = x.clone()
    _call([alone], [700], [0.3], True)
    pair = [x.clone(), x.clone()]
    _call(pair, [700], [0.3], True, counted=[True, False])
    assert torch.equal(pair[0], alone) and torch.equal(pair[1], alone)


def test_bad_arguments():
    x = torch.randn(5, 4, dtype=torch.float64)
    before = x.clone()
    lam, lr = torch.tensor(0.5), torch.tensor(1.0)
    with pytest.raises(ValueError, match="counted must have one entry per tensor"):
        ops.prox_elements_([x], [], [], [3], lam, lr, False, [], 0, 1)
    with pytest.raises(ValueError, match=r"process_index must lie in \[0, process_count\)"):
        ops.prox_elements_([x], [], [True], [3], lam, lr, False, [], 1, 1)
    with pytest.raises(ValueError, match="process_count be 1 without process_groups"):
        ops.prox_elements_([x], [], [True], [3], lam, lr, False, [], 0, 2)
    with pytest.raises(ValueError, match="k must have 1 entries"):
        ops.prox_elements_([x], [], [True], [3, 4], lam, lr, False, [], 0, 1)
    with pytest.raises(ValueError, match="weights"):
        ops.prox_elements_([x], [torch.ones(3, dtype=torch.float64)], [True], [3], lam, lr, False, [], 0, 1)
    assert torch.equal(x, before)
