"""What every benchmark script shares: the run header and the result files."""

from __future__ import annotations

import csv
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

import wgsef


def timed(fn, min_run: float, device: torch.device | None = None) -> tuple[float, float]:
    """(median, interquartile range) in seconds of calling fn: on the CPU by
    torch.utils.benchmark with every thread, on CUDA by events around blocks of
    calls (each block ~1 ms or one call), at least 10 blocks and min_run seconds."""
    if device is None or device.type != "cuda":
        m = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
            min_run_time=min_run
        )
        return m.median, m.iqr
    torch.cuda.synchronize()
    begin = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    per_block = max(1, int(1e-3 / max(time.perf_counter() - begin, 1e-7)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    deadline = time.perf_counter() + min_run
    while len(times) < 10 or time.perf_counter() < deadline:
        start.record()
        for _ in range(per_block):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / per_block)
    q1, median, q3 = statistics.quantiles(times, n=4)
    return median, q3 - q1


def header() -> dict[str, str]:
    """Machine, versions, thread count and git commit of this run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}",
        "device": device,
        "torch": torch.__version__,
        "wgsef": wgsef.__version__,
        "threads": str(torch.get_num_threads()),
        "commit": commit,
    }


def write_results(out: str | Path, name: str, meta: dict[str, str], rows: list[dict], table: list[str]) -> None:
    """Writes <out>/<name>.csv (header lines, then the rows) and <name>.md (header, table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        for key, val in meta.items():
            f.write(f"# {key}: {val}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [" | ".join(f"{k}: {v}" for k, v in meta.items()), "", *table]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.csv and {out / name}.md")
