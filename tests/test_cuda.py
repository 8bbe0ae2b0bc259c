"""CUDA kernels against the CPU kernels (which the rest of the suite checks
against the float64 reference). Skipped without a GPU; run with pytest -m cuda."""

import copy

import pytest
import torch

import wgsef

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = [
    ((12, 5, 3, 3), "filters"),
    ((12, 5, 3, 3), "channels"),
    ((12, 5, 3, 3), "shapes"),
    ((20, 30), "layer"),
    ((7, 9), "elements"),
    ((24, 16), ("heads", 6)),
]
TOL = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_ops_match_cpu(shape, groups, dtype):
    x = torch.randn(shape, dtype=torch.float64)
    x[1] = 0
    x = x.to(dtype)
    xc = x.cuda()
    rtol, atol = TOL[dtype]
    m = wgsef.num_groups(x, groups)
    for k in sorted({0, 1, max(1, m // 3), m, m + 2}):
        for lam in (0.0, 0.05, 5.0):
            cpu = wgsef.prox(x, k, lam, groups)
            gpu = wgsef.prox(xc, k, lam, groups)
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=rtol, atol=atol)
            inplace = xc.clone()
            wgsef.prox_(inplace, k, torch.tensor(lam, dtype=torch.float64, device="cuda"), groups)
            torch.testing.assert_close(inplace, gpu, rtol=0, atol=0)
        v_cpu, v_gpu = wgsef.value(x, k, groups), wgsef.value(xc, k, groups)
        torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=max(rtol, 1e-6), atol=atol)
    torch.testing.assert_close(
        wgsef.group_norms(xc, groups).cpu(), wgsef.group_norms(x, groups), rtol=max(rtol, 1e-6), atol=atol
    )


def test_value_gradient_matches_cpu():
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    xc = x.detach().cuda().requires_grad_(True)
    wgsef.value(x, 3).backward()
    wgsef.value(xc, 3).backward()
    torch.testing.assert_close(xc.grad.cpu(), x.grad)


@pytest.mark.parametrize("shared", [False, True])
def test_prox_multi_matches_cpu_and_captures_in_a_cuda_graph(shared):
    tensors = [torch.randn(16, 8, 3, 3), torch.randn(32, 64)]
    layout = [1, 16, 72, 1, 32, 64]
    k = [10] if shared else [4, 8]
    lam = torch.tensor([0.3] if shared else [0.3, 0.1], dtype=torch.float64)
    scale = torch.tensor(0.5, dtype=torch.float64)
    cpu = [t.clone() for t in tensors]
    torch.ops.wgsef.prox_multi_(cpu, layout, [], [], k, lam, scale, shared)
    gpu = [t.cuda() for t in tensors]
    lam_d, scale_d = lam.cuda(), scale.cuda()
    torch.ops.wgsef.prox_multi_(gpu, layout, [], [], k, lam_d, scale_d, shared)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    # no host synchronisation inside: the call can be captured and replayed
    static = [t.cuda() for t in tensors]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.wgsef.prox_multi_([s.clone() for s in static], layout, [], [], k, lam_d, scale_d, shared)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.wgsef.prox_multi_(static, layout, [], [], k, lam_d, scale_d, shared)
    for s, t in zip(static, tensors):
        s.copy_(t.cuda())
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(static, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (3, 8), (1, 32), (16, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_nm_matches_cpu(n, m, dtype):
    w = torch.randint(-4, 5, (6, 2 * m)).to(dtype)  # ties
    w[0, 0] = float("nan")
    assert torch.equal(wgsef.nm_mask(w.cuda(), n, m).cpu(), wgsef.nm_mask(w, n, m))
    conv = torch.randn(8, 2 * m, 3, 3).to(dtype)
    assert torch.equal(wgsef.nm_mask(conv.cuda(), n, m, 1).cpu(), wgsef.nm_mask(conv, n, m, 1))
    out = wgsef.nm_decay(w.cuda(), n, m, 0.25).cpu()
    torch.testing.assert_close(out, wgsef.nm_decay(w, n, m, 0.25), equal_nan=True)


def test_proxsgd_step_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    )
    gpu_model = copy.deepcopy(model).cuda()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for m_, dev in ((model, "cpu"), (gpu_model, "cuda")):
        opt = wgsef.ProxSGD(wgsef.regularized_param_groups(m_, k=0.5, lam=0.5), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m_(x.to(dev)), y.to(dev)).backward()
            opt.step()
    for a, b in zip(gpu_model.parameters(), model.parameters()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_capturable_proxsgd_step_replays_in_a_cuda_graph(shared):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    ).cuda()
    eager = copy.deepcopy(model)
    lr = torch.tensor(0.1, device="cuda")
    opts = [
        wgsef.ProxSGD(
            wgsef.regularized_param_groups(m_, k=0.5, lam=0.5, shared_k=shared), lr=lr_, momentum=0.9, capturable=True
        )
        for m_, lr_ in ((model, lr), (eager, 0.1))
    ]
    x, y = torch.randn(16, 3, 8, 8, device="cuda"), torch.randint(0, 10, (16,), device="cuda")

    def step(m_, opt):
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(m_(x), y).backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: momentum buffers and device copies
        step(model, opts[0])
    torch.cuda.current_stream().wait_stream(side)
    step(eager, opts[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(model, opts[0])
    for _ in range(3):
        graph.replay()
        step(eager, opts[1])
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_prox_multi_many_tensors_mixed_dtypes_and_large_terms():
    # more tensors than one launch's table (128), three dtypes interleaved, a term
    # of 5000 groups (past the 4096 held in registers), groups of every size
    # class (a thread per group below 32 elements, a warp above), odd inner sizes
    g = torch.Generator().manual_seed(3)
    shapes = [(1, 5000, 8), (3, 7, 5), (1, 64, 33), (2, 9, 1), (2, 16, 64)] * 30
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    tensors = [torch.randn(s, generator=g).to(dtypes[i % 3]) for i, s in enumerate(shapes)]
    layout = [v for s in shapes for v in s]
    weights = [
        torch.rand(s[1], generator=g, dtype=torch.float64) + 0.5 if i % 5 == 1 else None for i, s in enumerate(shapes)
    ]
    for shared in (False, True):
        k = [3000] if shared else [max(1, s[1] // 2) for s in shapes]
        lam = torch.tensor(
            [0.05] if shared else [0.05 + 0.01 * (i % 5) for i in range(len(shapes))], dtype=torch.float64
        )
        scale = torch.tensor(0.7, dtype=torch.float64)
        cpu = [t.clone() for t in tensors]
        torch.ops.wgsef.prox_multi_(cpu, layout, [], weights, k, lam, scale, shared)
        gpu = [t.cuda() for t in tensors]
        torch.ops.wgsef.prox_multi_(
            gpu, layout, [], [None if w is None else w.cuda() for w in weights], k, lam.cuda(), scale.cuda(), shared
        )
        for a, b in zip(gpu, cpu):
            rtol, atol = TOL[b.dtype]
            # a shared term's root moves with every tensor's norms: the float32 and
            # bfloat16 norms (summed in another order on each device, ~1e-7 apart)
            # shift the float64 tensors' outputs by up to ~2e-11
            if shared:
                rtol, atol = max(rtol, 1e-7), max(atol, 1e-10)
            torch.testing.assert_close(a.cpu(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("groups", [10, 5000, 20000])
def test_large_group_counts_match_cpu(groups):
    x = torch.randn(groups, 12, dtype=torch.float64) * torch.logspace(-3, 3, groups, dtype=torch.float64)[:, None]
    xc = x.cuda()
    for k in (1, groups // 3, groups - 1):
        torch.testing.assert_close(wgsef.prox(xc, k, 0.3).cpu(), wgsef.prox(x, k, 0.3), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(wgsef.value(xc, k).cpu(), wgsef.value(x, k), rtol=1e-9, atol=0)
        a = x.clone().requires_grad_(True)
        b = xc.clone().requires_grad_(True)
        wgsef.value(a, k).backward()
        wgsef.value(b, k).backward()
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-9, atol=1e-12)


def test_vector_and_scalar_paths_of_the_streaming_kernels():
    # 16-byte vectors when the inner size is a multiple of the width and the
    # base is aligned; element loops otherwise (odd inner size, offset views)
    base = torch.randn(64 * 1024 + 3)
    for offset, shape in ((0, (64, 1024)), (1, (64, 1024)), (3, (1024, 64)), (0, (256, 255))):
        n = shape[0] * shape[1]
        x = base[offset : offset + n].view(shape)
        for dtype in (torch.float32, torch.float16):
            xd = x.to(dtype)
            torch.testing.assert_close(
                wgsef.prox(xd.cuda(), shape[0] // 2, 0.01).cpu(),
                wgsef.prox(xd, shape[0] // 2, 0.01),
                **dict(zip(("rtol", "atol"), TOL[dtype])),
            )
            torch.testing.assert_close(
                wgsef.group_norms(xd.cuda(), "channels").cpu(), wgsef.group_norms(xd, "channels"), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("n,m", [(2, 4), (1, 8), (5, 8), (3, 16), (1, 32), (9, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nm_contiguous_kernel_and_its_unaligned_fallback(n, m, dtype):
    w = torch.randn(64, 4 * m + 1).to(dtype)
    w[:, :8] = torch.round(w[:, :8])  # ties
    for view in (w[:, : 4 * m], w[:, 1:]):  # aligned rows, then a one-element offset
        wc = view.contiguous()
        expect = wgsef.nm_mask(wc, n, m)
        assert torch.equal(wgsef.nm_mask(wc.cuda(), n, m).cpu(), expect)
        offset = torch.empty(wc.numel() + 1, dtype=dtype, device="cuda")[1:].view(wc.shape).copy_(wc)
        assert torch.equal(wgsef.nm_mask(offset, n, m).cpu(), expect)
        torch.testing.assert_close(wgsef.nm_decay(offset, n, m, 0.3).cpu(), wgsef.nm_decay(wc, n, m, 0.3))
