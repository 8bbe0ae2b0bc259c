"""``wgsef demo``: train a residual CNN to k channels per layer, compact it, and compare.

A small residual CNN with batch norm (a stem, three residual blocks, one of them
downsampling through a 1x1 shortcut) is trained on MNIST-1D (Greydanus 2020; 4,000 +
1,000 sequences of length 40, generated offline by the ``mnist1d`` package of the
``wgsef[demo]`` extra). ``--dataset digits`` uses scikit-learn's 8x8 digits and
``synthetic`` needs nothing. Each channel is one coupled group (its filter, its
batch-norm scale and shift, and every tensor tied to it through a residual add; see
:func:`wgsef.coupled_param_groups`), and every sparse method ends with the same
``k`` groups per coupled term:

* dense: SGD with momentum, no regularizer (the reference accuracy);
* WGSEF: ProxSGD over the coupled groups, then ``freeze_support()`` and healing
  for the last quarter of the epochs;
* group lasso: SGD followed by the prox of ``lam * sum_i ||x_i||`` on the same
  coupled groups, then the same top-k freeze and healing. A term that group lasso
  has left with fewer than ``k`` non-zero groups gets its missing groups back at
  their initial values, so that it too heals exactly ``k``;
* Torch-Pruning: its own sparse training (``GroupNormPruner``'s group-norm
  regularizer on the gradients) for the same epochs, then pruning to the same
  channel counts and fine-tuning for the healing epochs;
* magnitude: the trained dense model's coupled groups of smallest norm removed,
  then the same healing budget.

Every seed trains all five; the report gives the mean and standard deviation over
the seeds. The first seed's WGSEF model is compacted (zero groups removed by
:func:`wgsef.compact`, which checks its outputs) and compared with the dense one. A
second part trains an MLP with N:M sparsity (dense vs SR-STE vs MDGF-exponential).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer

from .compaction import compact, count_macs, count_params
from .coupled import CoupledTerms, coupled_param_groups, coupled_terms
from .nm import NMSchedule, NMSparsifier, check_nm
from .optim import ProxSGD, regularized_param_groups
from .report import sparsity_report

BATCH = 64
METHODS = {
    "dense": "dense",
    "wgsef": "WGSEF (ProxSGD)",
    "group_lasso": "group lasso",
    "torch_pruning": "Torch-Pruning (group norm)",
    "magnitude": "magnitude + fine-tune",
    # per-tensor filter groups (not coupled), for the comparison with torchao's PAT
    "wgsef_filters": "WGSEF, per-tensor filters",
    "pat_group_lasso": "PAT group lasso, filters",
    "pat_topk": "PAT top-k constraint, filters",
}
DEFAULT_METHODS = ["dense", "wgsef", "group_lasso", "torch_pruning", "magnitude"]


def load_data(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): ``(N, 1, 40)`` sequences for mnist1d,
    ``(N, 1, 8, 8)`` images for digits and synthetic."""
    if name == "mnist1d":
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as err:
            raise SystemExit(
                "the mnist1d dataset needs the mnist1d package: pip install 'wgsef[demo]' "
                "(or run with --dataset synthetic)"
            ) from err
        data = make_dataset(get_dataset_args())  # its own fixed seed: the standard split
        return (
            torch.tensor(data["x"], dtype=torch.float32).unsqueeze(1),
            torch.tensor(data["y"], dtype=torch.long),
            torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(1),
            torch.tensor(data["y_test"], dtype=torch.long),
        )
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
        raise SystemExit(f"--dataset: expected mnist1d, digits or synthetic, got {name!r}")
    order = torch.randperm(len(y), generator=g)
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (identity, or a strided 1x1 conv with batch norm)."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = conv(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(conv(c_in, c_out, 1, stride, bias=False), norm(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A stem and three residual blocks (``width``, ``2 width``, ``2 width`` channels)
    for 1-D or 2-D inputs."""

    def __init__(self, dims: int, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.stem = nn.Sequential(conv(1, width, 5 if dims == 1 else 3, padding="same", bias=False), norm(width))
        self.block1 = ResidualBlock(dims, width, width)
        self.block2 = ResidualBlock(dims, width, 2 * width, stride=2)
        self.block3 = ResidualBlock(dims, 2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(torch.relu(self.stem(x)))))
        return self.fc(x.flatten(2).mean(2))


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
        f"  {label:<30} [{'#' * done}{'.' * (20 - done)}] epoch {epoch:>3}/{epochs}"
        f"  loss {loss:.3f}  test acc {acc:5.1f}%"
    )
    sys.stdout.write(("\r" if interactive else "") + line + ("\n" if epoch == epochs else ""))
    sys.stdout.flush()


def train(
    model, opt, data, epochs, seed, label, quiet, before_step=None, after_step=None, epoch_hook=None, cosine=True
):
    """Mini-batch training, with a cosine learning rate from each group's initial
    ``lr`` to 0 over ``epochs`` (or a constant one); ``before_step`` runs between
    backward and ``opt.step()``."""
    x, y, x_test, y_test = data
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / BATCH)
    factor = (lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))) if cosine else (lambda step: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for epoch in range(1, epochs + 1):
        if epoch_hook:
            epoch_hook(epoch)
        order = torch.randperm(len(y), generator=g)
        total = 0.0
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            if before_step:
                before_step()
            opt.step()
            if after_step:
                after_step()
            schedule.step()
            total += loss.item() * len(batch)
        progress(label, epoch, epochs, total / len(y), accuracy(model, x_test, y_test), quiet)
    return model


def _along(values: torch.Tensor, p: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * p.dim()
    shape[dim] = -1
    return values.view(shape)


@torch.no_grad()
def group_lasso_step(found: CoupledTerms, strength: float) -> None:
    """Prox of ``strength * sum_i ||x_i||`` over the coupled groups (block
    soft-thresholding): every slice of group i is scaled by ``max(0, 1 - strength/||x_i||)``."""
    scale = (1 - strength / found.group_norms().clamp_min(1e-30)).clamp_min(0)
    for m in found.members:
        m.param.mul_(_along(scale[m.coupling], m.param, m.dim).to(m.param.dtype))


@torch.no_grad()
def restore_missing_groups(found: CoupledTerms, budgets: list[int], initial: list[torch.Tensor]) -> int:
    """Give every term at least ``budgets[t]`` non-zero groups: the missing ones (its
    zero groups of lowest index) get back their values at initialization, ``initial``
    holding one copy per member of ``found``. Returns how many groups were restored."""
    norms = found.group_norms()
    restored = []
    offset = 0
    for size, k in zip(found.term_sizes, budgets):
        alive = norms[offset : offset + size] > 0
        missing = k - int(alive.sum())
        if missing > 0:
            restored.append(offset + (~alive).nonzero().flatten()[:missing])
        offset += size
    if not restored:
        return 0
    ids = torch.cat(restored)
    for m, start in zip(found.members, initial):
        at = torch.isin(m.coupling, ids).nonzero().flatten()
        m.param.index_copy_(m.dim, at, start.index_select(m.dim, at))
    return int(ids.numel())


def term_budgets(opt: ProxSGD) -> list[int]:
    return [r.k for r in sparsity_report(opt) if r.shape == ()]


def groups_kept(opt: ProxSGD) -> list[int]:
    return [r.groups_kept for r in sparsity_report(opt) if r.shape == ()]


def latency_ms(model: nn.Module, batch: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        timer = Timer("model(batch)", globals={"model": model, "batch": batch}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=0.3).median * 1e3


def run_seed(args, data, seed: int, dims: int) -> dict[str, Any]:
    """The methods of ``args.methods`` with one seed; the dense and WGSEF models are
    returned under ``"models"``.

    Every sparse method trains in two phases: a search phase (``epochs - heal``
    epochs at a constant learning rate, so the regularizers keep their strength)
    that picks the kept groups, then ``heal`` epochs with exactly those groups and a
    cosine learning rate. Dense training uses a cosine learning rate throughout."""
    x, _, x_test, y_test = data
    epochs, heal = args.epochs, max(1, args.epochs // 4)
    example = x[:2]

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        return ResidualCNN(dims, width=args.width)

    def sgd(model: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)

    def coupled_opt(model: nn.Module, lam: float) -> ProxSGD:
        groups = coupled_param_groups(model, example, k=args.keep, lam=lam, check=False)
        return ProxSGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)

    methods = args.methods
    res: dict[str, Any] = {"models": {}}
    if "dense" in methods or "magnitude" in methods:
        dense = fresh()
        train(dense, sgd(dense), data, epochs, seed, f"dense (seed {seed})", args.quiet)
        res["dense"] = {"test_accuracy": accuracy(dense, x_test, y_test)}
        res["models"]["dense"] = dense
    if "wgsef" in methods:
        res["wgsef"], res["models"]["wgsef"] = run_wgsef(args, data, fresh(), seed, coupled_opt)
    if "group_lasso" in methods:
        res["group_lasso"] = run_group_lasso(args, data, fresh(), seed, coupled_opt)
    if "torch_pruning" in methods:
        res["torch_pruning"] = run_torch_pruning(args, data, fresh(), seed, example)
    if "magnitude" in methods:
        magnitude = copy.deepcopy(dense)
        mag_opt = coupled_opt(magnitude, 0.0)
        mag_opt.freeze_support()  # the dense model's top-k coupled groups by norm
        train(magnitude, mag_opt, data, heal, seed, f"magnitude + fine-tune (seed {seed})", args.quiet)
        res["magnitude"] = {"test_accuracy": accuracy(magnitude, x_test, y_test), "groups_kept": groups_kept(mag_opt)}
    if "wgsef_filters" in methods:
        res["wgsef_filters"] = run_wgsef_filters(args, data, fresh(), seed)
    for method, prox_type in (("pat_group_lasso", "ProxGroupLasso"), ("pat_topk", "MinSparsityConstraint")):
        if method in methods:
            res[method] = run_pat(args, data, fresh(), seed, prox_type)
    return res


def conv_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def filters_kept(model: nn.Module) -> list[int]:
    return [int((w.detach().flatten(1).norm(dim=1) > 0).sum()) for w in conv_weights(model)]


def run_wgsef_filters(args, data, model: nn.Module, seed: int) -> dict[str, Any]:
    """ProxSGD over each conv's own filters (``regularized_param_groups``), the
    top-k freeze, healing: WGSEF on the groups PAT's ``Dim0Grouper`` uses."""
    _, _, x_test, y_test = data
    heal = max(1, args.epochs // 4)
    groups = regularized_param_groups(model, k=args.keep, lam=args.lam, skip=["fc"])
    opt = ProxSGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    label = f"WGSEF filters (seed {seed})"
    train(model, opt, data, args.epochs - heal, seed, label, args.quiet, cosine=False)
    opt.freeze_support()
    train(model, opt, data, heal, seed, f"{label}, healing", args.quiet)
    return {"test_accuracy": accuracy(model, x_test, y_test), "groups_kept": filters_kept(model)}


@torch.no_grad()
def keep_top_filters(weights: list[nn.Parameter], initial: list[torch.Tensor], keep: float) -> None:
    """Exactly ``round(keep * filters)`` non-zero filters per conv: the largest are
    kept, the rest zeroed, and missing ones restored at their initial values."""
    for w, start in zip(weights, initial):
        norms = w.flatten(1).norm(dim=1)
        k = max(1, round(keep * len(norms)))
        order = torch.sort(-norms, stable=True).indices
        w[order[k:]] = 0
        dead = order[:k][norms[order[:k]] == 0]
        w[dead] = start[dead]


def run_pat(args, data, model: nn.Module, seed: int, prox_type: str) -> dict[str, Any]:
    """torchao PAT's ``PruneOptimizer`` over SGD, each conv's filters one group
    (``Dim0Grouper``): its group-lasso prox, or its top-k constraint keeping ``keep``
    of the filters; PAT's healing (pruned entries frozen) for the last quarter. The
    group lasso has no budget, so at the freeze each conv keeps its top-k filters
    (missing ones restored at their initial values), as for the coupled group lasso;
    the top-k constraint ramps its sparsity up over the search phase (PAT's
    ``min_sparsity_schedule``)."""
    try:
        from torchao.prototype.pat.optim import PruneOptimizer
    except ImportError as err:
        raise SystemExit("the PAT methods need torchao: pip install 'wgsef[bench]'") from err
    _, y, x_test, y_test = data
    heal = max(1, args.epochs // 4)
    search = args.epochs - heal
    convs = conv_weights(model)
    rest = [p for p in model.parameters() if all(p is not c for c in convs)]
    group = {"params": convs, "group_type": "Dim0Grouper", "prox_type": prox_type}
    if prox_type == "MinSparsityConstraint":  # PAT's cubic ramp to the target before healing
        group |= {"min_sparsity": 1 - args.keep, "min_sparsity_schedule": True}
    base = torch.optim.SGD([group, {"params": rest}], lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    opt = PruneOptimizer(base, healing_start_step=search * math.ceil(len(y) / BATCH), reg_lambda=args.pat_lam)
    initial = [w.detach().clone() for w in convs]
    label = f"PAT {prox_type} (seed {seed})"
    train(model, opt, data, search, seed, label, args.quiet, cosine=False)
    if prox_type == "ProxGroupLasso":
        keep_top_filters(convs, initial, args.keep)
    train(model, opt, data, heal, seed, f"{label}, healing", args.quiet)
    return {"test_accuracy": accuracy(model, x_test, y_test), "groups_kept": filters_kept(model)}


def run_wgsef(args, data, sparse: nn.Module, seed: int, coupled_opt) -> tuple[dict[str, Any], nn.Module]:
    """ProxSGD over the coupled groups, ``freeze_support()``, healing; with the
    per-epoch history of accuracy and non-zero groups per term."""
    _, _, x_test, y_test = data
    heal = max(1, args.epochs // 4)
    search = args.epochs - heal
    opt = coupled_opt(sparse, args.lam)
    history: list[dict[str, Any]] = []

    def record(epoch: int) -> None:
        history.append(
            {"epoch": epoch - 1, "test_accuracy": accuracy(sparse, x_test, y_test), "groups_kept": groups_kept(opt)}
        )

    label = f"WGSEF (seed {seed})"
    train(sparse, opt, data, search, seed, label, args.quiet, epoch_hook=record, cosine=False)
    opt.freeze_support()
    train(sparse, opt, data, heal, seed, f"{label}, healing", args.quiet, epoch_hook=lambda e: record(search + e))
    record(args.epochs + 1)
    report = [r for r in sparsity_report(opt) if r.shape == ()]
    result = {
        "test_accuracy": accuracy(sparse, x_test, y_test),
        "groups_kept": [r.groups_kept for r in report],
        "terms": [
            {"name": r.name, "groups_kept": r.groups_kept, "groups_total": r.groups_total, "k": r.k} for r in report
        ],
        "history": history,
    }
    return result, sparse


def run_group_lasso(args, data, lasso: nn.Module, seed: int, coupled_opt) -> dict[str, Any]:
    """Block soft-thresholding of the coupled groups after every SGD step, the
    missing groups restored, the top-k freeze, healing."""
    x, _, x_test, y_test = data
    heal = max(1, args.epochs // 4)
    search = args.epochs - heal
    lasso_opt = coupled_opt(lasso, 0.0)
    lasso_found = coupled_terms(lasso, x[:2])
    initial = [m.param.detach().clone() for m in lasso_found.members]
    label = f"group lasso (seed {seed})"

    def lasso_prox() -> None:
        group_lasso_step(lasso_found, lasso_opt.param_groups[0]["lr"] * args.lasso_lam)

    train(lasso, lasso_opt, data, search, seed, label, args.quiet, after_step=lasso_prox, cosine=False)
    restored = restore_missing_groups(lasso_found, term_budgets(lasso_opt), initial)
    lasso_opt.freeze_support()
    train(lasso, lasso_opt, data, heal, seed, f"{label}, healing", args.quiet)
    return {
        "test_accuracy": accuracy(lasso, x_test, y_test),
        "groups_kept": groups_kept(lasso_opt),
        "groups_restored_at_freeze": restored,
    }


def run_torch_pruning(args, data, model: nn.Module, seed: int, example: torch.Tensor) -> dict[str, Any]:
    """Torch-Pruning's sparse training: ``GroupNormPruner.regularize`` adds the
    gradient of its (importance-scaled) group-norm penalty before every step; then
    ``pruner.step()`` removes the same share of channels in every layer group, and the
    pruned model is fine-tuned for the healing epochs."""
    import torch_pruning as tp

    _, _, x_test, y_test = data
    epochs, heal = args.epochs, max(1, args.epochs // 4)
    pruner = tp.pruner.GroupNormPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=args.tp_reg,
        pruning_ratio=1 - args.keep,
        ignored_layers=[model.fc],
    )
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    label = f"Torch-Pruning (seed {seed})"

    def regularize() -> None:
        pruner.regularize(model)

    train(model, opt, data, epochs - heal, seed, label, args.quiet, before_step=regularize, cosine=False)
    pruner.step()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    train(model, opt, data, heal, seed, f"{label}, healing", args.quiet)
    return {"test_accuracy": accuracy(model, x_test, y_test), "params": count_params(model)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for method in (m for m in METHODS if m in runs[0]):
        accs = [r[method]["test_accuracy"] for r in runs]
        summary[method] = {
            "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "per_seed": accs,
        }
    return summary


def compare_compacted(dense: nn.Module, sparse: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    sparse.eval()
    small = compact(sparse, x_test[:2])
    with torch.no_grad():
        gap = (small(x_test) - sparse(x_test)).abs().max().item()

    def batch(b: int) -> torch.Tensor:
        return x_test[:b].repeat(math.ceil(b / len(x_test)), *([1] * (x_test.dim() - 1)))[:b]

    return {
        "test_accuracy": accuracy(small, x_test, y_test),
        "max_abs_output_difference": gap,
        "params": {"dense": count_params(dense), "compacted": count_params(small)},
        "macs": {"dense": count_macs(dense, x_test[:1]), "compacted": count_macs(small, x_test[:1])},
        "latency_ms": {
            f"batch_{b}": {"dense": latency_ms(dense, batch(b)), "compacted": latency_ms(small, batch(b))}
            for b in (1, 256)
        },
    }


def run_structured(args, data) -> dict[str, Any]:
    _, _, x_test, y_test = data
    dims = x_test.dim() - 2
    heal = max(1, args.epochs // 4)
    print(
        f"Structured sparsity: residual CNN with batch norm on {args.dataset}, keep {args.keep:g} of the "
        f"coupled channel groups per term, {args.epochs} epochs (last {heal} healing), seeds {args.seeds}"
    )
    runs = []
    result: dict[str, Any] = {}
    for seed in args.seeds:
        run = run_seed(args, data, seed, dims)
        runs.append(run)
        models = run.pop("models")
        if len(runs) == 1 and "dense" in models and "wgsef" in models:
            result["compacted"] = compare_compacted(models["dense"], models["wgsef"], x_test, y_test)
    return {"summary": summarize(runs), "seeds": runs} | result


def mlp(features: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, classes)
    )


def run_nm(args, data) -> dict[str, Any]:
    x, y, x_test, y_test = data
    steps = args.epochs * math.ceil(len(y) / BATCH)
    n, m = args.nm
    features = x[0].numel()
    print(f"N:M sparsity: MLP {features}-256-128-10, {n}:{m} along the input dimension, {args.epochs} epochs")
    results: dict[str, Any] = {}
    seed = args.seeds[0]
    for label, method in (("dense", None), ("SR-STE", "srste"), ("MDGF-exponential", "mdgf_exp")):
        torch.manual_seed(seed)
        model = mlp(features)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        sparsifier = None
        if method:
            sparsifier = NMSparsifier(model, NMSchedule(n, m, steps, method))
            sparsifier.attach(opt)
        train(model, opt, data, args.epochs, seed, f"{label} {n}:{m}" if method else label, args.quiet)
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
        seeds = len(s["seeds"])
        first = s["seeds"][0]
        print(f"\nStructured sparsity: test accuracy over {seeds} seed(s), mean +- std; groups kept per term")
        print(f"  {'method':<30}{'accuracy':>16}  groups kept")
        for method, acc in s["summary"].items():
            r = first[method]
            if "groups_kept" in r:
                cell = str(r["groups_kept"])
            else:
                cell = f"{r['params']:,} parameters after pruning" if "params" in r else "all groups"
            print(f"  {METHODS[method]:<30}{acc['mean']:>8.2f} +- {acc['std']:4.2f}%  {cell}")
        if "compacted" not in s:
            return print_nm(res)
        c = s["compacted"]
        print(
            f"  {'WGSEF, compacted (seed ' + str(res['config']['seeds'][0]) + ')':<30}"
            f"{c['test_accuracy']:>8.2f}%{'':8}  max output difference {c['max_abs_output_difference']:.1e}"
        )
        print("\nDense vs compacted WGSEF model")
        print(f"  {'':<22}{'dense':>12}{'compacted':>12}{'ratio':>8}")
        rows = [
            ("parameters", c["params"]["dense"], c["params"]["compacted"]),
            ("MACs per sample", c["macs"]["dense"], c["macs"]["compacted"]),
        ]
        for b in ("batch_1", "batch_256"):
            rows.append(
                (f"latency {b.replace('_', ' ')} (ms)", c["latency_ms"][b]["dense"], c["latency_ms"][b]["compacted"])
            )
        for name, d, cc in rows:
            fmt = "{:>12.3f}" if isinstance(d, float) else "{:>12,}"
            print(f"  {name:<22}" + fmt.format(d) + fmt.format(cc) + f"{cc / d:>8.2f}")
    print_nm(res)


def print_nm(res: dict[str, Any]) -> None:
    if "nm" in res:
        print("\nN:M sparsity (test accuracy)")
        for label, r in res["nm"].items():
            valid = "" if r["valid_nm"] is None else f"  valid N:M: {r['valid_nm']}"
            print(f"  {label:<30}{r['test_accuracy']:>8.2f}%{valid}")


def plot_history(res: dict[str, Any], path: Path) -> bool:
    """Test accuracy and non-zero coupled groups per term over the first seed's
    WGSEF run, as a PNG; returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    wgsef_run = res["structured"]["seeds"][0]["wgsef"]
    history, terms = wgsef_run["history"], wgsef_run["terms"]
    epochs = [h["epoch"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(epochs, [h["test_accuracy"] for h in history], marker="o")
    top.set_ylabel("test accuracy (%)")
    top.set_title("WGSEF training: accuracy and non-zero coupled groups per term")
    for i, term in enumerate(terms):
        bottom.plot(
            epochs,
            [100 * h["groups_kept"][i] / term["groups_total"] for h in history],
            marker=".",
            label=f"{term['name']} (k = {term['k']} of {term['groups_total']})",
        )
    bottom.set_ylabel("non-zero groups (% of term)")
    bottom.set_xlabel("epoch")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="wgsef demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits", "synthetic"])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--keep", type=float, default=0.25, help="kept fraction of the groups per coupled term (k)")
    parser.add_argument("--lam", type=float, default=0.1, help="WGSEF strength lambda")
    parser.add_argument("--lasso-lam", type=float, default=0.1, help="group lasso strength")
    parser.add_argument("--tp-reg", type=float, default=1e-4, help="Torch-Pruning GroupNormPruner reg")
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage (the second has twice)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--nm", type=int, nargs=2, default=[1, 4], metavar=("N", "M"))
    parser.add_argument("--only", choices=["structured", "nm"], help="run one part only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=DEFAULT_METHODS,
        help="structured methods to run (the wgsef_filters and pat_* ones on request; pat_* need torchao)",
    )
    parser.add_argument("--pat-lam", type=float, default=1e-4, help="PAT PruneOptimizer reg_lambda (group lasso)")
    parser.add_argument("--out", default="wgsef-demo", help="folder for report.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--plot", action="store_true", help="also write history.png (needs matplotlib)")
    args = parser.parse_args(argv)
    if not 0 < args.keep <= 1:
        parser.error("--keep must lie in (0, 1]")
    if args.width < 2:
        parser.error("--width must be at least 2")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (training, then healing)")
    data = load_data(args.dataset, args.seeds[0])
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
    if args.plot and "structured" in res and "wgsef" in args.methods:
        if plot_history(res, out / "history.png"):
            print(f"wrote {out / 'history.png'}")
        else:
            print("--plot: matplotlib is not installed (pip install matplotlib); no plot written")
    return res
