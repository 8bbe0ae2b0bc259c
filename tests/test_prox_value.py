"""wgsef.value / prox / prox_ / group_norms against the float64 reference."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wgsef
from tests import reference as ref

pytestmark = pytest.mark.baseline_cpu

# (shape, group spec) pairs covering every group type
CASES = [
    ((12, 5, 3, 3), "filters"),
    ((12, 5, 3, 3), "channels"),
    ((12, 5, 3, 3), "shapes"),
    ((12, 5, 3, 3), "layer"),
    ((7, 9), "elements"),
    ((24, 16), ("heads", 6)),
    ((20, 30), "filters"),
    ((20, 30), "channels"),
    ((20, 30), "shapes"),
    ((17,), "filters"),
]

# output tolerance per dtype: inputs are exactly representable, so the error is
# the rounding of one product and of the factor
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-6, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def random_weight(shape, dtype, groups, zero_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    ids, m = ref.group_ids(shape, groups)
    zero = torch.rand(m, generator=g) < zero_frac
    mask = torch.from_numpy(~zero.numpy()[ids]).reshape(shape)
    return (x * mask).to(dtype)


def check_prox(x, k, lam, groups, weights=None, dtype=None, device="cpu"):
    """prox and prox_ on `device` against the reference (computed on the CPU)."""
    dtype = dtype or x.dtype
    xd = x.to(device)
    wd = None if weights is None else weights.to(device)
    out = wgsef.prox(xd, k, lam, groups, wd).cpu()
    assert torch.equal(xd.cpu(), x), "prox modified its input"
    expect = ref.prox(x, k, lam, groups, None if weights is None else weights.tolist())
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), torch.from_numpy(expect), **TOL[dtype])
    ids, m = ref.group_ids(tuple(x.shape), groups)
    got_mass = np.bincount(ids, weights=np.abs(out.double().numpy().reshape(-1)), minlength=m)
    ref_mass = np.bincount(ids, weights=np.abs(expect.reshape(-1)), minlength=m)
    assert (got_mass[ref_mass == 0] == 0).all(), "a group the reference prunes is not exactly 0"
    if dtype in (torch.float32, torch.float64):  # 16-bit outputs may underflow to 0
        assert ((got_mass > 0) == (ref_mass > 0)).all()
    inplace = xd.clone()
    returned = wgsef.prox_(inplace, k, lam, groups, wd)
    assert returned is inplace
    torch.testing.assert_close(inplace.cpu(), out, rtol=0, atol=0)
    return out


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_prox_matches_reference(shape, groups, dtype, device):
    x = random_weight(shape, dtype, groups)
    m = wgsef.num_groups(x, groups)
    for k in sorted({0, 1, 2, max(1, m // 3), m - 1, m, m + 3}):
        if k < 0:
            continue
        for lam in (0.0, 1e-6, 0.05, 0.7, 30.0, 1e6):
            check_prox(x, k, lam, groups, dtype=dtype, device=device)


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_value_matches_reference(shape, groups, dtype, device):
    x = random_weight(shape, dtype, groups)
    m = wgsef.num_groups(x, groups)
    rtol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    for k in sorted({0, 1, 2, max(1, m // 3), m - 1, m, m + 3}):
        got = wgsef.value(x.to(device), k, groups).cpu()
        assert got.dtype == dtype and got.dim() == 0
        expect = ref.value(x, k, groups)
        if math.isinf(expect):
            assert math.isinf(got.item())
        else:
            assert got.item() == pytest.approx(expect, rel=rtol)


@pytest.mark.parametrize("shape,groups", CASES)
def test_group_norms_match_reference(shape, groups, device):
    x = random_weight(shape, torch.float32, groups)
    ids, m = ref.group_ids(shape, groups)
    expect = np.sqrt(ref.sq_norms(x.double().numpy(), ids, m))
    got = wgsef.group_norms(x.to(device), groups).cpu()
    assert got.dtype == torch.float32 and got.shape == (m,)
    torch.testing.assert_close(got.double(), torch.from_numpy(expect), rtol=1e-6, atol=0)


def test_weights_change_the_ranking_and_match_reference(device):
    x = torch.randn(10, 8, dtype=torch.float64)
    weights = torch.linspace(0.3, 3.0, 10, dtype=torch.float64)
    for k in (1, 3, 9):
        for lam in (0.01, 0.5, 20.0):
            check_prox(x, k, lam, "filters", weights, device=device)
        assert wgsef.value(x.to(device), k, weights=weights.to(device)).item() == pytest.approx(
            ref.value(x, k, weights=weights.tolist()), rel=1e-12
        )


def test_custom_ids_with_empty_groups(device):
    x = torch.randn(6, 10, dtype=torch.float64)
    ids = torch.randint(0, 9, (6, 10))
    ids[ids == 4] = 5  # group 4 is empty
    weights = torch.rand(12, dtype=torch.float64) + 0.5  # groups 9..11 empty too
    for k in (1, 2, 4, 12):
        for lam in (0.02, 1.0):
            out = wgsef.prox(x.to(device), k, lam, ids.to(device), weights.to(device)).cpu()
            xn = x.numpy().reshape(-1)
            sq = ref.sq_norms(x.numpy(), ids.reshape(-1).numpy(), 12)
            f = ref.prox_factors(sq, weights.numpy(), k, lam)
            expect = (xn * f[ids.reshape(-1).numpy()]).reshape(x.shape)
            torch.testing.assert_close(out, torch.from_numpy(expect), rtol=1e-10, atol=1e-12)
    got = wgsef.value(x.to(device), 3, ids.to(device), weights.to(device)).item()
    sq = ref.sq_norms(x.numpy(), ids.reshape(-1).numpy(), 12)
    assert got == pytest.approx(ref.value_from_sq(sq, weights.numpy(), 3), rel=1e-12)
    torch.testing.assert_close(wgsef.value(x, 3, ids), wgsef.value(x, 3, ids.int()))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ties_at_the_kth_place(k, device):
    # several identical groups straddle the k-th place: the prox keeps them
    # together and is never k-sparse, for any lam
    row = torch.tensor([0.6, -0.8, 0.0, 0.5], dtype=torch.float64)
    x = torch.stack([3 * row, 2 * row, 2 * row, 2 * row, 2 * row, 0.5 * row, 0 * row])
    for lam in (1e-3, 0.3, 5.0, 1e4):
        out = check_prox(x, k, lam, "filters", device=device)
        kept = (out.abs().sum(1) > 0).sum().item()
        assert kept == 1 or kept >= 5
    # tied groups share one factor bit for bit
    out = wgsef.prox(x.to(device), 2, 0.3)
    for i in (2, 3, 4):
        assert torch.equal(out[i], out[1])


def test_flat_root_snaps_pruned_groups_to_zero(device):
    # exactly k groups saturate with lam above lambda_crit: the rest must be 0, not ~1e-17
    torch.manual_seed(1)
    failures = 0
    for _ in range(300):
        m, k = int(torch.randint(3, 9, ())), int(torch.randint(1, 3, ()))
        base = torch.rand(m, dtype=torch.float64) + 0.1
        base[torch.randint(0, m, (2,))] = base[0].item()  # ties
        x = base[:, None] * torch.randn(1, 3, dtype=torch.float64)
        a = x.norm(dim=1).numpy()
        lc = ref.lambda_crit(a, np.ones(m), k)
        if not math.isfinite(lc):
            continue
        for lam in (lc, lc * 1.5, lc * 0.5 + 1e-3):
            out = wgsef.prox(x.to(device), k, lam).cpu()
            kept = int((out.abs().sum(1) > 0).sum())
            if lam >= lc and kept > k:
                failures += 1
            expect = ref.prox(x, k, lam)
            if kept != ref.nonzero_groups(expect, np.arange(m * 3) // 3, m):
                failures += 1
    assert failures == 0


def test_edge_cases(device):
    x = torch.randn(5, 4, dtype=torch.float64, device=device)
    torch.testing.assert_close(wgsef.prox(x, 2, 0.0), x, rtol=0, atol=0)
    assert torch.count_nonzero(wgsef.prox(x, 0, 0.5)) == 0
    torch.testing.assert_close(wgsef.prox(x, 5, 0.5), x / 1.5)
    torch.testing.assert_close(wgsef.prox(x, 9, 0.5), x / 1.5)
    # one group
    one = torch.randn(1, 6, dtype=torch.float64, device=device)
    torch.testing.assert_close(wgsef.prox(one, 1, 2.0), one / 3.0)
    assert torch.count_nonzero(wgsef.prox(one, 0, 2.0)) == 0
    assert wgsef.value(one, 1).item() == pytest.approx(0.5 * one.pow(2).sum().item())
    # empty tensors, with and without groups
    for shape in [(0, 3), (3, 0), (0,)]:
        e = torch.empty(shape, device=device)
        assert wgsef.prox(e, 1, 0.5).shape == shape
        assert wgsef.value(e, 1).item() == 0.0
    # all-zero input
    z = torch.zeros(4, 3, device=device)
    assert torch.count_nonzero(wgsef.prox(z, 1, 0.5)) == 0
    assert wgsef.value(z, 0).item() == 0.0
    assert math.isinf(wgsef.value(x, 0).item())
    # k = 1 is the squared weighted group lasso, k >= m plain weight decay
    d = torch.rand(5, dtype=torch.float64, device=device) + 0.5
    norms = x.norm(dim=1)
    assert wgsef.value(x, 1, weights=d).item() == pytest.approx(0.5 * (d.sqrt() * norms).sum().item() ** 2)
    assert wgsef.value(x, 5, weights=d).item() == pytest.approx(0.5 * (d * norms**2).sum().item())


def test_huge_lam_keeps_top_k_groups(device):
    x = torch.randn(30, 7, dtype=torch.float64)
    for k in (1, 4, 10):
        out = wgsef.prox(x.to(device), k, 1e8).cpu()
        kept = set(torch.nonzero(out.abs().sum(1)).flatten().tolist())
        top = set(torch.topk(x.norm(dim=1), k).indices.tolist())
        assert kept == top


def test_non_finite_input(device):
    x = torch.randn(4, 3, device=device)
    x[1, 2] = float("nan")
    assert math.isnan(wgsef.value(x, 2).item())
    assert torch.isnan(wgsef.prox(x, 2, 0.1)).all()
    x[1, 2] = float("inf")
    assert wgsef.value(x, 2).item() == float("inf")
    assert torch.isnan(wgsef.prox(x, 2, 0.1)).all()


def test_non_contiguous_inputs(device):
    base = torch.randn(8, 6, dtype=torch.float64)
    x = base.t()  # (6, 8), non-contiguous
    expect = torch.from_numpy(ref.prox(x, 2, 0.3, "channels"))
    xd = base.to(device).t()
    torch.testing.assert_close(wgsef.prox(xd, 2, 0.3, "channels").cpu(), expect)
    y = base.to(device).t()
    wgsef.prox_(y, 2, 0.3, "channels")
    torch.testing.assert_close(y.cpu(), expect)
    assert wgsef.value(xd, 2, "channels").item() == pytest.approx(ref.value(x, 2, "channels"))


def test_lam_as_tensor_and_int_ids():
    x = torch.randn(9, 4)
    a = wgsef.prox(x, 3, torch.tensor(0.2))
    b = wgsef.prox(x, 3, 0.2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_value_gradient_is_a_subgradient():
    # gradient formula d_i x_i / u_i against finite differences at generic points
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    d = torch.rand(6, dtype=torch.float64) + 0.5
    for k in (1, 2, 4, 6):
        assert torch.autograd.gradcheck(lambda t: wgsef.value(t, k, weights=d), (x,), fast_mode=True)
        assert torch.autograd.gradcheck(lambda t: wgsef.value(t, k, "channels"), (x,), fast_mode=True)
    # subgradient inequality at a point with zero groups: W(y) >= W(x) + <g, y - x>
    x0 = torch.randn(8, 3, dtype=torch.float64)
    x0[[1, 5]] = 0
    x0.requires_grad_(True)
    wgsef.value(x0, 2).backward()
    for _ in range(50):
        y = torch.randn(8, 3, dtype=torch.float64)
        lhs = ref.value(y, 2)
        rhs = ref.value(x0, 2) + float((x0.grad * (y - x0.detach())).sum())
        assert lhs >= rhs - 1e-9


def test_prox_is_not_differentiable():
    x = torch.randn(4, 3, requires_grad=True)
    out = wgsef.prox(x, 1, 0.1)
    with pytest.raises(RuntimeError, match="derivative for wgsef::prox is not implemented"):
        out.sum().backward()
    norms = wgsef.group_norms(x)
    with pytest.raises(RuntimeError, match="derivative for wgsef::group_norms is not implemented"):
        norms.sum().backward()


@pytest.mark.parametrize("shared", [False, True])
def test_prox_multi_matches_reference(shared, device):
    # a filter-grouped tensor, an id-grouped one (with an empty group) and a
    # channel-grouped one with weights, as one optimizer param group
    a = torch.randn(6, 4, 3, dtype=torch.float64)
    b = torch.randn(5, 8, dtype=torch.float64)
    ids = torch.randint(0, 7, (5, 8))
    ids[ids == 3] = 4
    c = torch.randn(4, 6, dtype=torch.float64)
    wc = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    tensors = [a.clone(), b.clone(), c.clone()]
    layout = [1, 6, 12, 0, 7, 0, 4, 6, 1]
    k = [9] if shared else [2, 3, 1]
    lam = torch.tensor([0.7] if shared else [0.7, 0.2, 1.5], dtype=torch.float64)
    scale = torch.tensor(0.5, dtype=torch.float64)
    on = [t.to(device) for t in tensors]
    torch.ops.wgsef.prox_multi_(
        on, layout, [None, ids.to(device), None], [None, None, wc.to(device)], k, lam, scale, shared
    )
    tensors = [t.cpu() for t in on]
    specs = ["filters", ids, "channels"]
    weights = [np.ones(6), np.ones(7), wc.numpy()]
    id_lists = [ref.group_ids(tuple(t.shape), s)[0] for t, s in zip((a, b, c), specs)]
    sqs = [ref.sq_norms(t.numpy(), i, len(w)) for t, i, w in zip((a, b, c), id_lists, weights)]
    if shared:
        f = ref.prox_factors(np.concatenate(sqs), np.concatenate(weights), 9, 0.35)
        factors = np.split(f, np.cumsum([6, 7])[:2])
    else:
        factors = [ref.prox_factors(sq, w, kk, 0.5 * v) for sq, w, kk, v in zip(sqs, weights, k, lam.tolist())]
    for got, orig, i, f in zip(tensors, (a, b, c), id_lists, factors):
        expect = (orig.numpy().reshape(-1) * f[i]).reshape(orig.shape)
        torch.testing.assert_close(got, torch.from_numpy(expect), rtol=1e-10, atol=1e-12)


# a magnitude per dtype whose squares overflow (or underflow) the float lanes
EXTREMES = {
    torch.float32: (1e20, 1e-25),
    torch.bfloat16: (1e20, 1e-25),
    torch.float16: (3e4, 1e-6),
}


@pytest.mark.parametrize("dtype", list(EXTREMES))
@pytest.mark.parametrize("which", [0, 1])
def test_finite_input_of_any_magnitude_gives_finite_results(dtype, which, device):
    scale = EXTREMES[dtype][which]
    for groups, shape in (("filters", (4, 300)), ("channels", (3, 5, 64))):
        x = (torch.rand(shape, dtype=torch.float64) + 0.5) * scale
        x = x.to(dtype)  # every element non-zero and representable
        xd = x.double()
        ids, m = ref.group_ids(tuple(shape), groups)
        sq = ref.sq_norms(xd.numpy(), ids, m)
        norms = wgsef.group_norms(x.to(device), groups).cpu()
        torch.testing.assert_close(norms.double(), torch.from_numpy(np.sqrt(sq)), rtol=1e-5, atol=0)
        assert (norms > 0).all(), "a non-zero group reported as zero"
        out = wgsef.prox(x.to(device), 2, 0.3, groups).cpu()
        assert torch.isfinite(out).all()
        expect = torch.from_numpy(ref.prox(xd, 2, 0.3, groups)).to(dtype)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out, expect, rtol=tol, atol=0)


@pytest.mark.parametrize("exponent", [520, -540])
def test_float64_norms_beyond_the_square_range(exponent):
    # squares of 2^520 overflow float64 and those of 2^-540 underflow to 0; the
    # ops scale by a power of two and, WGSEF being 2-homogeneous, give exactly
    # t * prox(x) and t * norms(x)
    x = torch.rand(6, 5, dtype=torch.float64) + 0.5
    t = 2.0**exponent
    for groups in ("filters", "channels", torch.arange(30).reshape(6, 5) % 4):
        norms = wgsef.group_norms(x * t, groups)
        torch.testing.assert_close(norms, wgsef.group_norms(x, groups) * t, rtol=1e-14, atol=0)
        for k in (1, 2):
            out = wgsef.prox(x * t, k, 0.3, groups)
            torch.testing.assert_close(out, wgsef.prox(x, k, 0.3, groups) * t, rtol=1e-13, atol=0)
    y = x * t
    wgsef.prox_(y, 2, 0.3)
    torch.testing.assert_close(y, wgsef.prox(x, 2, 0.3) * t, rtol=1e-13, atol=0)
    if exponent > 0:
        assert wgsef.value(x * t, 2).item() == math.inf  # t^2 * value(x) exceeds float64
    shared = [x * t, (x * t)[:3].clone()]
    ops_out = [s.clone() for s in shared]
    torch.ops.wgsef.prox_multi_(ops_out, [1, 6, 5, 1, 3, 5], [], [], [2], torch.tensor(0.3), torch.tensor(1.0), True)
    plain = [x.clone(), x[:3].clone()]
    torch.ops.wgsef.prox_multi_(plain, [1, 6, 5, 1, 3, 5], [], [], [2], torch.tensor(0.3), torch.tensor(1.0), True)
    for got, want in zip(ops_out, plain):
        torch.testing.assert_close(got, want * t, rtol=1e-13, atol=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_elements_stream_the_same_answers_as_the_general_search(weighted, device):
    # "elements" terms run the pass-based search over x (no per-group arrays);
    # the same groups as ids run the general one
    torch.manual_seed(3)
    x = torch.randn(40, 50, dtype=torch.float64)
    x[::7] = torch.round(x[::7] * 2) / 2  # ties
    x[3] = 0.0  # zero groups
    ids = torch.arange(x.numel()).reshape(x.shape)
    d = torch.rand(x.numel(), dtype=torch.float64) + 0.5 if weighted else None
    xd, idsd = x.to(device), ids.to(device)
    dd = d.to(device) if d is not None else None
    for k in (0, 1, 17, 999, 1950, 2000, 2500):
        for lam in (0.0, 1e-3, 0.4, 50.0):
            got = wgsef.prox(xd, k, lam, "elements", dd)
            want = wgsef.prox(xd, k, lam, idsd, dd)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
            assert torch.equal(got == 0, want == 0), "different groups pruned"
        torch.testing.assert_close(wgsef.value(xd, k, "elements", dd), wgsef.value(xd, k, idsd, dd), rtol=1e-12, atol=0)
        if k > 0:
            xg = xd.clone().requires_grad_(True)
            wgsef.value(xg, k, "elements", dd).backward()
            xi = xd.clone().requires_grad_(True)
            wgsef.value(xi, k, idsd, dd).backward()
            torch.testing.assert_close(xg.grad, xi.grad, rtol=1e-12, atol=1e-14)


def test_elements_prox_needs_no_memory_per_group():
    code = (
        "import torch, wgsef\n"
        "def peak():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) * 1024\n"
        "x = torch.randn(4_000_000)\n"
        "wgsef.prox_(torch.randn(1000), 10, 0.1, 'elements')\n"
        "before = peak()\n"
        "wgsef.prox_(x, 2_000_000, 0.01, 'elements')\n"
        "wgsef.value(x, 2_000_000, 'elements')\n"
        "parts = [x[:3_000_000], x[3_000_000:]]\n"
        "lam, lr = torch.tensor(0.01), torch.tensor(1.0)\n"
        "torch.ops.wgsef.prox_multi_(parts, [1, 3_000_000, 1, 1, 1_000_000, 1], [], [], [2_000_000], lam, lr, True)\n"
        "print((peak() - before) / (x.numel() * 4))\n"
    )
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the peak memory")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) <= 2.0, f"extra peak memory {run.stdout.strip()} x the tensor"


@pytest.mark.parametrize("n", [4, 300, 20_000])  # 20_000: the sampled bracket runs
def test_elements_over_hundreds_of_binades_match_the_general_search(n):
    torch.manual_seed(7)
    x = torch.tensor([1e-150, 2e-150, 1e150, 3e150], dtype=torch.float64)
    if n > 4:
        x = torch.randn(n, dtype=torch.float64) * torch.pow(10.0, torch.randint(-150, 150, (n,)).double())
    ids = torch.arange(n)
    for k in (1, 2, n // 3, n - 1):
        for lam in (1e-3, 1.0):
            got, want = wgsef.prox(x, k, lam, "elements"), wgsef.prox(x, k, lam, ids)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
            assert torch.equal(got == 0, want == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [7, 70_003])  # 70_003: vector lanes, a ragged tail, two chunks, the sample
def test_elements_without_weights_stream_in_vector_lanes(dtype, n):
    # float32 and float64 terms without weights take the vector loops (counts,
    # passes, shrink); the same groups as ids take the general search
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen).to(dtype)
    x[::5] = 0.0
    x[1::9] = torch.round(x[1::9] * 4) / 4  # ties
    ids = torch.arange(n)
    for k in (1, n // 3, n - n // 5, n):
        for lam in (1e-3, 0.7):
            got, want = wgsef.prox(x, k, lam, "elements"), wgsef.prox(x, k, lam, ids)
            torch.testing.assert_close(got, want, rtol=2e-6 if dtype == torch.float32 else 1e-12, atol=0)
            assert torch.equal(got == 0, want == 0)
            inplace = x.clone()
            wgsef.prox_(inplace, k, lam, "elements")
            assert torch.equal(inplace, got)
        torch.testing.assert_close(wgsef.value(x, k, "elements"), wgsef.value(x, k, ids), rtol=1e-6, atol=0)
    # NaN and Inf are counted in the lanes and the tail alike
    for bad in (float("nan"), float("inf")):
        for at in (0, n - 1):
            y = x.clone()
            y[at] = bad
            got, want = wgsef.prox(y, max(1, n // 3), 0.5, "elements"), wgsef.prox(y, max(1, n // 3), 0.5, ids)
            torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
            v_got, v_want = wgsef.value(y, 1, "elements").item(), wgsef.value(y, 1, ids).item()
            assert v_got == v_want or (math.isnan(v_got) and math.isnan(v_want))


def test_a_share_beyond_the_double_range_saturates():
    # |x| * eta overflows for the largest element (values spread over 1e600): its
    # share is 1, its factor the ridge shrink 1 / (1 + lam); the budget it leaves,
    # k - 1, goes to the others as if it were not there
    x = torch.tensor([1e-300, 2e-300, 1e300], dtype=torch.float64)
    for groups in ("elements", torch.arange(3)):
        got = wgsef.prox(x, 2, 0.5, groups)
        assert got[2].item() == 1e300 / 1.5
        torch.testing.assert_close(
            got[:2], wgsef.prox(x[:2], 1, 0.5, groups[:2] if torch.is_tensor(groups) else groups)
        )


@pytest.mark.parametrize("n", [3, 20_000])  # 20_000: the sampled bracket runs
def test_elements_near_the_subnormal_range_keep_their_budget(n):
    # (lam + 1) / |x_i| overflows: the search rescales c by a power of two, and
    # gives the general search's answer (which rescales its norms)
    y = torch.tensor([3e-280, 2e-310, -1e-309], dtype=torch.float64)
    if n > 3:
        y = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e-309
    for k in (1, 2, n // 3):
        for weights in (None, torch.linspace(0.5, 2.0, n, dtype=torch.float64)):
            got = wgsef.prox(y, k, 0.5, "elements", weights)
            want = wgsef.prox(y, k, 0.5, torch.arange(n), weights)
            # subnormal outputs: a few of their ulps (5e-324) apart
            torch.testing.assert_close(got, want, rtol=1e-12, atol=3e-323)
    # lam near the top of the range: the scale stays finite (no NaN from 0 * inf)
    x = torch.tensor([1e-310, 1e-300, 1.0, 1e300], dtype=torch.float64)
    assert torch.equal(wgsef.prox(x, 2, 1e300, "elements"), wgsef.prox(x, 2, 1e300, torch.arange(4)))
    if n == 3:  # the exact answer keeps 3e-280 and -1e-309, prunes 2e-310
        got = wgsef.prox(y, 2, 0.5, "elements")
        assert got[1].item() == 0.0 and got[0].item() > 0.0 and got[2].item() < 0.0


def test_float64_tensors_below_the_normal_range():
    x = torch.tensor([[1e-310, 0.0], [2e-310, 3e-310]], dtype=torch.float64)
    t = 2.0**1000  # exact: the same problem at a normal scale
    out = wgsef.prox(x, 1, 0.1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, wgsef.prox(x * t, 1, 0.1) / t, rtol=0, atol=2e-323)
    torch.testing.assert_close(wgsef.group_norms(x), wgsef.group_norms(x * t) / t, rtol=1e-15, atol=2e-323)


def test_a_zero_tensor_in_a_shared_term_does_not_change_the_scale():
    a = torch.tensor([[1e-200, 0.0], [3e-200, 1e-200], [2e-200, 2e-200]], dtype=torch.float64)
    lam, lr = torch.tensor(0.01), torch.tensor(1.0)
    alone = a.clone()
    torch.ops.wgsef.prox_multi_([alone], [1, 3, 2], [], [], [1], lam, lr, True)
    for other in (torch.zeros(4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)):
        pair = [a.clone(), other]
        torch.ops.wgsef.prox_multi_(pair, [1, 3, 2, 1, other.numel(), 1], [], [], [1], lam, lr, True)
        torch.testing.assert_close(pair[0], alone, rtol=1e-15, atol=0)


def test_an_empty_tensor_may_declare_any_number_of_groups():
    a = torch.randn(4, 5, 3)
    expect = a.clone()
    torch.ops.wgsef.prox_multi_([expect], [4, 5, 3], [], [], [1], torch.tensor(0.5), torch.tensor(1.0))
    pair = [a.clone(), torch.zeros(0)]
    torch.ops.wgsef.prox_multi_(pair, [4, 5, 3, 0, 2**40, 0], [], [], [1, 1], torch.tensor(0.5), torch.tensor(1.0))
    assert torch.equal(pair[0], expect)


def test_a_float32_value_beyond_float_range_is_inf():
    x = torch.full((4,), 3e19)
    assert wgsef.value(x, 2, "layer").item() == math.inf
    assert wgsef.value(x, 2, "elements").item() == math.inf
    assert wgsef.value(x.view(2, 2), 1).item() == math.inf


@pytest.mark.parametrize("n", [50, 30_000])  # 30_000: the sampled bracket spans both tensors
def test_a_shared_term_of_elements_streams_the_same_answers(n):
    torch.manual_seed(11)
    a = torch.randn(n, dtype=torch.float64)
    b = torch.randn(n // 2, 3, dtype=torch.float64)
    b[0] = 0.0
    wa = torch.rand(n, dtype=torch.float64) + 0.5
    lam, lr = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for k in (1, n // 2, 2 * n):
        streamed = [a.clone(), b.clone()]
        torch.ops.wgsef.prox_multi_(streamed, [1, n, 1, 1, b.numel(), 1], [], [wa, None], [k], lam, lr, True)
        general = [a.clone(), b.clone()]  # the same groups as ids: the general search
        ids = [torch.arange(n), torch.arange(b.numel()).reshape(b.shape)]
        torch.ops.wgsef.prox_multi_(general, [0, n, 0, 0, b.numel(), 0], ids, [wa, None], [k], lam, lr, True)
        for got, want in zip(streamed, general):
            # eta from sums over 45k groups: ~1e-13 absolute at groups on the threshold
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            assert torch.equal(got == 0, want == 0)
