"""ProxSGD under FSDP2 on CPU ranks (gloo): step time against torch.optim.SGD under the
same sharding, and the bytes the prox communicates against FSDP2's own traffic.

    python bench/bench_distributed.py [--world 2] [--repeats 30] [--out bench/results]

Each rank runs with one thread. The model holds the weight matrices of ResNet-50
and of BERT-base (wgsef.model_shapes), one FSDP2 unit per weight; gradients are
random, so only the optimizer step is timed. Both optimizers run interleaved in
one run, each call between barriers; a step's time is the slowest rank's.

Bytes: the prox all-reduces 8 bytes (float64) per group per step, plus a 96-byte
agreement check; single-element groups instead all-reduce a few float64 sums per
pass of their search and a 4096-point sample per term; a ring all-reduce sends
2 (n-1)/n times the payload per rank.
FSDP2 sends (n-1)/n of the float32 parameters per rank three times per step
(all-gather in forward, again in backward, reduce-scatter of the gradients).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from common import header, write_results
from torch import nn

import wgsef
from wgsef.model_shapes import MODELS

WORKLOADS = {  # name: (model, weights regularized, group spec)
    "ResNet-50 convs, filters": ("resnet50", lambda shape: len(shape) == 4, "filters"),
    "ResNet-50 convs, elements": ("resnet50", lambda shape: len(shape) == 4, "elements"),
    "BERT-base matrices, filters": ("bert_base", lambda shape: True, "filters"),
}


class Weights(nn.Module):
    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(nn.Module() for _ in shapes)
        for layer, shape in zip(self.layers, shapes):
            layer.weight = nn.Parameter(torch.randn(shape, generator=g) * 0.05)


def _sharded(shapes, mesh):
    from torch.distributed.fsdp import fully_shard

    model = Weights(shapes)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for p in model.parameters():
        p.grad = p.detach() * 1e-3
    return model


def _timed_step(opt) -> float:
    dist.barrier()
    begin = time.perf_counter()
    opt.step()
    elapsed = torch.tensor(time.perf_counter() - begin, dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def _count_all_reduce(step) -> tuple[int, int]:
    """The number and payload bytes of the all-reduces one call of `step` issues:
    torch.distributed's from Python, and c10d's functional ones that the native
    search by passes (prox_elements_) issues through the dispatcher, from a profile
    (float64 payloads)."""
    counted = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        counted.append(tensor.numel() * tensor.element_size())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
    finally:
        dist.all_reduce = original
    functional = [e for e in prof.events() if e.name == "_c10d_functional::all_reduce"]
    return len(counted) + len(functional), sum(counted) + sum(8 * math.prod(e.input_shapes[0]) for e in functional)


def _worker(rank: int, world: int, init_file: str, repeats: int, results) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    rows = []
    for workload, (model, regularized, spec) in WORKLOADS.items():
        shapes = [shape for _, shape in MODELS[model]() if regularized(shape)]
        params = sum(torch.Size(s).numel() for s in shapes)
        groups = sum(torch.Size(s).numel() if spec == "elements" else s[0] for s in shapes)
        sgd = torch.optim.SGD(_sharded(shapes, mesh).parameters(), lr=0.01, momentum=0.9, foreach=True)
        prox = wgsef.ProxSGD(
            _sharded(shapes, mesh).parameters(), lr=0.01, momentum=0.9, foreach=True, k=0.5, lam=0.1, groups=spec
        )
        sgd.step(), prox.step()  # momentum buffers and cached terms
        reduces, payload = _count_all_reduce(prox.step)
        times = {"sgd": [], "wgsef": []}
        for _ in range(repeats):
            times["sgd"].append(_timed_step(sgd))
            times["wgsef"].append(_timed_step(prox))
        sgd_ms, prox_ms = (statistics.median(times[k]) * 1e3 for k in ("sgd", "wgsef"))
        rows.append(
            {
                "workload": workload,
                "ranks": world,
                "params": params,
                "groups": groups,
                "sgd_ms": round(sgd_ms, 3),
                "proxsgd_ms": round(prox_ms, 3),
                "ratio": round(prox_ms / sgd_ms, 3),
                "prox_all_reduces": reduces,
                "prox_payload_bytes": payload,
                "prox_ring_bytes_per_rank": round(2 * (world - 1) / world * payload),
                "fsdp2_bytes_per_rank": round(3 * (world - 1) / world * 4 * params),
            }
        )
        del sgd, prox
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def measure(world: int = 2, repeats: int = 30) -> list[dict]:
    """Spawn `world` CPU ranks and return the rows (one per workload)."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_worker, args=(rank, world, init_file, repeats, results)) for rank in range(world)]
        for p in procs:
            p.start()
        rows = results.get(timeout=1800)
        for p in procs:
            p.join(timeout=60)
    return rows


def at_world(row: dict, n: int) -> tuple[float, float]:
    """(prox, FSDP2) bytes per rank per step at n ranks, for the same workload."""
    return 2 * (n - 1) / n * row["prox_payload_bytes"], 3 * (n - 1) / n * 4 * row["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rows = measure(args.world, args.repeats)
    table = [
        f"| workload | SGD ms | ProxSGD ms | ratio | prox all-reduces | prox bytes/rank ({args.world} ranks) | "
        "at 8 ranks | FSDP2 bytes/rank at 8 ranks | share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prox8, fsdp8 = at_world(r, 8)
        table.append(
            f"| {r['workload']} | {r['sgd_ms']:.1f} | {r['proxsgd_ms']:.1f} | {r['ratio']:.2f}x | "
            f"{r['prox_all_reduces']} | {r['prox_ring_bytes_per_rank'] / 1e6:.2f} MB | {prox8 / 1e6:.2f} MB | "
            f"{fsdp8 / 1e6:.0f} MB | {100 * prox8 / fsdp8:.2f}% |"
        )
    print("\n".join(table))
    meta = header() | {"threads": f"1 per rank, {args.world} ranks (gloo)"}
    write_results(args.out, "distributed_cpu", meta, rows, table)


if __name__ == "__main__":
    main()
