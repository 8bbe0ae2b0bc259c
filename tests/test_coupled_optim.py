"""ProxSGD over coupled groups: the step, the freeze, the report and the regularizer
against the float64 reference, on a conv -> batch norm -> conv chain and a pair of
linear layers joined by an add."""

import numpy as np
import pytest
import torch

import wgsef
from tests import reference as ref

SPECS = [("dim", 0), ("dim", 0), ("dim", 0), ("dim", 1), ("dim", 0), ("dim", 0)]


def chain_group(k=(3, 2), lam=(0.4, 0.8), weights=None, seed=0):
    """conv1 filters, batch-norm scale and shift, conv2 input channels (term 0, 8
    channels); two linear layers' rows (term 1, 5 units)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 3, 3, 3), (8,), (8,), (6, 8, 3, 3), (5, 4), (5, 7)]
    params = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64)) for s in shapes]
    eight, five = torch.arange(8), torch.arange(5) + 8
    group = {
        "params": params,
        "groups": SPECS,
        "coupling": [eight, eight, eight, eight, five, five],
        "term_sizes": [8, 5],
        "term_names": ["conv1", "linear"],
        "k": list(k),
        "lam": list(lam),
        "weights": weights,
    }
    return params, group


def coupled_norms(params, coupling, total):
    sq = np.zeros(total)
    for p, spec, c in zip(params, SPECS, coupling):
        ids, m = ref.group_ids(tuple(p.shape), spec)
        np.add.at(sq, c.numpy(), ref.sq_norms(p.detach().double().numpy(), ids, m))
    return np.sqrt(sq)


@pytest.mark.parametrize("weighted", [False, True])
def test_step_is_sgd_then_the_coupled_prox(weighted):
    weights = torch.linspace(0.5, 2.0, 13, dtype=torch.float64) if weighted else None
    params, group = chain_group(weights=weights)
    before = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt = wgsef.ProxSGD([group], lr=0.5)
    opt.step()
    moved = [b - 0.5 * g for b, g in zip(before, grads)]
    want = ref.coupled_prox(moved, SPECS, group["coupling"], [8, 5], weights, [3, 2], [0.5 * 0.4, 0.5 * 0.8])
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), torch.from_numpy(w), rtol=1e-10, atol=1e-12)


def test_a_shared_budget_runs_one_term_over_all_coupled_groups():
    params, group = chain_group()
    group.update(shared_k=True, k=4, lam=0.3)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    wgsef.ProxSGD([group], lr=1.0).step()
    want = ref.coupled_prox(before, SPECS, group["coupling"], [13], None, [4], [0.3])
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), torch.from_numpy(w), rtol=1e-10, atol=1e-12)


def test_freeze_keeps_exactly_k_coupled_groups_and_holds_them():
    params, group = chain_group(k=(3, 2), lam=(1e-4, 1e-4))
    opt = wgsef.ProxSGD([group], lr=0.1)
    norms = coupled_norms(params, group["coupling"], 13)
    opt.freeze_support()
    after = coupled_norms(params, group["coupling"], 13)
    for begin, size, k in ((0, 8, 3), (8, 5, 2)):
        top = set(np.argsort(-norms[begin : begin + size], kind="stable")[:k].tolist())
        kept = set(np.nonzero(after[begin : begin + size])[0].tolist())
        assert kept == top
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert np.array_equal(coupled_norms(params, group["coupling"], 13) > 0, after > 0)
    report = wgsef.sparsity_report(opt)
    assert [(r.name, r.groups_kept, r.groups_total, r.k) for r in report] == [("conv1", 3, 8, 3), ("linear", 2, 5, 2)]
    members = sum(p.numel() for p in params[:4])
    assert report[0].numel == members
    zero = sum(float((p.detach() == 0).sum()) for p in params[:4]) / members
    assert report[0].zero_fraction == pytest.approx(zero)


def test_regularizer_is_the_sum_of_lam_times_wgsef_over_terms():
    weights = torch.linspace(0.5, 2.0, 13, dtype=torch.float64)
    params, group = chain_group(weights=weights)
    opt = wgsef.ProxSGD([group], lr=0.1)
    norms = coupled_norms(params, group["coupling"], 13)
    d = weights.numpy()
    want = 0.4 * ref.value_from_sq(norms[:8] ** 2, d[:8], 3) + 0.8 * ref.value_from_sq(norms[8:] ** 2, d[8:], 2)
    got = opt.regularizer()
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    got.backward()  # differentiable, finite
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_regularizer_of_per_tensor_terms():
    a = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    opt = wgsef.ProxSGD([a, b], lr=0.1, k=[2, 1], lam=[0.5, 2.0])
    want = 0.5 * ref.value(a, 2) + 2.0 * ref.value(b, 1)
    assert float(opt.regularizer()) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coupling": [torch.arange(8)] * 3 + [torch.arange(7)] + [torch.arange(5) + 8] * 2}, "coupling: expected"),
        ({"coupling": [torch.arange(8).int()] * 4 + [torch.arange(5) + 8] * 2}, "coupling: expected an int64"),
        ({"coupling": [torch.arange(8) + 6] * 4 + [torch.arange(5) + 8] * 2}, r"must lie in \[0, 13\)"),
        ({"term_sizes": [8, -5]}, "term_sizes"),
        ({"k": [9, 2]}, "exceeds the number of groups"),
        ({"lam": [0.1, 0.2, 0.3]}, "one per term"),
        ({"weights": torch.ones(12, dtype=torch.float64)}, "13 groups, got 12 weights"),
    ],
)
def test_bad_coupled_groups_raise_at_construction(change, message):
    _, group = chain_group()
    group.update(change)
    with pytest.raises(ValueError, match=message):
        wgsef.ProxSGD([group], lr=0.1)


def test_a_failing_coupled_step_changes_nothing():
    params, group = chain_group()
    opt = wgsef.ProxSGD([group], lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    group["lam"] = [0.1, -1.0]
    with pytest.raises(ValueError, match="lam"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all("momentum_buffer" not in opt.state[p] for p in params)
