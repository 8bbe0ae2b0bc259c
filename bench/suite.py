"""The wgsef benchmark suite: every op and the optimizer against the baselines a
user would otherwise use, measured in one run on the same tensors.

    python bench/suite.py [--quick] [--device all|cpu|cuda] [--out bench/results]   (or: make bench)

Writes <out>/suite_<device>.csv and .md (header: machine, torch, device, threads,
commit) and, with matplotlib installed, suite_<device>.png (time per element
against size). Baselines: clone() and an in-place mul_() of the same memory (the
floors), the pure-PyTorch ops of bench/baselines.py (checked equal to the native
ones first), torch.optim.SGD(momentum=0.9, foreach=True), also under FSDP2 on two
CPU ranks (bench/bench_distributed.py). Figures: median and
interquartile range, of torch.utils.benchmark on the CPU and of CUDA events
around blocks of calls on CUDA (bench/common.py).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import baselines as torch_ops
import torch
from common import header, timed, write_results
from torch.utils._python_dispatch import TorchDispatchMode

import wgsef
from wgsef.model_shapes import MODELS

LAM = 1e-3  # prox strength lr * lambda of a typical training step


class AllocatedBytes(TorchDispatchMode):
    """Bytes of every fresh tensor the ops return while active (CPU has no allocator stats)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        inputs = {a.untyped_storage().data_ptr() for a in leaves if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.total += t.untyped_storage().nbytes()
        return out


class Suite:
    def __init__(self, device: torch.device, min_run: float):
        self.device, self.min_run, self.rows = device, min_run, []

    def case(
        self, group: str, workload: str, op: str, elements: int, impls: dict[str, Callable[[], object]], **extra
    ) -> dict[str, float]:
        times = {}
        for impl, fn in impls.items():
            fn()  # warm up (and build any cached state)
            median, iqr = timed(fn, self.min_run, self.device)
            times[impl] = median
            self.rows.append(
                {
                    "group": group,
                    "workload": workload,
                    "op": op,
                    "impl": impl,
                    "elements": elements,
                    "median_ms": median * 1e3,
                    "iqr_ms": iqr * 1e3,
                    "ns_per_element": median * 1e9 / max(elements, 1),
                    **extra,
                }
            )
        shown = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items())
        print(f"{group:>9} {workload:<22} {op:<14} {shown}")
        return times

    def tensor(self, shape) -> torch.Tensor:
        return torch.randn(shape, device=self.device)


def single_tensor_cases(s: Suite, group: str, workload: str, x: torch.Tensor, k: int) -> None:
    n = x.numel()
    assert torch.allclose(wgsef.prox(x, k, LAM), torch_ops.prox(x, k, LAM), rtol=1e-4, atol=1e-6)
    y, z = x.clone(), x.clone()
    s.case(
        group,
        workload,
        "value",
        n,
        {"wgsef": lambda: wgsef.value(x, k), "pytorch": lambda: torch_ops.value(x, k), "mul_": lambda: y.mul_(1.0)},
    )
    s.case(
        group,
        workload,
        "prox",
        n,
        {
            "wgsef": lambda: wgsef.prox(x, k, LAM),
            "pytorch": lambda: torch_ops.prox(x, k, LAM),
            "clone": lambda: x.clone(),
        },
    )
    s.case(
        group,
        workload,
        "prox_",
        n,
        {
            "wgsef": lambda: wgsef.prox_(y, k, LAM),
            "pytorch": lambda: torch_ops.prox_(z, k, LAM),
            "mul_": lambda: y.mul_(1.0),
        },
    )


def model_cases(s: Suite, name: str) -> None:
    shapes = [shape for _, shape in MODELS[name]()]
    ps = [s.tensor(shape) for shape in shapes]
    n = sum(p.numel() for p in ps)
    layout = [v for p in ps for v in (1, p.shape[0], p[0].numel())]
    ks = [max(1, p.shape[0] // 2) for p in ps]
    lam = torch.tensor(LAM, dtype=torch.float64)
    one = torch.tensor(1.0)
    refs = [p.clone() for p in ps]
    for p, k in zip(refs, ks):
        torch_ops.prox_(p, k, LAM)
    check = [p.clone() for p in ps]
    wgsef.ops.prox_multi_(check, layout, [], [], ks, lam, one, False)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(check, refs))

    def pytorch_loop():
        for p, k in zip(ps, ks):
            torch_ops.prox_(p, k, LAM)

    s.case(
        "model",
        name,
        "prox_multi_",
        n,
        {
            "wgsef": lambda: wgsef.ops.prox_multi_(ps, layout, [], [], ks, lam, one, False),
            "pytorch": pytorch_loop,
            "mul_": lambda: torch._foreach_mul_(ps, 1.0),
        },
        tensors=len(ps),
    )
    total_k = sum(ks)
    s.case(
        "model",
        name,
        "prox_multi_ global k",
        n,
        {
            "wgsef": lambda: wgsef.ops.prox_multi_(ps, layout, [], [], [total_k], lam, one, True),
            "mul_": lambda: torch._foreach_mul_(ps, 1.0),
        },
        tensors=len(ps),
    )


def coupled_cases(s: Suite) -> None:
    """The coupled prox over every coupled channel group of torchvision's ResNet-50
    (conv, batch-norm and fc tensors) against a foreach mul_ of the same tensors, and
    the time coupled_param_groups takes to find the groups (trace and check)."""
    try:
        import torch_pruning  # noqa: F401
        import torchvision
    except (ImportError, RuntimeError) as err:
        print(f"   coupled skipped: {err} (needs torchvision and wgsef[prune])")
        return
    model = torchvision.models.resnet50().to(s.device)
    x = torch.randn(1, 3, 224, 224, device=s.device)
    start = time.perf_counter()
    group = wgsef.coupled_param_groups(model, x, k=0.5, lam=LAM)[0]
    seconds = time.perf_counter() - start
    s.rows.append(
        {
            "group": "coupled",
            "workload": "resnet50",
            "op": "coupled_param_groups",
            "impl": "wgsef",
            "elements": sum(group["term_sizes"]),
            "median_ms": seconds * 1e3,
            "iqr_ms": 0.0,
            "ns_per_element": 0.0,
        }
    )
    print(f"{'coupled':>9} {'resnet50':<22} coupled_param_groups {seconds:.2f} s (one run)")
    ps = [p.detach().clone() for p in group["params"]]
    layout = [
        v
        for p, (_, d) in zip(ps, group["groups"])
        for v in (math.prod(p.shape[:d]), p.shape[d], math.prod(p.shape[d + 1 :]))
    ]
    sizes = group["term_sizes"]
    ks = [max(1, n // 2) for n in sizes]
    lam = torch.tensor(LAM, dtype=torch.float64)
    one = torch.tensor(1.0)
    s.case(
        "coupled",
        "resnet50",
        "prox_coupled_",
        sum(p.numel() for p in ps),
        {
            "wgsef": lambda: wgsef.ops.prox_coupled_(
                ps, layout, [], group["coupling"], sizes, group["weights"], ks, lam, one
            ),
            "mul_": lambda: torch._foreach_mul_(ps, 1.0),
        },
        tensors=len(ps),
        coupled_groups=sum(sizes),
    )


def optimizer_cases(s: Suite, name: str) -> None:
    def params():
        g = torch.Generator().manual_seed(0)
        out = []
        for _, shape in MODELS[name]():
            if len(shape) != 4:
                continue
            p = torch.nn.Parameter(torch.randn(shape, generator=g).to(s.device) * 0.05)
            p.grad = torch.randn(shape, generator=g).to(s.device) * 1e-3
            out.append(p)
        return out

    sgd = torch.optim.SGD(params(), lr=0.01, momentum=0.9, foreach=True)
    prox = wgsef.ProxSGD(params(), lr=0.01, momentum=0.9, foreach=True, k=0.5, lam=0.1)
    n = sum(p.numel() for p in prox.param_groups[0]["params"])
    memory = {}
    for label, opt in (("sgd", sgd), ("wgsef", prox)):
        opt.step()  # momentum buffers
        with AllocatedBytes() as rec:
            opt.step()
        memory[label] = rec.total
    s.case(
        "optimizer",
        f"{name} convs",
        "step",
        n,
        {"wgsef": prox.step, "sgd": sgd.step},
        allocated_bytes_wgsef=memory["wgsef"],
        allocated_bytes_sgd=memory["sgd"],
    )
    adamw = torch.optim.AdamW(params(), lr=1e-3, weight_decay=0.01, foreach=True)
    prox_adamw = wgsef.ProxOptimizer(
        torch.optim.AdamW(params(), lr=1e-3, weight_decay=0.01, foreach=True), k=0.5, lam=0.1
    )
    s.case("optimizer", f"{name} convs", "step AdamW", n, {"wgsef": prox_adamw.step, "adamw": adamw.step})
    # torch's fused SGD kernel for the update, against fused and foreach SGD
    sgd_fused = torch.optim.SGD(params(), lr=0.01, momentum=0.9, fused=True)
    prox_fused = wgsef.ProxSGD(params(), lr=0.01, momentum=0.9, fused=True, k=0.5, lam=0.1)
    s.case(
        "optimizer",
        f"{name} convs",
        "step fused",
        n,
        {"wgsef": prox_fused.step, "sgd": sgd_fused.step, "sgd foreach": sgd.step},
    )


def distributed_cases(s: Suite, repeats: int) -> None:
    """ProxSGD against SGD under FSDP2 on 2 CPU ranks (bench/bench_distributed.py)."""
    import bench_distributed

    for row in bench_distributed.measure(world=2, repeats=repeats):
        for impl, ms in (("wgsef", row["proxsgd_ms"]), ("sgd", row["sgd_ms"])):
            s.rows.append(
                {
                    "group": "distributed",
                    "workload": f"{row['workload']}, FSDP2 2 ranks",
                    "op": "step",
                    "impl": impl,
                    "elements": row["params"],
                    "median_ms": ms,
                    "iqr_ms": math.nan,
                    "ns_per_element": ms * 1e6 / row["params"],
                    "prox_payload_bytes": row["prox_payload_bytes"],
                }
            )
        print(f"distributed {row['workload']:<28} step  wgsef {row['proxsgd_ms']:.2f} ms, sgd {row['sgd_ms']:.2f} ms")


def nm_cases(s: Suite, shape: tuple[int, int]) -> None:
    w = s.tensor(shape)
    n = w.numel()
    label = "x".join(map(str, shape))
    zero = torch.tensor(0.0)
    for pattern in ((2, 4), (1, 8), (1, 32), (16, 512)):
        impls = {
            "wgsef": lambda p=pattern: wgsef.nm_mask(w, *p),
            "pytorch": lambda p=pattern: torch_ops.nm_mask_topk(w, *p),
        }
        if pattern == (2, 4):
            impls["apex-style"] = lambda: torch_ops.nm_mask_2_4_patterns(w)
        s.case("nm", label, f"nm_mask {pattern[0]}:{pattern[1]}", n, impls)
    wg = w.clone().requires_grad_(True)
    grad = torch.randn_like(w)
    half = torch.tensor(0.5)
    s.case("nm", label, "nm_decay 2:4", n, {"wgsef": lambda: wgsef.nm_decay(w, 2, 4, zero), "clone": lambda: w.clone()})
    s.case(
        "nm",
        label,
        "nm_decay fwd+bwd",
        n,
        {
            "wgsef": lambda: wgsef.nm_decay(wg, 2, 4, half, grad_mode="scaled").backward(grad),
            "pytorch": lambda: torch_ops.nm_decay(wg, 2, 4, half).backward(grad),
        },
    )


def adversarial_norms(groups: int, size: int, kind: str, device) -> torch.Tensor:
    """Rows whose norms are all equal, or spread over 12 decades."""
    x = torch.randn(groups, size, device=device)
    x /= x.norm(dim=1, keepdim=True)
    if kind == "geometric":
        x *= torch.logspace(-6, 6, groups, device=device).view(-1, 1)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset that finishes in ~2 minutes")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--device", choices=["all", "cpu", "cuda"], default="all", help="all: the CPU, then CUDA when present"
    )
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [torch.device(args.device)]
    for device in devices:
        s = Suite(device, 0.1 if args.quick else 0.4)
        elements = [10**4, 10**5, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7, 10**8]
        for n in elements:
            x = s.tensor((max(1, n // 1024), 1024))
            single_tensor_cases(s, "elements", f"{x.shape[0]}x1024", x, max(1, x.shape[0] // 4))
            s.case(
                "elements",
                f"{x.shape[0]}x1024",
                "nm_mask 2:4",
                x.numel(),
                {
                    "wgsef": lambda x=x: wgsef.nm_mask(x, 2, 4),
                    "pytorch": lambda x=x: torch_ops.nm_mask_topk(x, 2, 4),
                    "clone": lambda x=x: x.clone(),
                },
            )
        total = 10**6 if args.quick else 10**7
        for g in [10**2, 10**4] if args.quick else [10**2, 10**3, 10**4, 10**5, 10**6]:
            x = s.tensor((g, total // g))
            single_tensor_cases(s, "groups", f"{g}x{total // g}", x, max(1, g // 4))
        for kind in ("equal", "geometric"):
            x = adversarial_norms(10**4, 100, kind, device)
            s.case(
                "groups",
                f"1e4 {kind} norms",
                "prox",
                x.numel(),
                {
                    "wgsef": lambda x=x: wgsef.prox(x, 2500, LAM),
                    "pytorch": lambda x=x: torch_ops.prox(x, 2500, LAM),
                    "clone": lambda x=x: x.clone(),
                },
            )
        cuda = device.type == "cuda"  # fast enough for the large cases even with --quick
        if not args.quick or cuda:
            single_tensor_cases(s, "huge", "vgg16 fc6 4096x25088", s.tensor((4096, 25088)), 1024)
        for name in ["resnet50"] if args.quick else list(MODELS):
            model_cases(s, name)
        optimizer_cases(s, "resnet50")
        if device.type == "cpu" and torch.distributed.is_available():
            distributed_cases(s, 10 if args.quick else 30)
        coupled_cases(s)
        for shape in (
            [(4096, 4096)] if cuda and args.quick else [(2048, 2048)] if args.quick else [(4096, 4096), (4096, 25088)]
        ):
            nm_cases(s, shape)
        report(s, args.out, device)


def report(s: Suite, out: str, device: torch.device) -> None:
    meta = header()
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in s.rows:
        by_case.setdefault((r["group"], r["workload"], r["op"]), {})[r["impl"]] = r
    table = [
        "| group | workload | op | wgsef ms (IQR) | pytorch ms | speedup | floor | floor ms | wgsef / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (group, workload, op), impls in by_case.items():
        ours = impls["wgsef"]
        base = impls.get("pytorch") or impls.get("sgd")
        floor_name = next((f for f in ("clone", "mul_", "sgd") if f in impls), None)
        floor = impls.get(floor_name) if floor_name else None
        for r in impls.values():
            r["ratio_to_baseline"] = r["median_ms"] / base["median_ms"] if base else math.nan
            r["ratio_to_floor"] = r["median_ms"] / floor["median_ms"] if floor else math.nan
        table.append(
            f"| {group} | {workload} | {op} | {ours['median_ms']:.3f} ({ours['iqr_ms']:.3f}) | "
            + (f"{base['median_ms']:.3f} | {base['median_ms'] / ours['median_ms']:.1f}x | " if base else "- | - | ")
            + (
                f"{floor_name} | {floor['median_ms']:.3f} | {ours['median_ms'] / floor['median_ms']:.2f} |"
                if floor
                else "- | - | - |"
            )
        )
    fields = list(s.rows[0])
    fields += sorted({key for r in s.rows for key in r} - set(fields))
    rows = [{f: r.get(f, "") for f in fields} for r in s.rows]
    name = f"suite_{device.type}"
    write_results(out, name, meta, rows, table)
    plot(s.rows, f"{out}/{name}.png")


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, op in zip(axes, ("value", "prox", "nm_mask 2:4")):
        for impl, style in (("wgsef", "o-"), ("pytorch", "s--"), ("clone", ":"), ("mul_", ":")):
            pts = sorted(
                (r["elements"], r["ns_per_element"])
                for r in rows
                if r["group"] == "elements" and r["op"] == op and r["impl"] == impl
            )
            if pts:
                ax.loglog(*zip(*pts), style, label=impl)
        ax.set_title(op)
        ax.set_xlabel("elements")
        ax.legend()
    axes[0].set_ylabel("ns per element")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
