"""The ``wgsef`` command (also ``python -m wgsef``).

``wgsef demo`` (the default): train to k-level structured sparsity, compact and
measure (see :mod:`wgsef.demo`). ``wgsef layers``: one WGSEF prox step on every
weight of a ResNet-50-shaped network, printing the groups kept per layer."""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import wgsef
from wgsef.model_shapes import resnet50


def layers(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wgsef layers", description="one WGSEF prox step per ResNet-50 layer")
    parser.add_argument("--keep", type=float, default=0.25, help="kept fraction of filters per layer (k)")
    parser.add_argument(
        "--lam",
        type=float,
        nargs="+",
        default=[0.01, 0.1, 1.0, 10.0],
        help="prox strengths to compare (step size x regularization weight)",
    )
    parser.add_argument("--groups", default="filters", help="group type: filters, channels, shapes, ...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    lam_cols = "".join(f"{'kept@' + format(lam, 'g'):>11}" for lam in args.lam)
    header = f"{'layer':<22}{'shape':<20}{'groups':>7}{'k':>6}{lam_cols}{'ms/prox':>9}"
    print(f"WGSEF prox on ResNet-50 weight shapes, groups={args.groups!r}, k = {args.keep:g} x groups")
    print(header)
    print("-" * len(header))
    totals = [0] * len(args.lam)
    total_groups = total_k = 0
    for name, shape in resnet50():
        fan_in = math.prod(shape[1:])
        w = torch.randn(shape) * math.sqrt(2.0 / fan_in)
        m = wgsef.num_groups(w, args.groups)
        k = max(1, round(args.keep * m))
        kept = []
        start = time.perf_counter()
        for lam in args.lam:
            out = wgsef.prox(w, k, lam, args.groups)
            kept.append(int((wgsef.group_norms(out, args.groups) > 0).sum()))
        ms = (time.perf_counter() - start) * 1e3 / len(args.lam)
        totals = [t + c for t, c in zip(totals, kept)]
        total_groups += m
        total_k += k
        cols = "".join(f"{c:>11}" for c in kept)
        print(f"{name:<22}{shape!s:<20}{m:>7}{k:>6}{cols}{ms:>9.2f}")
    print("-" * len(header))
    cols = "".join(f"{t:>11}" for t in totals)
    print(f"{'total':<42}{total_groups:>7}{total_k:>6}{cols}")
    print(
        "\nA single prox step keeps every group whose norm clears the threshold it finds;\n"
        "at most k of them keep their full (ridge-shrunk) size, and once lam exceeds the\n"
        "layer's lambda_crit exactly k survive. ProxSGD repeats this step during training."
    )


COMMANDS = {
    "demo": "train to k-level structured sparsity and N:M sparsity, compact and measure (default)",
    "layers": "one WGSEF prox step per ResNet-50 layer, groups kept per prox strength",
}


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: wgsef [demo|layers] [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<8}{text}")
        print("\n`wgsef COMMAND --help` lists a command's options; without a command, wgsef runs demo.")
        return
    command = argv[0] if argv and not argv[0].startswith("-") else "demo"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if command == "layers":
        layers(rest)
    elif command == "demo":
        from .demo import main as demo

        demo(rest)
    else:
        raise SystemExit(f"wgsef: unknown command {command!r}; expected one of {', '.join(COMMANDS)}")


if __name__ == "__main__":
    cli()
