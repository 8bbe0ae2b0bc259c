"""prox_coupled_: WGSEF over coupled groups (a filter, its batch-norm entries and
the consumer's input channel; tensors joined by a residual add) against the float64
reference."""

import pytest
import torch
from torch.library import opcheck

import wgsef  # noqa: F401  (loads the ops)
from tests import reference as ref

OPS = torch.ops.wgsef


def chain(device, dtype=torch.float64):
    """conv1 -> batch norm -> conv2 (term 0, 8 channels), and two linear layers whose
    outputs are added (term 1, 5 units)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    tensors = [rand(8, 3, 3, 3), rand(8) + 1.0, rand(8), rand(6, 8, 3, 3), rand(5, 4), rand(5, 7)]
    specs = ["filters", "elements", "elements", "channels", "filters", "filters"]
    layout = [1, 8, 27, 1, 8, 1, 1, 8, 1, 6, 8, 9, 1, 5, 4, 1, 5, 7]
    eight, five = torch.arange(8, device=device), torch.arange(5, device=device) + 8
    coupling = [eight, eight, eight, eight, five, five]
    return tensors, specs, layout, coupling, [8, 5]


@pytest.mark.parametrize("weighted", [False, True])
def test_coupled_prox_matches_reference(weighted, device):
    tensors, specs, layout, coupling, sizes = chain(device)
    weights = torch.linspace(0.5, 2.0, 13, dtype=torch.float64, device=device) if weighted else None
    for k, lam in (([3, 2], [0.4, 0.8]), ([0, 5], [0.3, 0.3]), ([8, 1], [1e-3, 50.0]), ([2, 2], [0.0, 2.0])):
        xs = [t.clone() for t in tensors]
        OPS.prox_coupled_.default(
            xs, layout, [], coupling, sizes, weights, k, torch.tensor(lam, dtype=torch.float64), torch.tensor(0.5)
        )
        want = ref.coupled_prox(
            tensors,
            specs,
            [c.cpu() for c in coupling],
            sizes,
            None if weights is None else weights.cpu(),
            k,
            [0.5 * v for v in lam],
        )
        for got, w in zip(xs, want):
            torch.testing.assert_close(got.cpu(), torch.from_numpy(w), rtol=1e-10, atol=1e-12)


def test_a_pruned_coupled_group_is_zero_in_every_member(device):
    # zero invariance: a channel whose filter, batch-norm scale and shift and
    # consumer column are all zero contributes nothing downstream
    tensors, _, layout, coupling, sizes = chain(device)
    xs = [t.clone() for t in tensors]
    OPS.prox_coupled_.default(xs, layout, [], coupling, sizes, None, [3, 2], torch.tensor(50.0), torch.tensor(1.0))
    conv1, bn_w, bn_b, conv2, lin_a, lin_b = xs
    kept = conv1.flatten(1).abs().sum(1) > 0
    assert int(kept.sum()) == 3
    for channel in range(8):
        members = [conv1[channel], bn_w[channel], bn_b[channel], conv2[:, channel]]
        assert all(bool((m != 0).any()) == bool(kept[channel]) for m in members)
    rows = lin_a.abs().sum(1) > 0
    assert torch.equal(rows, lin_b.abs().sum(1) > 0)


def test_coupled_groups_of_id_layouts_and_16_bit_tensors(device):
    a = torch.randn(6, 10, dtype=torch.float64)
    ids = torch.arange(60).reshape(6, 10) % 4
    b = torch.randn(4, 3, dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16):
        xs = [a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)]
        coupling = [torch.tensor([0, 1, 2, 3], device=device), torch.tensor([3, 2, 1, 0], device=device)]
        lam, lr = torch.tensor(0.3), torch.tensor(1.0)
        OPS.prox_coupled_.default(xs, [0, 4, 0, 1, 4, 3], [ids.to(device), None], coupling, [4], None, [2], lam, lr)
        want = ref.coupled_prox(
            [a.to(dtype), b.to(dtype)], [ids, "filters"], [[0, 1, 2, 3], [3, 2, 1, 0]], [4], None, [2], [0.3]
        )
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for got, w in zip(xs, want):
            torch.testing.assert_close(got.cpu().double(), torch.from_numpy(w), rtol=tol, atol=tol)


def test_coupled_arguments_are_checked_before_writing(device):
    tensors, _, layout, coupling, sizes = chain(device)
    xs = [t.clone() for t in tensors]
    lam, lr = torch.tensor(0.5), torch.tensor(1.0)
    bad = list(coupling)
    bad[5] = torch.arange(5, device=device) + 9  # 13 is past the 13 coupled groups
    with pytest.raises(ValueError, match=r"coupling\[5\] must lie in \[0, 13\)"):
        OPS.prox_coupled_.default(xs, layout, [], bad, sizes, None, [3, 2], lam, lr)
    bad[5] = torch.arange(4, device=device)
    with pytest.raises(ValueError, match=r"coupling\[5\] must be 1-D with one entry per group of xs\[5\] \(5\)"):
        OPS.prox_coupled_.default(xs, layout, [], bad, sizes, None, [3, 2], lam, lr)
    with pytest.raises(ValueError, match="k must have one entry per term"):
        OPS.prox_coupled_.default(xs, layout, [], coupling, sizes, None, [3], lam, lr)
    with pytest.raises(ValueError, match="term_sizes must be >= 0"):
        OPS.prox_coupled_.default(xs, layout, [], coupling, [14, -1], None, [3, 2], lam, lr)
    with pytest.raises(ValueError, match=r"weights must be 1-D with one entry per coupled group \(13\)"):
        OPS.prox_coupled_.default(xs, layout, [], coupling, sizes, torch.ones(12, device=device), [3, 2], lam, lr)
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        OPS.prox_coupled_.default(xs, layout, [], coupling, sizes, None, [3, 2], torch.tensor([0.5, -1.0]), lr)
    assert all(torch.equal(x, t) for x, t in zip(xs, tensors))


def test_opcheck_prox_coupled(device):
    tensors, _, layout, coupling, sizes = chain(device)
    weights = torch.linspace(0.5, 2.0, 13, dtype=torch.float64, device=device)
    lam = torch.tensor([0.4, 0.8], dtype=torch.float64, device=device)
    args = ([t.clone() for t in tensors], layout, [], coupling, sizes, weights, [3, 2], lam, lam[0])
    opcheck(OPS.prox_coupled_.default, args)
