"""Where the time of the CUDA targets goes: the kernels of one fc6 prox, one
ResNet-50 prox_multi_ and one ProxSGD step (vs SGD), from torch.profiler, next
to the wall time per call. For the GPU check (scripts/gpu_check.sh)."""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import wgsef
from wgsef.model_shapes import MODELS


def wall_us(fn, calls=50):
    fn()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - begin) / calls * 1e6


def kernels(name, fn, calls=20):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [
        (e.key, e.device_time_total / calls, e.count // calls) for e in prof.key_averages() if e.device_time_total > 0
    ]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"\n{name}: wall {wall_us(fn):.1f} us per call, kernels {total:.1f} us")
    for key, us, count in rows[:8]:
        print(f"  {us:8.1f} us  x{count:<3d} {key[:90]}")


def main():
    fc6 = torch.randn(4096, 25088, device="cuda")
    kernels("fc6 prox", lambda: wgsef.prox(fc6, 1024, 1e-3))
    kernels("fc6 clone", lambda: fc6.clone())
    ps = [torch.randn(shape, device="cuda") for _, shape in MODELS["resnet50"]()]
    layout = [v for p in ps for v in (1, p.shape[0], p[0].numel())]
    ks = [max(1, p.shape[0] // 2) for p in ps]
    lam, one = torch.tensor(1e-3, dtype=torch.float64), torch.tensor(1.0)
    kernels("resnet50 prox_multi_", lambda: wgsef.ops.prox_multi_(ps, layout, [], [], ks, lam, one, False))
    kernels(
        "resnet50 prox_multi_ global k", lambda: wgsef.ops.prox_multi_(ps, layout, [], [], [sum(ks)], lam, one, True)
    )

    def params():
        out = []
        for _, shape in MODELS["resnet50"]():
            if len(shape) == 4:
                p = torch.nn.Parameter(torch.randn(shape, device="cuda") * 0.05)
                p.grad = torch.randn(shape, device="cuda") * 1e-3
                out.append(p)
        return out

    for how in (dict(foreach=True), dict(fused=True)):
        kernels(f"SGD step {how}", torch.optim.SGD(params(), lr=0.01, momentum=0.9, **how).step)
        kernels(f"ProxSGD step {how}", wgsef.ProxSGD(params(), lr=0.01, momentum=0.9, k=0.5, lam=0.1, **how).step)
    opt = wgsef.ProxSGD(params(), lr=0.01, momentum=0.9, k=0.5, lam=0.1, capturable=True)
    kernels("ProxSGD step (capturable)", opt.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
