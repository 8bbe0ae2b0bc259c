"""N:M masks, the fused decayed-weight op, schedules and module integration."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.library import opcheck

import wgsef
from wgsef.nm import NMSchedule, NMSparsifier, check_nm, sdgf_geometric_patterns, sdgf_stepwise_patterns


def keys_of(group: np.ndarray) -> np.ndarray:
    k = np.abs(group.astype(np.float64))
    k[np.isnan(k)] = np.inf
    return k


def ref_mask_sort(w: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """Sort form: stable sort on -key, keep the first n of each group."""
    x = w.detach().double().movedim(dim, -1).contiguous()
    groups = x.numpy().reshape(-1, m)
    keep = np.zeros(groups.shape, dtype=bool)
    for g, row in enumerate(groups):
        order = np.argsort(-keys_of(row), kind="stable")
        keep[g, order[:n]] = True
    return torch.from_numpy(keep.reshape(x.shape)).movedim(-1, dim)


def ref_mask_rank(w: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """Rank form: keep i when #{j : k_j > k_i or (k_j == k_i and j < i)} < n."""
    x = w.detach().double().movedim(dim, -1).contiguous()
    groups = x.numpy().reshape(-1, m)
    keep = np.zeros(groups.shape, dtype=bool)
    for g, row in enumerate(groups):
        k = keys_of(row)
        for i in range(m):
            rank = sum(1 for j in range(m) if k[j] > k[i] or (k[j] == k[i] and j < i))
            keep[g, i] = rank < n
    return torch.from_numpy(keep.reshape(x.shape)).movedim(-1, dim)


def tied_tensor(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).to(dtype)  # many exact ties, +-0
    x[torch.rand(shape, generator=g) < 0.1] = -0.0
    return x


@pytest.mark.baseline_cpu
# covers every selection path: rank forms (m = 4, 8, 16, 32), first maximum
# (n = 1, m a multiple of 8), large groups (m = 40, 64) and the scalar
# fallback (m = 12, and 30:64 with more kept than slices)
@pytest.mark.parametrize(
    "n,m",
    [
        (2, 4),
        (1, 4),
        (3, 4),
        (1, 8),
        (4, 8),
        (5, 8),
        (1, 16),
        (2, 16),
        (1, 32),
        (7, 32),
        (3, 12),
        (2, 40),
        (1, 64),
        (4, 64),
        (30, 64),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mask_matches_both_reference_forms_on_tied_inputs(n, m, dtype, device):
    for seed, shape in enumerate([(6, 4 * m), (3, 2 * m)]):
        w = tied_tensor(shape, seed, dtype)
        got = wgsef.nm_mask(w.to(device), n, m).cpu()
        assert got.dtype == torch.bool and got.shape == w.shape
        expect = ref_mask_sort(w, n, m, -1)
        assert torch.equal(got, expect)
        assert torch.equal(expect, ref_mask_rank(w, n, m, -1))


def test_mask_brute_force_small(device):
    # the kept set is the unique subset S with key_i > key_j or (equal and i < j)
    # for every i in S and j outside S
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 7))
        n = int(rng.integers(0, m + 1))
        row = rng.integers(-2, 3, m).astype(np.float32)
        k = keys_of(row)
        valid = [
            S
            for S in itertools.combinations(range(m), n)
            if all(k[i] > k[j] or (k[i] == k[j] and i < j) for i in S for j in range(m) if j not in S)
        ]
        assert len(valid) == 1
        got = wgsef.nm_mask(torch.from_numpy(row).to(device), n, m).cpu()
        assert sorted(torch.nonzero(got).flatten().tolist()) == list(valid[0])


@pytest.mark.baseline_cpu
@pytest.mark.parametrize("n,m", [(16, 512), (8, 256), (4, 64), (1, 128), (64, 2048), (3, 4096)])
def test_large_groups(n, m, device):
    g = torch.Generator().manual_seed(m + n)
    w = torch.randn(4, 2 * m, generator=g)
    w[0, :m] = torch.round(w[0, :m])  # ties in the first group
    w[0, m:] = 0.0
    w[0, m + 3 : m + 3 + max(1, n // 2)] = 1.5  # fewer than n nonzero keys: zeros fill up by index
    w[1, :m] = torch.distributions.Cauchy(0.0, 1.0).sample((m,))  # heavy tails: many candidates
    w[1, m + 5] = float("nan")
    w[2, :m] = 0.25  # all tied
    expect = ref_mask_sort(w, n, m, -1)
    for dim_view in (w, w.t().contiguous().t()):
        assert torch.equal(wgsef.nm_mask(dim_view.to(device), n, m).cpu(), expect)


@pytest.mark.baseline_cpu
@pytest.mark.parametrize("n,m", [(16, 512), (4, 64), (20, 80)])
def test_large_groups_across_scale_changes(n, m, device):
    # The CPU kernel starts each large group from a bound guessed on the group
    # before; runs of groups whose scale jumps up and down, quantised runs and
    # a few exact copies of the previous group make the guess too high, too
    # low and exactly right.
    g = torch.Generator().manual_seed(7 * m + n)
    groups = 600
    w = torch.randn(groups, m, generator=g)
    scale = torch.ones(groups)
    scale[50:120] = 1e3
    scale[120:200] = 1e-3
    scale[200:400] = torch.exp(3 * torch.randn(200, generator=g))  # a new scale every group
    w *= scale[:, None]
    w[400:450] = torch.round(w[400:450] * 2)  # ties
    w[450:500:2] = w[449:499:2]  # a group equal to the one before
    w[500:510] = 0.0
    w[510:512, ::7] = float("inf")
    w = w.reshape(groups // 4, 4 * m)
    assert torch.equal(wgsef.nm_mask(w.to(device), n, m).cpu(), ref_mask_sort(w, n, m, -1))


def test_nan_ranks_with_inf_ties_go_low_and_zero_signs_tie(device):
    w = torch.tensor([[0.5, float("nan"), 2.0, -0.0], [float("inf"), 1.0, float("nan"), 0.0]], device=device)
    assert wgsef.nm_mask(w, 1, 4).tolist() == [[False, True, False, False], [True, False, False, False]]
    assert wgsef.nm_mask(w, 2, 4).tolist() == [[False, True, True, False], [True, False, True, False]]
    # NaN and +-inf tie, so the lower index wins, on every selection path
    # (rank form m = 4, first maximum n = 1 with m = 8, large groups m = 64)
    for m in (4, 8, 64):
        for first, second in ((float("inf"), float("nan")), (float("nan"), float("-inf"))):
            row = torch.arange(1.0, m + 1.0, device=device)
            row[m // 4], row[m // 2] = first, second
            kept = wgsef.nm_mask(row.view(1, m), 1, m).view(-1)
            assert kept.nonzero().view(-1).tolist() == [m // 4], (m, first, second)
    z = torch.tensor([-0.0, 0.0, -0.0, 0.0], device=device)
    assert wgsef.nm_mask(z, 2, 4).tolist() == [True, True, False, False]


@pytest.mark.baseline_cpu
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_dims_and_conv_layout(dim, device):
    w = tied_tensor((8, 16, 3, 3) if dim != -1 else (8, 16, 3, 4), 5)
    n, m = 2, 4
    got = wgsef.nm_mask(w.to(device), n, m, dim).cpu()
    assert torch.equal(got, ref_mask_sort(w, n, m, dim))
    counts = got.movedim(dim, -1).reshape(-1, m).sum(1)
    assert (counts == n).all()


def test_bad_arguments(device):
    w = torch.randn(4, 6, device=device)
    with pytest.raises(ValueError, match=r"the size of dim -1 \(6\) must be a multiple of m = 4"):
        wgsef.nm_mask(w, 2, 4)
    with pytest.raises(ValueError, match=r"n must lie in \[0, m = 4\], got 5"):
        wgsef.nm_mask(torch.randn(4, 8, device=device), 5, 4)
    with pytest.raises(ValueError, match="m must be >= 1"):
        wgsef.nm_mask(w, 0, 0)
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        wgsef.nm_mask(w, 1, 2, 3)
    with pytest.raises(TypeError, match="w must be a float16"):
        wgsef.nm_mask(torch.ones(4, 4, dtype=torch.long, device=device), 2, 4)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\]"):
        wgsef.nm_decay(torch.randn(4, 8, device=device), 2, 4, 1.5)
    with pytest.raises(ValueError, match="grad_mode must be 'ste' or 'scaled'"):
        wgsef.nm_decay(torch.randn(4, 8, device=device), 2, 4, 0.5, grad_mode="exact")
    with pytest.raises(ValueError, match=r"srste_weight must be >= 0, got -0\.1"):
        wgsef.nm_decay(torch.randn(4, 8, device=device), 2, 4, 0.5, srste_weight=-0.1)
    with pytest.raises(ValueError, match=r"decay must be a one-element tensor, got shape \[2\]"):
        wgsef.nm_decay(torch.randn(4, 8, device=device), 2, 4, torch.tensor([0.1, 0.2]))


SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@SETTINGS
@given(
    st.sampled_from([(1, 2), (2, 4), (1, 8), (3, 8), (4, 16), (1, 32), (5, 40)]),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1.0, 0.25, 8.0]),
)
def test_properties(pattern, rows, seed, scale):
    n, m = pattern
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 2 * m, generator=g)
    mask = wgsef.nm_mask(w, n, m)
    assert (mask.view(-1, m).sum(1) == n).all()  # exactly n per group without NaN
    assert torch.equal(wgsef.nm_mask(w * mask, n, m), mask)  # idempotent
    assert torch.equal(wgsef.nm_mask(scale * w, n, m), mask)  # invariant to (exact) scaling
    assert torch.equal(wgsef.nm_mask(-w, n, m), mask)


@pytest.mark.baseline_cpu
@pytest.mark.parametrize("decay", [0.0, 0.3, 1.0])
def test_decay_forward_and_gradients_match_the_unfused_formula(decay, device):
    w = torch.randn(6, 16, dtype=torch.float64, device=device, requires_grad=True)
    upstream = torch.randn(6, 16, dtype=torch.float64, device=device)
    mask = wgsef.nm_mask(w.detach(), 2, 8)
    factor = mask.double() + decay * (1 - mask.double())
    out = wgsef.nm_decay(w, 2, 8, decay)
    torch.testing.assert_close(out, w.detach() * factor, rtol=0, atol=0)
    # "scaled" is autograd of the unfused formula with the mask held constant
    (out_s,) = [wgsef.nm_decay(w, 2, 8, decay, grad_mode="scaled")]
    (grad_s,) = torch.autograd.grad(out_s, w, upstream)
    w2 = w.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(w2 * factor, w2, upstream)
    torch.testing.assert_close(grad_s, grad_ref, rtol=0, atol=0)
    # "ste": straight through; SR-STE adds lambda * (1 - mask) * W
    (grad_ste,) = torch.autograd.grad(wgsef.nm_decay(w, 2, 8, decay), w, upstream)
    torch.testing.assert_close(grad_ste, upstream, rtol=0, atol=0)
    (grad_sr,) = torch.autograd.grad(wgsef.nm_decay(w, 2, 8, decay, srste_weight=2e-4), w, upstream)
    torch.testing.assert_close(grad_sr, upstream + 2e-4 * (~mask).double() * w.detach(), rtol=0, atol=1e-18)
    # the scaled backward against finite differences at a generic point
    assert torch.autograd.gradcheck(lambda t: wgsef.nm_decay(t, 2, 8, decay, grad_mode="scaled"), (w,))


def test_opcheck_nm_ops(device):
    w = torch.randn(4, 8, 3, device=device)
    opcheck(torch.ops.wgsef.nm_mask.default, (w, 2, 4, 1))
    wg = torch.randn(4, 16, dtype=torch.float64, device=device, requires_grad=True)
    opcheck(torch.ops.wgsef.nm_decay.default, (wg, 1, 8, -1, torch.tensor(0.25, device=device), "scaled", 1e-3))
    opcheck(torch.ops.wgsef.nm_decay.default, (wg.detach(), 2, 4, -1, torch.tensor(0.0, device=device)))


def test_compile_decay_does_not_recompile():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    f = torch.compile(lambda w, d: wgsef.nm_decay(w, 2, 4, d).sum(), fullgraph=True)
    w, d = torch.randn(8, 16), torch.tensor(1.0)
    for step in range(4):
        d.fill_(0.5**step)
        torch.testing.assert_close(f(w, d), wgsef.nm_decay(w, 2, 4, d).sum())
    assert counters["stats"]["unique_graphs"] == 1


# ---------------------------------------------------------------- schedules


def test_structure_patterns():
    assert sdgf_stepwise_patterns(1, 8) == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert sdgf_stepwise_patterns(1, 16) == [(15, 16), (8, 16), (4, 16), (2, 16), (1, 16)]
    assert sdgf_stepwise_patterns(3, 8) == [(7, 8), (4, 8), (3, 8)]
    assert sdgf_stepwise_patterns(2, 4) == [(3, 4), (2, 4)]
    assert sdgf_stepwise_patterns(3, 4) == [(3, 4)]
    assert sdgf_stepwise_patterns(4, 4) == [(4, 4)]
    assert sdgf_geometric_patterns(1, 8) == [(16, 128), (8, 64), (4, 32), (2, 16), (1, 8)]
    assert sdgf_geometric_patterns(1, 8, k=8) == [(8, 64), (4, 32), (2, 16), (1, 8)]
    assert sdgf_geometric_patterns(1, 32)[0] == (16, 512)
    with pytest.raises(ValueError, match="power of two"):
        sdgf_geometric_patterns(1, 8, k=12)


def test_schedule_values_by_hand():
    # T = 100, dense 10 steps, fine-tune 20 steps, decay span 70
    lin = NMSchedule(1, 8, 100, "mdgf_linear", dense_frac=0.1, finetune_frac=0.2)
    assert lin.state(0) == wgsef.nm.NMState("dense", 8, 8, 1.0)
    assert lin.state(9).phase == "dense"
    assert lin.state(10) == wgsef.nm.NMState("decay", 1, 8, 1.0)
    assert lin.state(45).decay == pytest.approx(0.5)  # 1 - 35/70
    assert lin.state(79).decay == pytest.approx(1 / 70)
    assert lin.state(80) == wgsef.nm.NMState("finetune", 1, 8, 0.0)
    assert lin.state(150).phase == "finetune"
    exp = NMSchedule(1, 8, 100, "mdgf_exp", dense_frac=0.1, finetune_frac=0.2)
    assert exp.state(80 - 1).decay == pytest.approx(math.exp(-math.log(1000) * 69 / 70))
    assert exp.state(45).decay == pytest.approx(1000**-0.5)
    fixed = NMSchedule(1, 8, 100, "mdgf_exp", decay_rate=1e-4, dense_frac=0.0, finetune_frac=0.0)
    assert fixed.state(0).decay == 1.0
    assert fixed.state(69).decay == pytest.approx(math.exp(-6.9e-3))
    step = NMSchedule(1, 8, 100, "sdgf_stepwise", dense_frac=0.1, finetune_frac=0.2)
    # 4 patterns over 70 steps: index = floor(j * 4 / 70)
    # t = 10, 27, 28, 45, 62, 63, 79 -> j = 0, 17, 18, 35, 52, 53, 69 -> index 0, 0, 1, 2, 2, 3, 3
    assert [(step.state(t).n, step.state(t).m) for t in (10, 27, 28, 45, 62, 63, 79, 80)] == [
        (7, 8),
        (7, 8),
        (4, 8),
        (2, 8),
        (2, 8),
        (1, 8),
        (1, 8),
        (1, 8),
    ]
    geo = NMSchedule(1, 8, 100, "sdgf_geometric", dense_frac=0.1, finetune_frac=0.2)
    assert (geo.state(10).n, geo.state(10).m, geo.state(10).decay) == (16, 128, 0.0)
    assert (geo.state(79).n, geo.state(79).m) == (1, 8)
    assert geo.group_sizes() == {128, 64, 32, 16, 8}
    sr = NMSchedule(2, 4, 50, "srste")
    assert sr.dense_steps == 0 and sr.finetune_steps == 0 and sr.state(0) == wgsef.nm.NMState("decay", 2, 4, 0.0)
    # checkpointable
    step.step_count = 33
    other = NMSchedule(1, 8, 100, "sdgf_stepwise", dense_frac=0.1, finetune_frac=0.2)
    other.load_state_dict(step.state_dict())
    assert other.state() == step.state()


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method: expected one of"):
        NMSchedule(1, 8, 100, "cosine")
    with pytest.raises(ValueError, match="0 <= n <= m"):
        NMSchedule(9, 8, 100)
    with pytest.raises(ValueError, match="total_steps"):
        NMSchedule(1, 8, 0)
    with pytest.raises(ValueError, match="must not exceed 1"):
        NMSchedule(1, 8, 100, dense_frac=0.6, finetune_frac=0.6)


# ------------------------------------------------------------- integration


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(torch.relu(self.stem(x))))  # (B, 16, 4, 4)
        seq = h.flatten(2).transpose(1, 2)  # (B, 16 tokens, 16)
        seq = seq + self.attn(seq, seq, seq, need_weights=False)[0]
        return self.fc2(torch.relu(self.fc1(seq.mean(1))))


@pytest.mark.parametrize("method", ["mdgf_exp", "mdgf_linear", "sdgf_stepwise", "srste"])
def test_training_through_all_phases_gives_a_valid_nm_model(method):
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(64, 3, 4, 4), torch.randint(0, 4, (64,))
    total = 60
    schedule = NMSchedule(
        1,
        4,
        total,
        method,
        dense_frac=0.1 if method != "srste" else 0.0,
        finetune_frac=0.2 if method != "srste" else 0.0,
    )
    with pytest.warns(UserWarning, match="leaving stem dense"):
        sparsifier = NMSparsifier(model, schedule)
    assert [name for name, *_ in sparsifier.layers] == ["conv", "attn", "attn.out_proj", "fc1", "fc2"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sparsifier.attach(opt)
    phases, losses = [], []
    for _ in range(total):
        phases.append(sparsifier.current.phase)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    expected = {"srste": {"decay"}}.get(method, {"dense", "decay", "finetune"})
    assert set(phases) == expected
    assert schedule.step_count == total
    assert losses[-1] < losses[0]
    with torch.no_grad():
        sparse_out = model(x)
    sparsifier.export()
    assert not parametrize_any(model)
    rows = check_nm(model, 1, 4)
    assert [r.valid for r in rows] == [True] * 5 and all(r.max_nonzeros <= 1 for r in rows)
    with torch.no_grad():
        torch.testing.assert_close(model(x), sparse_out)  # fine-tune forward == hard export


def parametrize_any(model):
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(m) for m in model.modules())


def test_check_nm_reports_invalid_layers():
    lin = nn.Linear(8, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2, 0, 0, 0, 0, 0, 3], [1, 0, 0, 0, 0, 0, 0, 0]]))
    (row,) = check_nm(lin, 1, 4)
    assert (row.max_nonzeros, row.valid) == (2, False)
    (row,) = check_nm(lin, 2, 4)
    assert row.valid


@pytest.mark.parametrize("groups", [1, 3, 5, 1023, 1025])
def test_group_counts_that_leave_a_partial_vector(groups, device):
    # 2:4 groups fill half of an 8-lane vector: an odd count ends inside one
    # (the kernel pads that last vector itself; checked with AddressSanitizer)
    w = torch.randn(groups * 4)
    for n in (1, 2, 3):
        assert torch.equal(wgsef.nm_mask(w.to(device), n, 4).cpu(), ref_mask_sort(w, n, 4, -1))
        assert torch.equal(wgsef.nm_mask(w.half().to(device), n, 4).cpu(), ref_mask_sort(w.half(), n, 4, -1))
