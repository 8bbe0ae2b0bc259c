"""One optimizer step on ResNet-50's conv weights: wgsef's ProxSGD and ProxOptimizer
against their base optimizers and torchao's PAT PruneOptimizer, and the fused SGD
update with group norms that ProxSGD runs on sharded params.

Every optimizer owns identical copies of the 53 conv weights (filter groups, k =
half the filters, 23.5M float32 parameters) with fixed random gradients; every timed
call is one full step. The cases run in interleaved rounds and each figure is the
median over rounds, with its ratio to the plain base optimizer (SGD with momentum or
AdamW, foreach) of the same run. PAT (``pip install "wgsef[bench]"``, torchao) is
skipped with a note when absent. Writes bench/results/optim_cpu.{csv,md}.

    python bench/bench_optim.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import math

import torch
from common import header, timed, write_results

import wgsef
from wgsef.model_shapes import resnet50


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for _, shape in resnet50():
        if len(shape) != 4:
            continue
        p = torch.nn.Parameter(torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:])))
        p.grad = torch.randn(shape, generator=g) * 1e-3
        params.append(p)
    return params


class FusedSGDSquares:
    """The first half of ProxSGD's step on DTensor params (docs/design.md §8): SGD's
    update fused with the squared filter norms, ``wgsef.ops.sgd_group_squares_``."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.bufs = [torch.zeros_like(p) for p in params]
        self.layout = [v for p in params for v in (1, p.shape[0], p[0].numel())]

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        wgsef.ops.sgd_group_squares_(self.params, grads, self.bufs, self.layout, 0.01, momentum=0.9)


def pat_cases(sgd, adamw) -> dict:
    """torchao PAT's PruneOptimizer over the same filter groups (Dim0Grouper), with
    its group lasso prox and its per-tensor and global top-k constraints."""
    try:
        from torchao.prototype.pat.optim import PruneOptimizer
    except ImportError:
        print("torchao is not installed (pip install 'wgsef[bench]'): the PAT cases are skipped")
        return {}

    def pat(base, prox_type, **extra):
        def make(ps):
            group = {"params": ps, "group_type": "Dim0Grouper", "prox_type": prox_type, **extra}
            return PruneOptimizer(base([group]), reg_lambda=1e-4)

        return make

    return {
        "PAT PruneOptimizer(SGD), ProxGroupLasso": ("SGD", pat(lambda g: sgd(g, foreach=True), "ProxGroupLasso")),
        "PAT PruneOptimizer(SGD), MinSparsityConstraint(0.5)": (
            "SGD",
            pat(lambda g: sgd(g, foreach=True), "MinSparsityConstraint", min_sparsity=0.5),
        ),
        "PAT PruneOptimizer(SGD), GlobalMinSparsityConstraint(0.5)": (
            "SGD",
            pat(lambda g: sgd(g, foreach=True), "GlobalMinSparsityConstraint", min_sparsity=0.5),
        ),
        "PAT PruneOptimizer(AdamW), ProxGroupLasso": ("AdamW", pat(adamw, "ProxGroupLasso")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    min_run = 0.3 if args.quick else 0.5

    def sgd(ps, **kw):
        return torch.optim.SGD(ps, lr=0.01, momentum=0.9, **kw)

    def adamw(ps):
        return torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True)

    # name -> (base optimizer name, factory)
    cases = {
        "torch.optim.SGD(momentum=0.9, foreach=True)": ("SGD", lambda ps: sgd(ps, foreach=True)),
        "torch.optim.SGD(momentum=0.9, foreach=False)": ("SGD", lambda ps: sgd(ps, foreach=False)),
        "wgsef.ProxSGD(momentum=0.9, foreach=True, k=0.5, lam=1e-4)": (
            "SGD",
            lambda ps: wgsef.ProxSGD(ps, lr=0.01, momentum=0.9, foreach=True, k=0.5, lam=1e-4),
        ),
        "wgsef.ProxSGD(momentum=0.9, k=0.5, lam=1e-4) [default foreach]": (
            "SGD",
            lambda ps: wgsef.ProxSGD(ps, lr=0.01, momentum=0.9, k=0.5, lam=1e-4),
        ),
        "wgsef.ops.sgd_group_squares_ (SGD update + filter norms, one pass)": ("SGD", FusedSGDSquares),
        "torch.optim.AdamW(foreach=True)": ("AdamW", adamw),
        "wgsef.ProxOptimizer(AdamW(foreach=True), k=0.5, lam=1e-4)": (
            "AdamW",
            lambda ps: wgsef.ProxOptimizer(adamw(ps), k=0.5, lam=1e-4),
        ),
    }
    cases |= pat_cases(sgd, adamw)
    # the cases are timed in interleaved rounds, so that a slow spell of this
    # noisy machine hits all of them alike; each figure is the median over rounds
    rounds = 3 if args.quick else 7
    optimizers, n_params = {}, None
    for name, (_, make) in cases.items():
        params = make_params()
        n_params = sum(p.numel() for p in params)
        optimizers[name] = make(params)
        optimizers[name].step()  # create the momentum buffers
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, opt in optimizers.items():
            samples[name].append(timed(opt.step, min_run)[0])
    rows = []
    for name, times in samples.items():
        t = torch.tensor(times)
        q20, q50, q80 = (float(torch.quantile(t, q)) for q in (0.2, 0.5, 0.8))
        rows.append({"optimizer": name, "median_ms": q50 * 1e3, "p20_ms": q20 * 1e3, "p80_ms": q80 * 1e3})
        print(f"{name}: {q50 * 1e3:.2f} ms (p20 {q20 * 1e3:.2f}, p80 {q80 * 1e3:.2f})")
    base_ms = {
        "SGD": rows[0]["median_ms"],
        "AdamW": next(r["median_ms"] for r in rows if r["optimizer"].startswith("torch.optim.AdamW")),
    }
    for r in rows:
        r["base"] = cases[r["optimizer"]][0]
        r["ratio_to_base"] = r["median_ms"] / base_ms[r["base"]]
        print(f"  {r['optimizer']}: {r['ratio_to_base']:.2f}x {r['base']}")

    meta = header()
    meta["workload"] = f"ResNet-50 conv weights, 53 tensors, {n_params} float32 params, filter groups"
    table = ["| optimizer | median ms | p20 ms | p80 ms | / base |", "|---|---|---|---|---|"]
    table += [
        f"| {r['optimizer']} | {r['median_ms']:.2f} | {r['p20_ms']:.2f} | {r['p80_ms']:.2f} "
        f"| {r['ratio_to_base']:.2f}x {r['base']} |"
        for r in rows
    ]
    write_results(args.out, "optim_cpu", meta, rows, table)


if __name__ == "__main__":
    main()
