"""nm_mask and mask-and-apply (nm_decay with D = 0) against the usual PyTorch code.

Baselines, measured in the same run on the same tensor:
  * view + topk + scatter, the composition users write for an N:M mask
    (checked equal to nm_mask wherever |w| has no ties);
  * w.clone(), the floor for an op that writes a new weight-sized tensor;
  * the floors of nm_mask itself: w.sum() (one read of w) and nm_mask with
    n = m (no selection: a fresh mask allocated and written).
Writes bench/results/nm_cpu.{csv,md}.

    python bench/bench_nm.py [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse

import torch
from baselines import nm_mask_topk
from common import header, timed, write_results

import wgsef

PATTERNS = [(2, 4), (1, 8), (1, 32), (16, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 4096x4096 tensor, shorter timing")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (4096, 25088)]
    min_run = 0.3 if args.quick else 1.0
    rows = []
    for shape in shapes:
        w = torch.randn(shape)
        zero = torch.tensor(0.0)
        clone = timed(lambda: w.clone(), min_run)
        read = timed(lambda: w.sum(), min_run)
        fresh_mask = timed(lambda: wgsef.nm_mask(w, 4, 4), min_run)
        print(
            f"{'x'.join(map(str, shape))} floors: w.sum() {read[0] * 1e3:.1f} ms, "
            f"fresh mask (nm_mask n = m) {fresh_mask[0] * 1e3:.1f} ms"
        )
        for n, m in PATTERNS:
            # the same kept values per group (topk breaks ties in |w| its own way)
            kept = [
                torch.sort((w.abs() * mk).view(-1, m), dim=1).values
                for mk in (wgsef.nm_mask(w, n, m), nm_mask_topk(w, n, m))
            ]
            assert torch.equal(kept[0], kept[1]), "nm_mask disagrees with topk"
            mask_t = timed(lambda: wgsef.nm_mask(w, n, m), min_run)
            naive_t = timed(lambda: nm_mask_topk(w, n, m), min_run)
            apply_t = timed(lambda: wgsef.nm_decay(w, n, m, zero), min_run)
            row = {
                "shape": "x".join(map(str, shape)),
                "pattern": f"{n}:{m}",
                "nm_mask_ms": mask_t[0] * 1e3,
                "nm_mask_iqr_ms": mask_t[1] * 1e3,
                "topk_scatter_ms": naive_t[0] * 1e3,
                "mask_apply_ms": apply_t[0] * 1e3,
                "clone_ms": clone[0] * 1e3,
                "sum_ms": read[0] * 1e3,
                "fresh_mask_ms": fresh_mask[0] * 1e3,
                "speedup_vs_topk": naive_t[0] / mask_t[0],
                "apply_over_clone": apply_t[0] / clone[0],
            }
            rows.append(row)
            print(
                f"{row['shape']} {row['pattern']:>6}: nm_mask {row['nm_mask_ms']:.1f} ms, topk+scatter "
                f"{row['topk_scatter_ms']:.1f} ms ({row['speedup_vs_topk']:.1f}x), mask+apply "
                f"{row['mask_apply_ms']:.1f} ms = {row['apply_over_clone']:.2f}x clone ({row['clone_ms']:.1f} ms)"
            )
    table = [
        "| tensor | N:M | nm_mask ms | topk+scatter ms | speedup | mask+apply ms | clone ms | "
        "mask+apply / clone | w.sum() ms | fresh mask ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['shape']} | {r['pattern']} | {r['nm_mask_ms']:.1f} | {r['topk_scatter_ms']:.1f} | "
        f"{r['speedup_vs_topk']:.1f}x | {r['mask_apply_ms']:.1f} | {r['clone_ms']:.1f} | "
        f"{r['apply_over_clone']:.2f} | {r['sum_ms']:.1f} | {r['fresh_mask_ms']:.1f} |"
        for r in rows
    ]
    write_results(args.out, "nm_cpu", header(), rows, table)


if __name__ == "__main__":
    main()
