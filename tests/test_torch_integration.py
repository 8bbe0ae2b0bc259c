"""opcheck on every op, torch.compile with fullgraph, fake-tensor shapes."""

import pytest
import torch
from torch.library import opcheck

import wgsef
from tests import reference as ref

OPS = torch.ops.wgsef


def samples(device="cpu"):
    x = torch.randn(3, 5, 4, dtype=torch.float64, device=device)
    xg = x.clone().requires_grad_(True)
    ids = torch.randint(0, 6, (4, 5), device=device)
    y = torch.randn(4, 5, device=device)
    lam = torch.tensor(0.3, device=device)
    w = torch.rand(5, dtype=torch.float64, device=device) + 0.5
    return [
        (OPS.group_norms.default, (x,), {}),
        (OPS.group_norms.default, (y, ids, 6), {}),
        (OPS.value.default, (x, 2), {}),
        (OPS.value.default, (xg, 2, w), {}),
        (OPS.value.default, (y, 2, None, ids, 6), {}),
        (OPS.value_backward.default, (torch.tensor(1.5, dtype=torch.float64, device=device), x, 2, w), {}),
        (OPS.prox.default, (x, 2, lam, w), {}),
        (OPS.prox.default, (y, 9, lam, None, ids, 6), {}),
        (OPS.prox_.default, (x.clone(), 1, lam), {}),
        (OPS.prox_.default, (y.clone(), 2, lam, None, ids, 6), {}),
        (
            OPS.prox_multi_.default,
            ([x.clone(), y.clone()], [3, 5, 4, 0, 6, 0], [None, ids], [w, None], [2, 3], lam, lam),
            {},
        ),
        (
            OPS.prox_multi_.default,
            ([x.clone(), y.clone()], [1, 3, 20, 4, 5, 1], [], [], [4], torch.tensor([0.5], device=device), lam, True),
            {},
        ),
        (
            OPS.sgd_group_squares_.default,
            ([x.clone(), y.clone()], [x.flip(0), y.flip(0)], [x.clone(), y.clone()], [3, 5, 4, 4, 5, 1], 0.1),
            {"weight_decay": 0.01, "momentum": 0.9, "nesterov": True},
        ),
        (OPS.sgd_group_squares_.default, ([y.clone()], [y.flip(1)], [], [1, 4, 5], 0.1), {"maximize": True}),
    ]


@pytest.mark.parametrize("case", range(len(samples())))
def test_opcheck(case, device):
    op, args, kwargs = samples(device)[case]
    opcheck(op, args, kwargs)


def test_opcheck_prox_elements():
    # a CPU kernel only: the sharded prox uses it for CPU tensors
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(4, 5)
    lam = torch.tensor(0.3)
    args = ([x, y], [None, y.reshape(-1).abs() + 0.5], [True, False], [7], lam, lam, True, [], 0, 1)
    opcheck(OPS.prox_elements_.default, args)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def step(w, lam):
        reg = wgsef.value(w, 3, "channels")
        z = wgsef.prox(w, 3, lam, "filters")
        wgsef.prox_(w, 2, lam, "shapes")
        return reg, z

    w = torch.randn(8, 6, 3, 3)
    lam = torch.tensor(0.05)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    w_eager, w_comp = w.clone(), w.clone()
    r1, z1 = step(w_eager, lam)
    r2, z2 = compiled(w_comp, lam)
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(w_eager, w_comp)


def test_compile_inductor_value_grad_and_lam_changes_do_not_recompile():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()

    def loss_fn(w):
        return 0.5 * (w**2).sum() + wgsef.value(w, 2)

    @torch.no_grad()
    def prox_step(w, lam):
        wgsef.prox_(w, 2, lam)

    loss_c = torch.compile(loss_fn, fullgraph=True)
    prox_c = torch.compile(prox_step, fullgraph=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.01, dtype=torch.float64)
    for step in range(4):
        lam.fill_(0.01 * (step + 1))
        start = w.detach().clone()
        loss_c(w).backward()
        w_eager = start.clone().requires_grad_(True)
        loss_fn(w_eager).backward()
        torch.testing.assert_close(w.grad, w_eager.grad)
        prox_c(w, lam)
        expect = ref.prox(start, 2, float(lam))
        torch.testing.assert_close(w.detach(), torch.from_numpy(expect), rtol=1e-9, atol=1e-12)
        w.grad = None
    assert counters["stats"]["unique_graphs"] == 2  # one per compiled function, none per lam


def test_a_meta_argument_beside_real_tensors_raises_instead_of_returning_garbage():
    x = torch.randn(3, 4, 2)
    meta_scalar = torch.empty((), device="meta")
    with pytest.raises(ValueError, match="lam is on the meta device while x is on cpu"):
        OPS.prox.default(x, 2, meta_scalar)
    before = x.clone()
    with pytest.raises(ValueError, match="lam is on the meta device"):
        OPS.prox_.default(x, 2, meta_scalar)
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="weights is on the meta device"):
        OPS.value.default(x, 2, torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="lr is on the meta device while xs is on cpu"):
        OPS.prox_multi_.default([x], [3, 4, 2], [], [], [2], torch.tensor(0.5), meta_scalar)
    with pytest.raises(ValueError, match="decay is on the meta device while w is on cpu"):
        wgsef.nm_decay(torch.randn(4, 8), 2, 4, torch.tensor(0.5, device="meta"))
    # an all-meta call is shape propagation, as before
    assert wgsef.prox(torch.empty(8, 4, device="meta"), 2, 0.5).device.type == "meta"


def test_float_lam_made_under_meta_or_fake_mode_does_not_leak_into_real_calls():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(8, 4, dtype=torch.float64)
    with torch.device("meta"):
        wgsef.prox(torch.empty(8, 4), 2, 0.2468)
    torch.testing.assert_close(wgsef.prox(x, 2, 0.2468), torch.from_numpy(ref.prox(x, 2, 0.2468)))
    with FakeTensorMode():
        wgsef.prox(torch.empty(8, 4), 2, 0.1357)
    torch.testing.assert_close(wgsef.prox(x, 2, 0.1357), torch.from_numpy(ref.prox(x, 2, 0.1357)))
    y = x.clone()
    wgsef.prox_(y, 2, 0.1357)
    torch.testing.assert_close(y, torch.from_numpy(ref.prox(x, 2, 0.1357)))


def test_compile_fullgraph_takes_a_new_float_lam_on_every_call():
    torch._dynamo.reset()
    x = torch.randn(8, 4, dtype=torch.float64)
    compiled = torch.compile(lambda w, lam: wgsef.prox(w, 2, lam), fullgraph=True, backend="aot_eager")
    for lam in (0.1, 0.2, 0.3):
        torch.testing.assert_close(compiled(x, lam), torch.from_numpy(ref.prox(x, 2, lam)))


def test_in_place_prox_refuses_a_graph_and_marks_what_it_wrote():
    a = torch.randn(6, 4, requires_grad=True)
    b = a * 2
    with pytest.raises(RuntimeError, match=r"wgsef\.prox_: x requires grad and grad mode is on"):
        wgsef.prox_(b, 2, 0.3)
    with pytest.raises(RuntimeError, match=r"wgsef\.prox_multi_: xs requires grad"):
        OPS.prox_multi_.default([b], [1, 6, 4], [], [], [2], torch.tensor(0.3), torch.tensor(1.0))
    # under no_grad it runs; a backward through a value saved before it then raises
    squared = b * b
    with torch.no_grad():
        wgsef.prox_(b, 2, 0.3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        squared.sum().backward()


def test_in_place_prox_in_inference_mode_marks_what_it_wrote():
    p = torch.randn(4, 5, 3, requires_grad=True)
    h = p * 2
    loss = (h**2).sum()
    with torch.inference_mode():
        OPS.prox_.default(h, 1, torch.tensor(0.1))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
