"""Dense vs compacted at half the channels: parameters, MACs, CPU latency and output
difference of real models whose coupled groups wgsef prunes to k=0.5 per term.

Every model is built from its constructor (random weights, no downloads; batch-norm
running statistics and the zero-initialized ViT head randomized), given param groups
over its coupled groups (wgsef.coupled_param_groups, k=0.5), frozen to exactly half
the groups of every term (ProxSGD.freeze_support) and compacted (wgsef.compact, which
raises if the outputs differ). MACs are per sample at batch 1 (torch.utils.flop_counter,
flops / 2, attention included); latency is the median of torch.utils.benchmark on the
CPU under torch.no_grad; the output difference is max |dense - compacted| / max |dense|
on fresh inputs, the worst over the batch sizes (logits for the Hugging Face models).
Ratios are compacted / dense.

    python bench/compact_models.py [--models resnet18 bert] [--batch 1 32] [--min-run-time 1.0]
                                   [--quick] [--out bench-compact.json]

--quick: 64x64 images, sequence length 32 and tiny transformer configs (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
import transformers
from common import header, timed
from torch import nn

import wgsef
from wgsef.compaction import count_macs

IMAGE_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "vit_b_16", "convnext_tiny"]
TEXT_MODELS = ["bert", "llama"]
K, LAM = 0.5, 1e-4

Inputs = Callable[[int], Any]  # batch size -> fresh random inputs (a tensor or keyword inputs)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor() or "unknown")


def randomize_batch_norms(model: nn.Module) -> None:
    """Running statistics away from (0, 1), so the compacted batch norms are checked."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def image_model(name: str, quick: bool) -> tuple[nn.Module, Inputs]:
    size = 64 if quick else 224
    model = getattr(torchvision.models, name)(**({"image_size": size} if name.startswith("vit") else {}))
    randomize_batch_norms(model)
    if name.startswith("vit"):  # torchvision zero-initializes the head: all-zero outputs would check nothing
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model, lambda batch: torch.randn(batch, 3, size, size)


def text_model(name: str, quick: bool) -> tuple[nn.Module, Inputs]:
    seq = 32 if quick else 128
    bert = name == "bert"
    if quick:
        size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
    else:
        size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
        size |= (
            dict(intermediate_size=3072, vocab_size=30522) if bert else dict(intermediate_size=2048, vocab_size=32000)
        )
    if bert:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**size, attn_implementation="eager"))
        extra = {}
    else:
        config = transformers.LlamaConfig(
            **size, num_key_value_heads=size["num_attention_heads"], attn_implementation="eager"
        )
        model, extra = transformers.LlamaForCausalLM(config), {"use_cache": False}
    vocab = size["vocab_size"]
    return model, lambda batch: {"input_ids": torch.randint(0, vocab, (batch, seq)), **extra}


def run(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def bench_model(name: str, batches: list[int], min_run: float, quick: bool) -> dict[str, Any]:
    """Freeze ``name`` to half the groups of every coupled term, compact it and measure both."""
    torch.manual_seed(0)
    model, make_inputs = (text_model if name in TEXT_MODELS else image_model)(name, quick)
    model.eval()
    example = make_inputs(1)
    opt = wgsef.ProxSGD(wgsef.coupled_param_groups(model, example, k=K, lam=LAM), lr=0.0)
    opt.freeze_support()  # keeps the top k groups of every term and zeros the rest
    terms = [r for r in wgsef.sparsity_report(opt) if r.shape == ()]
    assert all(r.groups_kept == r.k for r in terms), "freeze_support kept other than k groups"
    small = wgsef.compact(model, example)

    row: dict[str, Any] = {
        "model": name,
        "terms": len(terms),
        "groups_kept": sum(r.groups_kept for r in terms),
        "groups_total": sum(r.groups_total for r in terms),
        "params_dense": sum(p.numel() for p in model.parameters()),
        "params_compact": sum(p.numel() for p in small.parameters()),
        "macs_dense": count_macs(model, example),
        "macs_compact": count_macs(small, example),
    }
    diffs = []
    with torch.no_grad():
        for batch in batches:
            x = make_inputs(batch)
            dense, compact = run(model, x), run(small, x)  # also the warm-up
            diffs.append(float((dense - compact).abs().max() / dense.abs().max()))
            for kind, m in (("dense", model), ("compact", small)):
                median, iqr = timed(lambda: run(m, x), min_run)
                row[f"ms_b{batch}_{kind}"], row[f"ms_b{batch}_{kind}_iqr"] = median * 1e3, iqr * 1e3
    row["rel_output_diff"] = max(diffs)
    return row


def si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def table(rows: list[dict[str, Any]], batches: list[int]) -> list[str]:
    cols = ["model", "params dense -> compacted", "MACs dense -> compacted"]
    cols += [f"latency b{b} dense / compacted ms" for b in batches] + ["rel. output diff"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["model"]]
        for key in ("params", "macs"):
            dense, compact = r[f"{key}_dense"], r[f"{key}_compact"]
            cells.append(f"{si(dense)} -> {si(compact)} ({compact / dense:.2f})")
        for b in batches:
            dense, compact = r[f"ms_b{b}_dense"], r[f"ms_b{b}_compact"]
            cells.append(f"{dense:.2f} / {compact:.2f} ({compact / dense:.2f})")
        cells.append(f"{r['rel_output_diff']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=IMAGE_MODELS + TEXT_MODELS, default=IMAGE_MODELS + TEXT_MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per latency measurement")
    parser.add_argument("--quick", action="store_true", help="small inputs and tiny transformers (smoke test)")
    parser.add_argument("--out", default="bench-compact.json")
    args = parser.parse_args()

    meta = {**header(), "cpu": cpu_model(), "k": str(K), "quick": str(args.quick)}
    print(" | ".join(f"{k}: {v}" for k, v in meta.items()))
    rows = []
    for name in args.models:
        row = bench_model(name, args.batch, args.min_run_time, args.quick)
        rows.append(row)
        print(f"{name}: {row['groups_kept']}/{row['groups_total']} coupled groups kept in {row['terms']} terms")
    lines = table(rows, args.batch)
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
