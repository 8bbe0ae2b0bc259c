"""sgd_group_squares_: torch.optim.SGD's update fused with the squared group norms
of the result, against a float64 reference and torch.optim.SGD itself."""

import itertools

import pytest
import torch

import wgsef.ops as ops
from tests import reference as ref

OPTIONS = [  # (weight_decay, momentum, dampening, nesterov, maximize)
    (0.0, 0.9, 0.0, False, False),
    (0.01, 0.9, 0.1, False, True),
    (0.05, 0.8, 0.0, True, False),
    (0.0, 0.0, 0.0, False, False),
    (0.1, 0.0, 0.0, False, True),
]

# (shape, layout): filters, channels (outer > 1 and inner > 1), rows of single
# elements (inner 1, outer > 1), a few large groups, elements, and no elements;
# large enough that two threads split each branch of the kernel
CASES = [
    ((64, 32, 3, 3), (1, 64, 288)),
    ((40, 24, 3, 3), (40, 24, 9)),
    ((120, 700), (120, 700, 1)),
    ((3, 40000), (1, 3, 40000)),
    ((70000,), (1, 70000, 1)),
    ((0, 5), (0, 5, 1)),
]


def _tensors(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device) for _ in range(3)]


def _call(params, grads, bufs, layouts, options, lr=0.05):
    wd, momentum, dampening, nesterov, maximize = options
    return ops.sgd_group_squares_(
        params,
        grads,
        bufs if momentum else [],
        [v for layout in layouts for v in layout],
        lr,
        wd,
        momentum,
        dampening,
        nesterov,
        maximize,
    )


@pytest.mark.parametrize("options", OPTIONS)
def test_float64_matches_the_reference(options, device):
    data = [_tensors(shape, torch.float64, device, i) for i, (shape, _) in enumerate(CASES)]
    params, grads, bufs = ([d[j].clone() for d in data] for j in range(3))
    layouts = [layout for _, layout in CASES]
    squares = _call(params, grads, bufs, layouts, options)
    want_sq = []
    for (p0, g0, b0), p, b, layout in zip(data, params, bufs, layouts):
        want_p, want_b = ref.sgd_step(p0.cpu().numpy(), g0.cpu().numpy(), b0.cpu().numpy(), 0.05, *options)
        torch.testing.assert_close(p.cpu(), torch.from_numpy(want_p), rtol=1e-13, atol=1e-15)
        if options[1]:
            torch.testing.assert_close(b.cpu(), torch.from_numpy(want_b), rtol=1e-13, atol=1e-15)
        else:
            assert torch.equal(b, b0)  # no momentum: the buffers are not arguments
        want_sq.append(ref.strided_sq_norms(want_p, *layout))
    assert squares.dtype == torch.float64 and squares.device == params[0].device
    torch.testing.assert_close(squares.cpu(), torch.from_numpy(ref.np.concatenate(want_sq)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_matches_torch_sgd(dtype, device):
    # the params and buffers torch.optim.SGD computes (to rounding), and squares that
    # are those of the params the op wrote, summed in float64
    # torch rounds momentum * buf before it adds the gradient; the op rounds once: two
    # units in the last place of the values' magnitude (up to ~4) apart at most
    rtol, atol = {torch.float32: (1e-6, 1e-6), torch.bfloat16: (1.6e-2, 0.0625), torch.float16: (2e-3, 8e-3)}[dtype]
    for options in OPTIONS:
        wd, momentum, dampening, nesterov, maximize = options
        data = [_tensors(shape, dtype, device, i) for i, (shape, _) in enumerate(CASES)]
        params, grads, bufs = ([d[j].clone() for d in data] for j in range(3))
        layouts = [layout for _, layout in CASES]
        squares = _call(params, grads, bufs, layouts, options)
        torch_params = [torch.nn.Parameter(d[0].clone()) for d in data]
        sgd = torch.optim.SGD(
            torch_params,
            lr=0.05,
            momentum=momentum,
            dampening=dampening,
            weight_decay=wd,
            nesterov=nesterov,
            maximize=maximize,
            foreach=False,
        )
        for tp, d in zip(torch_params, data):
            tp.grad = d[1].clone()
            if momentum:
                sgd.state[tp]["momentum_buffer"] = d[2].clone()
        sgd.step()
        for p, b, tp in zip(params, bufs, torch_params):
            torch.testing.assert_close(p, tp.detach(), rtol=rtol, atol=atol)
            if momentum:
                torch.testing.assert_close(b, sgd.state[tp]["momentum_buffer"], rtol=rtol, atol=atol)
        want = ref.np.concatenate(
            [ref.strided_sq_norms(p.double().cpu().numpy(), *lay) for p, lay in zip(params, layouts)]
        )
        torch.testing.assert_close(squares.cpu(), torch.from_numpy(want), rtol=1e-5, atol=0)


def test_strided_inputs_are_updated_in_place(device):
    base = _tensors((12, 30), torch.float64, device, 3)
    params, grads, bufs = ([t.t()] for t in (base[0].clone(), base[1], base[2].clone()))  # (30, 12), not contiguous
    want_p, want_b = ref.sgd_step(
        base[0].t().cpu().numpy(), base[1].t().cpu().numpy(), base[2].t().cpu().numpy(), 0.1, 0.0, 0.9
    )
    squares = ops.sgd_group_squares_(params, grads, bufs, [1, 30, 12], 0.1, 0.0, 0.9)
    torch.testing.assert_close(params[0].cpu(), torch.from_numpy(want_p), rtol=1e-13, atol=0)
    torch.testing.assert_close(bufs[0].cpu(), torch.from_numpy(want_b), rtol=1e-13, atol=0)
    torch.testing.assert_close(squares.cpu(), torch.from_numpy((want_p**2).sum(1)), rtol=1e-12, atol=0)


def test_properties(device):
    # lr = 0 leaves params alone and returns their squared group norms; each group's
    # squares are those of its own elements, whatever else the call holds
    p, g, b = _tensors((16, 8, 3, 3), torch.float64, device, 5)
    before = p.clone()
    squares = ops.sgd_group_squares_([p], [g], [b.clone()], [1, 16, 72], 0.0, 0.0, 0.9)
    assert torch.equal(p, before)
    torch.testing.assert_close(squares, ops.group_norms(p.view(1, 16, 72)).square(), rtol=1e-14, atol=0)
    alone = ops.sgd_group_squares_([p.clone()], [g], [b.clone()], [16, 8, 9], 0.1, 0.0, 0.9)
    other = _tensors((5, 7), torch.float64, device, 6)
    both = ops.sgd_group_squares_(
        [p.clone(), other[0]], [g, other[1]], [b.clone(), other[2]], [16, 8, 9, 1, 5, 7], 0.1, 0.0, 0.9
    )
    assert torch.equal(both[:8], alone)
    assert (both >= 0).all()


def test_bad_arguments_raise_and_write_nothing(device):
    p, g, b = _tensors((4, 6), torch.float64, device, 7)
    p0, b0 = p.clone(), b.clone()
    layout = [1, 4, 6]
    cases = [
        (dict(grads=[]), ValueError, "grads must have one entry per param"),
        (dict(bufs=[]), ValueError, "momentum_buffers must have 1 entries"),
        (dict(momentum=0.0), ValueError, "momentum_buffers must have 0 entries"),
        (dict(grads=[g[:2]]), ValueError, r"grads\[0\] must be a dense tensor like params\[0\]"),
        (dict(bufs=[b.float()]), ValueError, r"momentum_buffers\[0\] must be a dense tensor like"),
        (dict(layout=[1, 5, 6]), ValueError, r"does not cover the 24 elements of params\[0\]"),
        (dict(lr=-0.1), ValueError, "lr must be finite and >= 0"),
        (dict(momentum=-0.5), ValueError, "momentum must be finite and >= 0"),
        (dict(weight_decay=float("nan")), ValueError, "weight_decay must be finite and >= 0"),
        (dict(nesterov=True, dampening=0.1), ValueError, "nesterov needs momentum > 0 and dampening = 0"),
    ]
    for change, error, message in cases:
        args = dict(grads=[g], bufs=[b], layout=layout, lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0)
        args |= {k: v for k, v in change.items() if k != "nesterov"}
        with pytest.raises(error, match=message):
            ops.sgd_group_squares_(
                [p],
                args["grads"],
                args["bufs"],
                args["layout"],
                args["lr"],
                args["weight_decay"],
                args["momentum"],
                args["dampening"],
                change.get("nesterov", False),
            )
        assert torch.equal(p, p0) and torch.equal(b, b0), change
    with pytest.raises(TypeError, match=r"params\[0\] must be a float16"):
        ops.sgd_group_squares_([p.long()], [g.long()], [b.long()], layout, 0.1, 0.0, 0.9)
    empty = [torch.zeros(0, 3, dtype=torch.float64, device=device) for _ in range(2)]
    with pytest.raises(ValueError, match="layout's group counts add up to more than int64 holds"):
        ops.sgd_group_squares_(empty, empty, [], [0, 2**62, 1, 0, 2**62, 1], 0.1)


def test_every_option_combination_against_the_reference():
    # the eight kernel variants (weight decay x momentum x nesterov) and maximize, one small tensor each
    p, g, b = _tensors((6, 5), torch.float64, "cpu", 8)
    for wd, momentum, nesterov, maximize in itertools.product([0.0, 0.2], [0.0, 0.7], [False, True], [False, True]):
        if nesterov and not momentum:
            continue
        options = (wd, momentum, 0.0, nesterov, maximize)
        pp, bb = p.clone(), b.clone()
        squares = _call([pp], [g], [bb], [(6, 5, 1)], options, lr=0.3)
        want_p, want_b = ref.sgd_step(p.numpy(), g.numpy(), b.numpy(), 0.3, *options)
        torch.testing.assert_close(pp, torch.from_numpy(want_p), rtol=1e-14, atol=1e-16)
        if momentum:
            torch.testing.assert_close(bb, torch.from_numpy(want_b), rtol=1e-14, atol=1e-16)
        torch.testing.assert_close(squares, torch.from_numpy(ref.strided_sq_norms(want_p, 6, 5, 1)), rtol=1e-13, atol=0)


def test_autograd_meta_and_overlapping_arguments(device):
    p, g, b = _tensors((4, 6), torch.float64, device, 9)
    # in grad mode a param that requires grad raises; under no_grad the versions move,
    # so a backward through a value saved before the step raises
    leaf = p.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"sgd_group_squares_: params requires grad and grad mode is on"):
        ops.sgd_group_squares_([leaf], [g], [b.clone()], [1, 4, 6], 0.1, 0.0, 0.9)
    loss = (leaf * leaf).sum()
    with torch.no_grad():
        ops.sgd_group_squares_([leaf], [g], [b.clone()], [1, 4, 6], 0.1, 0.0, 0.9)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # a meta tensor beside real ones raises instead of reaching the fake kernel
    with pytest.raises(ValueError, match="params is on the meta device"):
        ops.sgd_group_squares_([p, torch.empty(3, device="meta")], [g, g[0, :3]], [], [1, 4, 6, 1, 3, 1], 0.1)
    # expanded params or buffers (elements sharing memory) raise before anything is written
    p0 = p.clone()
    row = torch.randn(6, dtype=torch.float64, device=device)
    for params, bufs, name in (
        ([p, row.expand(4, 6)], [b, b.clone()], r"params\[1\] has elements that share memory"),
        ([p, p0.clone()], [b, row.expand(4, 6)], r"momentum_buffers\[1\] has elements that share memory"),
    ):
        with pytest.raises(ValueError, match=name):
            ops.sgd_group_squares_(params, [g, g], bufs, [1, 4, 6, 1, 4, 6], 0.1, 0.0, 0.9)
        assert torch.equal(p, p0)
