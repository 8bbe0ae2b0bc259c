"""``wgsef demo``: train to k-level structured sparsity, compact, and measure.

A LeNet-like CNN on the 8x8 digits of scikit-learn (``pip install wgsef[demo]``;
``--dataset synthetic`` needs nothing) is trained four ways with the same budget of
epochs, all ending with the same number of kept filters per layer:

* dense: SGD with momentum, no regularizer (the reference accuracy);
* WGSEF: ProxSGD with a kept fraction ``k`` per layer, then ``freeze_support()``
  and healing for the last quarter of the epochs;
* group lasso: SGD with the prox of ``lam * sum_i ||x_i||`` on the same groups, then
  the same top-k freeze and healing;
* magnitude: the trained dense model's smallest filters pruned to the same k,
  then the same healing budget.

The WGSEF model is then compacted (zero filters, their batch-norm entries and the
matching input channels of the next layer removed) and checked to give the same
outputs; parameters, FLOPs and CPU latency are compared with the dense model. A
second run trains an MLP with N:M sparsity (dense vs SR-STE vs MDGF-exponential).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer

from . import functional
from .compaction import compact, count_flops, count_params
from .nm import NMSchedule, NMSparsifier, check_nm
from .optim import ProxSGD, regularized_param_groups
from .report import sparsity_report


def load_data(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) in [0, 1], 80/20 split."""
    g = torch.Generator().manual_seed(seed)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise SystemExit(
                "the digits dataset needs scikit-learn: pip install 'wgsef[demo]' (or run with --dataset synthetic)"
            ) from err
        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        y = torch.tensor(labels, dtype=torch.long)
    elif name == "synthetic":
        # 10 classes of noisy 8x8 prototypes: a stand-in that needs no package
        prototypes = (torch.rand(10, 1, 8, 8, generator=g) > 0.6).float()
        y = torch.randint(0, 10, (1800,), generator=g)
        x = (prototypes[y] + 0.35 * torch.randn(1800, 1, 8, 8, generator=g)).clamp(0, 1)
    else:
        raise SystemExit(f"--dataset: expected digits or synthetic, got {name!r}")
    order = torch.randperm(len(y), generator=g)
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def lenet(classes: int = 10) -> nn.Sequential:
    """A LeNet-like CNN for 8x8 inputs; unpadded inner convs let compaction fold
    the constant output of a pruned filter into the next layer exactly."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return 100.0 * acc


def progress(label: str, epoch: int, epochs: int, loss: float, acc: float, quiet: bool) -> None:
    """A bar redrawn every epoch on a terminal; one line per run in a log."""
    interactive = sys.stdout.isatty()
    if quiet or (not interactive and epoch < epochs):
        return
    done = round(20 * epoch / epochs)
    line = (
        f"  {label:<24} [{'#' * done}{'.' * (20 - done)}] epoch {epoch:>3}/{epochs}"
        f"  loss {loss:.3f}  test acc {acc:5.1f}%"
    )
    sys.stdout.write(("\r" if interactive else "") + line + ("\n" if epoch == epochs else ""))
    sys.stdout.flush()


def train(model, opt, data, epochs, seed, label, quiet, after_step=None, epoch_hook=None):
    x, y, x_test, y_test = data
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        if epoch_hook:
            epoch_hook(epoch)
        order = torch.randperm(len(y), generator=g)
        total = 0.0
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            if after_step:
                after_step()
            total += loss.item() * len(batch)
        progress(label, epoch, epochs, total / len(y), accuracy(model, x_test, y_test), quiet)
    return model


def regularized_groups(model: nn.Module, keep: float, lam: float) -> list[dict[str, Any]]:
    # every conv's filters and the hidden linear layer's rows; the classifier stays whole
    last = max(name for name, m in model.named_modules() if isinstance(m, nn.Linear))
    return regularized_param_groups(model, k=keep, lam=lam, skip=[last])


def group_lasso_step(opt: ProxSGD, strength: float) -> None:
    """Prox of strength * sum_i ||x_i|| (block soft-thresholding) on opt's
    regularized tensors, filter groups: x_i <- max(0, 1 - strength/||x_i||) x_i."""
    with torch.no_grad():
        for p in opt.param_groups[0]["params"]:
            norms = functional.group_norms(p, "filters")
            scale = (1 - strength / norms.clamp_min(1e-30)).clamp_min(0)
            p.mul_(scale.view(-1, *([1] * (p.dim() - 1))).to(p.dtype))


def latency_ms(model: nn.Module, batch: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        timer = Timer("model(batch)", globals={"model": model, "batch": batch}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=0.3).median * 1e3


def run_structured(args, data) -> dict[str, Any]:
    _, _, x_test, y_test = data
    epochs, heal = args.epochs, max(1, args.epochs // 4)
    results: dict[str, Any] = {}
    print(
        f"Structured sparsity: LeNet-like CNN, keep {args.keep:g} of the filters per layer, "
        f"{epochs} epochs (last {heal} healing with a frozen support)"
    )

    torch.manual_seed(args.seed)
    dense = lenet()
    train(
        dense,
        torch.optim.SGD(dense.parameters(), lr=args.lr, momentum=0.9),
        data,
        epochs,
        args.seed,
        "dense",
        args.quiet,
    )
    results["dense"] = {"test_accuracy": accuracy(dense, x_test, y_test)}

    torch.manual_seed(args.seed)
    sparse = lenet()
    opt = ProxSGD(regularized_groups(sparse, args.keep, args.lam), lr=args.lr, momentum=0.9)
    history: list[dict[str, Any]] = []

    def record(epoch: int) -> None:
        history.append(
            {
                "epoch": epoch - 1,
                "test_accuracy": accuracy(sparse, x_test, y_test),
                "groups_kept": [r.groups_kept for r in sparsity_report(opt)],
            }
        )
        if epoch == epochs - heal + 1:
            opt.freeze_support()

    train(sparse, opt, data, epochs, args.seed, "WGSEF (ProxSGD)", args.quiet, epoch_hook=record)
    record(epochs + 1)
    report = sparsity_report(opt)
    results["wgsef"] = {
        "test_accuracy": accuracy(sparse, x_test, y_test),
        "layers": [
            {"name": r.name, "groups_kept": r.groups_kept, "groups_total": r.groups_total, "k": r.k} for r in report
        ],
        "history": history,
    }

    torch.manual_seed(args.seed)
    lasso = lenet()
    lasso_opt = ProxSGD(regularized_groups(lasso, args.keep, 0.0), lr=args.lr, momentum=0.9)

    def lasso_epoch(epoch: int) -> None:
        if epoch == epochs - heal + 1:
            lasso_opt.freeze_support()

    def lasso_prox() -> None:
        if "support_mask" not in lasso_opt.state[lasso_opt.param_groups[0]["params"][0]]:
            group_lasso_step(lasso_opt, args.lr * args.lasso_lam)

    train(
        lasso,
        lasso_opt,
        data,
        epochs,
        args.seed,
        "group lasso",
        args.quiet,
        after_step=lasso_prox,
        epoch_hook=lasso_epoch,
    )
    results["group_lasso"] = {
        "test_accuracy": accuracy(lasso, x_test, y_test),
        "groups_kept": [r.groups_kept for r in sparsity_report(lasso_opt)],
    }

    magnitude = lenet()
    magnitude.load_state_dict(dense.state_dict())
    mag_opt = ProxSGD(regularized_groups(magnitude, args.keep, 0.0), lr=args.lr, momentum=0.9)
    mag_opt.freeze_support()  # the dense model's top-k filters by norm
    train(magnitude, mag_opt, data, heal, args.seed, "magnitude + fine-tune", args.quiet)
    results["magnitude"] = {
        "test_accuracy": accuracy(magnitude, x_test, y_test),
        "groups_kept": [r.groups_kept for r in sparsity_report(mag_opt)],
    }

    # compaction of the WGSEF model
    sparse.eval()
    small = compact(sparse, x_test[:2])
    with torch.no_grad():
        gap = (small(x_test) - sparse(x_test)).abs().max().item()
    results["compacted"] = {
        "test_accuracy": accuracy(small, x_test, y_test),
        "max_abs_output_difference": gap,
        "params": {"dense": count_params(dense), "compacted": count_params(small)},
        "flops": {"dense": count_flops(dense, x_test), "compacted": count_flops(small, x_test)},
        "latency_ms": {
            f"batch_{b}": {
                "dense": latency_ms(dense, x_test[:b].repeat(math.ceil(b / len(x_test)), 1, 1, 1)[:b]),
                "compacted": latency_ms(small, x_test[:b].repeat(math.ceil(b / len(x_test)), 1, 1, 1)[:b]),
            }
            for b in (1, 256)
        },
    }
    return results


def mlp(classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, classes)
    )


def run_nm(args, data) -> dict[str, Any]:
    _, y, x_test, y_test = data
    steps = args.epochs * math.ceil(len(y) / 64)
    n, m = args.nm
    print(f"N:M sparsity: MLP 64-256-128-10, {n}:{m} along the input dimension, {args.epochs} epochs")
    results: dict[str, Any] = {}
    for label, method in (("dense", None), ("SR-STE", "srste"), ("MDGF-exponential", "mdgf_exp")):
        torch.manual_seed(args.seed)
        model = mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        sparsifier = None
        if method:
            sparsifier = NMSparsifier(model, NMSchedule(n, m, steps, method))
            sparsifier.attach(opt)
        train(model, opt, data, args.epochs, args.seed, f"{label} {n}:{m}" if method else label, args.quiet)
        if sparsifier:
            sparsifier.export()
        checks = check_nm(model, n, m)
        results[label] = {
            "test_accuracy": accuracy(model, x_test, y_test),
            "valid_nm": all(c.valid for c in checks) if method else None,
        }
    return results


def print_report(res: dict[str, Any]) -> None:
    if "structured" in res:
        s = res["structured"]
        print("\nStructured sparsity (test accuracy, groups kept per regularized layer)")
        print(f"  {'method':<28}{'accuracy':>9}  groups kept")
        kept = [layer["groups_kept"] for layer in s["wgsef"]["layers"]]
        total = [layer["groups_total"] for layer in s["wgsef"]["layers"]]
        print(f"  {'dense':<28}{s['dense']['test_accuracy']:>8.1f}%  {total}")
        print(f"  {'WGSEF (ProxSGD)':<28}{s['wgsef']['test_accuracy']:>8.1f}%  {kept}")
        print(
            f"  {'WGSEF, compacted':<28}{s['compacted']['test_accuracy']:>8.1f}%  "
            f"(max output difference {s['compacted']['max_abs_output_difference']:.1e})"
        )
        for label, key in (("group lasso", "group_lasso"), ("magnitude + fine-tune", "magnitude")):
            print(f"  {label:<28}{s[key]['test_accuracy']:>8.1f}%  {s[key]['groups_kept']}")
        c = s["compacted"]
        print("\nDense vs compacted WGSEF model")
        print(f"  {'':<22}{'dense':>12}{'compacted':>12}{'ratio':>8}")
        rows = [
            ("parameters", c["params"]["dense"], c["params"]["compacted"]),
            ("MACs per sample", c["flops"]["dense"], c["flops"]["compacted"]),
        ]
        for b in ("batch_1", "batch_256"):
            rows.append(
                (f"latency {b.replace('_', ' ')} (ms)", c["latency_ms"][b]["dense"], c["latency_ms"][b]["compacted"])
            )
        for name, d, cc in rows:
            fmt = "{:>12.3f}" if isinstance(d, float) else "{:>12,}"
            print(f"  {name:<22}" + fmt.format(d) + fmt.format(cc) + f"{cc / d:>8.2f}")
    if "nm" in res:
        print("\nN:M sparsity (test accuracy)")
        for label, r in res["nm"].items():
            valid = "" if r["valid_nm"] is None else f"  valid N:M: {r['valid_nm']}"
            print(f"  {label:<28}{r['test_accuracy']:>8.1f}%{valid}")


def plot_history(res: dict[str, Any], path: Path) -> bool:
    """Test accuracy and active groups per layer over the WGSEF run's epochs, as a
    PNG; returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    history = res["structured"]["wgsef"]["history"]
    layers = res["structured"]["wgsef"]["layers"]
    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(epochs, [h["test_accuracy"] for h in history], marker="o")
    top.set_ylabel("test accuracy (%)")
    top.set_title("WGSEF training: accuracy and active groups per layer")
    for i, layer in enumerate(layers):
        bottom.plot(
            epochs,
            [100 * h["groups_kept"][i] / layer["groups_total"] for h in history],
            marker=".",
            label=f"{layer['name']} (k = {layer['k']})",
        )
    bottom.set_ylabel("groups kept (% of layer)")
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="wgsef demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--keep", type=float, default=0.5, help="kept fraction of filters per layer (k)")
    parser.add_argument("--lam", type=float, default=0.1, help="WGSEF strength lambda")
    parser.add_argument("--lasso-lam", type=float, default=0.1, help="group lasso strength")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--nm", type=int, nargs=2, default=[1, 4], metavar=("N", "M"))
    parser.add_argument("--only", choices=["structured", "nm"], help="run one part only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="wgsef-demo", help="folder for report.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--plot", action="store_true", help="also write history.png (needs matplotlib)")
    args = parser.parse_args(argv)
    if not 0 < args.keep <= 1:
        parser.error("--keep must lie in (0, 1]")
    torch.manual_seed(args.seed)
    data = load_data(args.dataset, args.seed)
    start = time.perf_counter()
    res: dict[str, Any] = {"config": vars(args) | {"nm": list(args.nm)}}
    if args.only in (None, "structured"):
        res["structured"] = run_structured(args, data)
    if args.only in (None, "nm"):
        res["nm"] = run_nm(args, data)
    res["seconds"] = time.perf_counter() - start
    print_report(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out / 'report.json'} ({res['seconds']:.0f} s)")
    if args.plot and "structured" in res:
        if plot_history(res, out / "history.png"):
            print(f"wrote {out / 'history.png'}")
        else:
            print("--plot: matplotlib is not installed (pip install matplotlib); no plot written")
    return res
