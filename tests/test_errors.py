"""Bad input raises a clear exception that names the argument."""

import pytest
import torch

import wgsef

OPS = torch.ops.wgsef


def test_x_dtype(device):
    for bad in (torch.arange(6, device=device).reshape(2, 3), torch.zeros(2, 3, dtype=torch.complex64, device=device)):
        with pytest.raises(TypeError, match="x must be a float16, bfloat16, float32 or float64"):
            wgsef.prox(bad, 1, 0.1)
        with pytest.raises(TypeError, match="x must be"):
            wgsef.value(bad, 1)
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        wgsef.value([1.0, 2.0], 1)


def test_k(device):
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="k: expected k >= 0"):
        wgsef.prox(x, -1, 0.1)
    with pytest.raises(TypeError, match="k: expected an int"):
        wgsef.value(x, 1.5)
    with pytest.raises(ValueError, match="k must be >= 0"):
        torch.ops.wgsef.value(x.view(1, 4, 3), -2)


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_lam_value(lam, device):
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="lam: expected a finite value >= 0"):
        wgsef.prox(x, 1, lam)
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        wgsef.prox(x, 1, torch.tensor(lam))
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        wgsef.prox_(x, 1, torch.tensor(lam))


def test_lam_shape_and_type(device):
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="lam must be a one-element tensor"):
        wgsef.prox(x, 1, torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="lam: expected a float"):
        wgsef.prox(x, 1, "0.1")


def test_group_specs_that_do_not_fit(device):
    x = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match="groups: expected one of"):
        wgsef.prox(x, 1, 0.1, "rows")
    with pytest.raises(ValueError, match=r"groups: \('heads', 4\) needs num_heads >= 1 dividing"):
        wgsef.prox(x, 1, 0.1, ("heads", 4))
    with pytest.raises(ValueError, match="groups: expected \\('heads', num_heads\\)"):
        wgsef.prox(x, 1, 0.1, ("heads", 2.0))
    with pytest.raises(ValueError, match="'channels' needs x with at least 2 dimensions"):
        wgsef.value(torch.randn(5, device=device), 1, "channels")
    with pytest.raises(ValueError, match="'filters' needs x with at least 1 dimension"):
        wgsef.value(torch.tensor(1.0), 1, "filters")


def test_group_ids(device):
    x = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match="group-id tensor must have x's shape"):
        wgsef.prox(x, 1, 0.1, torch.zeros(6, 3, dtype=torch.long, device=device))
    with pytest.raises(TypeError, match="group-id tensor must have an integer dtype"):
        wgsef.prox(x, 1, 0.1, torch.zeros(6, 4, device=device))
    ids = torch.zeros(6, 4, dtype=torch.long, device=device)
    ids[2, 1] = 7
    with pytest.raises(ValueError, match=r"groups: group ids must lie in \[0, 3\) \(one weight per group\), got id 7"):
        wgsef.prox(x, 1, 0.1, ids, weights=torch.ones(3, device=device))
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, num_groups = 3\)"):
        torch.ops.wgsef.prox(x, 1, torch.tensor(0.1), torch.ones(3, device=device), ids, 3)
    ids[2, 1] = -1
    with pytest.raises(ValueError, match="groups: group ids must be >= 0, got -1"):
        wgsef.value(x, 1, ids)
    with pytest.raises(ValueError, match="group_ids must lie in"):
        torch.ops.wgsef.value(x, 1, None, ids, 3)
    with pytest.raises(TypeError, match="group_ids must be an int64 tensor"):
        torch.ops.wgsef.value(x, 1, None, ids.int(), 2)
    with pytest.raises(ValueError, match="num_groups must be >= 0"):
        torch.ops.wgsef.value(x, 1, None, ids.abs(), -1)
    with pytest.raises(ValueError, match="x must be a 3-D view"):
        torch.ops.wgsef.prox(x, 1, torch.tensor(0.1))


def test_weights(device):
    x = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match=r"weights must be 1-D with one entry per group \(6\)"):
        wgsef.prox(x, 1, 0.1, weights=torch.ones(5, device=device))
    with pytest.raises(ValueError, match=r"weights must be positive and finite, got weights\[2\] = 0"):
        wgsef.prox(x, 1, 0.1, weights=torch.tensor([1.0, 1, 0, 1, 1, 1], device=device))
    with pytest.raises(ValueError, match="weights must be positive and finite"):
        wgsef.value(x, 1, weights=torch.tensor([1.0, 1, 1, -1, 1, 1], device=device))
    with pytest.raises(ValueError, match="weights must be positive and finite"):
        wgsef.value(x, 1, weights=torch.tensor([1.0, 1, 1, float("nan"), 1, 1], device=device))
    with pytest.raises(TypeError, match="weights must be a floating-point tensor"):
        wgsef.value(x, 1, weights=torch.ones(6, dtype=torch.long, device=device))


def test_devices(device):
    x = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match=r"weights: expected a tensor on x's device .*, got meta"):
        wgsef.value(x, 1, weights=torch.ones(6, device="meta"))
    with pytest.raises(ValueError, match="lam: expected a tensor on the CPU or on x's device"):
        wgsef.prox(x, 1, torch.tensor(0.1, device="meta"))
    with pytest.raises(ValueError, match="groups: group ids are on meta"):
        wgsef.value(x, 1, torch.zeros(6, 4, dtype=torch.long, device="meta"))


def test_failed_calls_leave_input_untouched(device):
    x = torch.randn(6, 4, device=device)
    before = x.clone()
    with pytest.raises(ValueError):
        wgsef.prox_(x, 1, torch.tensor(-1.0))
    with pytest.raises(ValueError):
        wgsef.prox_(x, 1, 0.1, weights=torch.zeros(6, device=device))
    assert torch.equal(x, before)


def test_prox_multi_checks_every_term_before_changing_any_tensor(device):
    xs = [torch.randn(4, 3, device=device), torch.randn(5, 2, device=device)]
    before = [x.clone() for x in xs]
    layout = [1, 4, 3, 1, 5, 2]
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        torch.ops.wgsef.prox_multi_(xs, layout, [], [], [2, 2], torch.tensor([0.1, -1.0]), one, False)
    with pytest.raises(ValueError, match=r"weights must be positive and finite, got weights\[1\]"):
        # weights held on a CUDA device are left to ProxSGD's checks (no read-back)
        bad = torch.tensor([1.0, -2.0, 1.0, 1.0, 1.0])
        host = [x.cpu() for x in xs]
        torch.ops.wgsef.prox_multi_(host, layout, [], [None, bad], [2, 2], torch.tensor(0.1), one, False)
    assert all(torch.equal(x, b) for x, b in zip(xs, before))


def test_prox_multi_checks_every_argument_before_writing(device):
    a = torch.randn(4, 3, device=device)
    b = torch.randn(5, 2, device=device)
    a0, b0 = a.clone(), b.clone()
    lam, lr = torch.tensor(0.5), torch.tensor(1.0)
    bad_ids = torch.full((5, 2), 7, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, num_groups = 3\)"):
        OPS.prox_multi_.default([a, b], [1, 4, 3, 0, 3, 0], [None, bad_ids], [], [2, 1], lam, lr)
    assert torch.equal(a, a0) and torch.equal(b, b0)
    # lam and lr are checked one by one, not through their product
    with pytest.raises(ValueError, match=r"lam must be finite and >= 0, got -0\.5"):
        OPS.prox_multi_.default([a], [1, 4, 3], [], [], [2], torch.tensor(-0.5), torch.tensor(-1.0))
    with pytest.raises(ValueError, match="lr must be finite and >= 0, got -1"):
        OPS.prox_multi_.default([a], [1, 4, 3], [], [], [2], torch.tensor(0.5), torch.tensor(-1.0))
    # a layout whose product overflows int64 is named as such
    with pytest.raises(ValueError, match="overflows int64"):
        OPS.prox_multi_.default([a], [2**62, 4, 1], [], [], [2], lam, lr)
    assert torch.equal(a, a0)


def test_in_place_ops_reject_tensors_that_share_memory(device):
    # each entry is updated through its own pass or copy: the same tensor twice, or
    # overlapping views, would compound or lose an update, so the call raises first
    base = torch.randn(6, 4, dtype=torch.float64, device=device)
    lam, lr = torch.tensor(0.5), torch.tensor(1.0)
    t = base.t()  # non-contiguous
    cases = [
        ([base, base], [1, 6, 4, 1, 6, 4], r"xs\[0\] and xs\[1\] share memory"),
        ([t, t], [1, 4, 6, 1, 4, 6], r"xs\[0\] and xs\[1\] share memory"),
        ([base[:4], base[2:]], [1, 4, 4, 1, 4, 4], r"xs\[0\] and xs\[1\] share memory"),
        # the same strided view twice, sliced separately
        ([base[:, ::2], base[:, ::2]], [1, 6, 2, 1, 6, 2], r"xs\[0\] and xs\[1\] share memory"),
    ]
    for xs, layout, message in cases:
        before = base.clone()
        with pytest.raises(ValueError, match=message):
            OPS.prox_multi_.default(xs, layout, [], [], [1] * len(xs), lam, lr)
        assert torch.equal(base, before)
    coupling = [torch.zeros(6, dtype=torch.long, device=device)] * 2
    with pytest.raises(ValueError, match=r"xs\[0\] and xs\[1\] share memory"):
        OPS.prox_coupled_.default([base, base], [1, 6, 4, 1, 6, 4], [], coupling, [1], None, [1], lam, lr)
    grad = torch.ones_like(base)
    with pytest.raises(ValueError, match=r"params\[0\] and momentum_buffers\[0\] share memory"):
        OPS.sgd_group_squares_.default([base], [grad], [base], [1, 6, 4], 0.1, momentum=0.9)
    # disjoint views of one tensor, row blocks or interleaved columns, are separate
    # tensors: the same as one call each
    for take in ((slice(0, 3), slice(3, 6)), ((slice(None), slice(0, None, 2)), (slice(None), slice(1, None, 2)))):
        x = base.clone()
        parts = [x[i] for i in take]
        layout = [v for p in parts for v in (1, p.shape[0], p[0].numel())]
        OPS.prox_multi_.default(parts, layout, [], [], [1, 2], lam, lr)
        for part, i, k in zip(parts, take, [1, 2]):
            want = base[i].clone()
            OPS.prox_multi_.default([want], [1, want.shape[0], want[0].numel()], [], [], [k], lam, lr)
            assert torch.equal(part, want)


def test_group_counts_and_bad_scalars_get_clear_errors(device):
    x = torch.randn(24, device=device)
    ids = torch.zeros(24, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match=r"num_groups \(2305843009213693952\) exceeds the number of elements \(24\)"):
        OPS.value.default(x, 2, None, ids, 2**61)
    with pytest.raises(TypeError, match="weights: expected a tensor or a sequence of floats"):
        wgsef.prox(torch.randn(8, 4, device=device), 2, 0.1, weights="abc")
    with pytest.raises(TypeError, match="decay: expected a float"):
        wgsef.nm_decay(torch.randn(4, 8, device=device), 2, 4, "abc")


def test_ids_far_beyond_the_tensor_use_memory_for_the_used_groups():
    x = torch.randn(4, 6, dtype=torch.float64)
    big = torch.zeros(4, 6, dtype=torch.long)
    big[:, 3:] = 2**36  # two groups, numbered 0 and 2**36
    small = (big > 0).long()
    torch.testing.assert_close(wgsef.prox(x, 1, 0.3, big), wgsef.prox(x, 1, 0.3, small))
    torch.testing.assert_close(wgsef.value(x, 1, big), wgsef.value(x, 1, small))
    y = x.clone()
    wgsef.prox_(y, 1, 0.3, big)
    torch.testing.assert_close(y, wgsef.prox(x, 1, 0.3, small))
    sparse_ids = small * 30  # ids 0 and 30 of 24 elements: norms come back in place
    norms = wgsef.group_norms(x, sparse_ids)
    assert norms.shape == (31,)
    torch.testing.assert_close(norms[[0, 30]], wgsef.group_norms(x, small))
    assert torch.equal(norms[1:30], torch.zeros(29, dtype=torch.float64))
