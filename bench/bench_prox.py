"""Time per element of wgsef.value / prox / prox_ against clone() and mul_().

Two sweeps on float32 CPU tensors: elements (1e4..1e7, groups of 1024 rows)
and groups (1e2..1e6 filter groups over 1e7 elements). Writes a CSV and a
Markdown table under bench/results/. Ratios are the figures to quote: these
machines are noisy, and every ratio is measured in the same run.

    python bench/bench_prox.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse

import torch
from common import header, timed, write_results

import wgsef


def cases(x: torch.Tensor, k: int) -> dict:
    lam = torch.tensor(1e-3)
    return {
        "clone": lambda: x.clone(),
        "mul_": lambda: x.mul_(1.0),
        "value": lambda: wgsef.value(x, k, "filters"),
        "prox": lambda: wgsef.prox(x, k, lam, "filters"),
        "prox_": lambda: wgsef.prox_(x, k, lam, "filters"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, shorter timing")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    min_run = 0.2 if args.quick else 1.0
    sizes = [10**4, 10**5, 10**6] if args.quick else [10**4, 10**5, 10**6, 10**7]
    group_counts = [10**2, 10**4] if args.quick else [10**2, 10**3, 10**4, 10**5, 10**6]
    n_groups_sweep = 10**6 if args.quick else 10**7

    sweeps = [("elements", n, (max(1, n // 1024), 1024)) for n in sizes]
    sweeps += [("groups", g, (g, n_groups_sweep // g)) for g in group_counts]
    rows = []
    for sweep, x_value, shape in sweeps:
        x = torch.randn(shape)
        n, m = x.numel(), shape[0]
        k = max(1, m // 4)
        result = {name: timed(fn, min_run) for name, fn in cases(x, k).items()}
        for name, (median, iqr) in result.items():
            rows.append(
                {
                    "sweep": sweep,
                    "x_value": x_value,
                    "shape": "x".join(map(str, shape)),
                    "groups": m,
                    "op": name,
                    "median_ms": median * 1e3,
                    "iqr_ms": iqr * 1e3,
                    "ns_per_element": median * 1e9 / n,
                    "ratio_to_clone": median / result["clone"][0],
                    "ratio_to_mul_": median / result["mul_"][0],
                }
            )
        print(
            f"{sweep:>8} {x_value:>9} shape={shape}: "
            + ", ".join(f"{name} {med * 1e9 / n:.2f} ns/el" for name, (med, _) in result.items())
        )

    table = [
        "| sweep | n | groups | op | median ms | IQR ms | ns/element | / clone | / mul_ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['sweep']} | {r['shape']} | {r['groups']} | {r['op']} | {r['median_ms']:.3f} | "
        f"{r['iqr_ms']:.3f} | {r['ns_per_element']:.2f} | {r['ratio_to_clone']:.2f} | "
        f"{r['ratio_to_mul_']:.2f} |"
        for r in rows
    ]
    write_results(args.out, "prox_cpu", header(), rows, table)


if __name__ == "__main__":
    main()
