"""ProxSGD step vs torch.optim.SGD(momentum=0.9, foreach=True) on ResNet-50's conv weights.

Both optimizers own identical copies of the 53 conv weights (filter groups, 23.5M
float32 parameters) with fixed random gradients; every timed call is one full
step. Writes bench/results/optim_cpu.{csv,md}.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    min_run = 0.3 if args.quick else 0.5

    cases = {
        "torch.optim.SGD(momentum=0.9, foreach=True)": lambda ps: torch.optim.SGD(
            ps, lr=0.01, momentum=0.9, foreach=True
        ),
        "torch.optim.SGD(momentum=0.9, foreach=False)": lambda ps: torch.optim.SGD(
            ps, lr=0.01, momentum=0.9, foreach=False
        ),
        "wgsef.ProxSGD(momentum=0.9, foreach=True, k=0.5, lam=1e-4)": lambda ps: wgsef.ProxSGD(
            ps, lr=0.01, momentum=0.9, foreach=True, k=0.5, lam=1e-4
        ),
        "wgsef.ProxSGD(momentum=0.9, k=0.5, lam=1e-4) [default foreach]": lambda ps: wgsef.ProxSGD(
            ps, lr=0.01, momentum=0.9, k=0.5, lam=1e-4
        ),
    }
    # the cases are timed in interleaved rounds, so that a slow spell of this
    # noisy machine hits all of them alike; each figure is the median over rounds
    rounds = 3 if args.quick else 7
    optimizers, n_params = {}, None
    for name, make in cases.items():
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
    base = rows[0]["median_ms"]
    for r in rows:
        r["ratio_to_sgd"] = r["median_ms"] / base
        print(f"  {r['optimizer']}: {r['ratio_to_sgd']:.2f}x SGD")

    meta = header()
    meta["workload"] = f"ResNet-50 conv weights, 53 tensors, {n_params} float32 params, filter groups"
    table = ["| optimizer | median ms | p20 ms | p80 ms | / SGD |", "|---|---|---|---|---|"]
    table += [
        f"| {r['optimizer']} | {r['median_ms']:.2f} | {r['p20_ms']:.2f} | {r['p80_ms']:.2f} | {r['ratio_to_sgd']:.2f} |"
        for r in rows
    ]
    write_results(args.out, "optim_cpu", meta, rows, table)


if __name__ == "__main__":
    main()
