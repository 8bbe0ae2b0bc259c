"""Per-tensor group sparsity of a model or of a ProxSGD optimizer's terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import distributed, functional
from .groups import GroupSpec

__all__ = ["SparsityReport", "TensorSparsity", "sparsity_report"]


@dataclass(frozen=True)
class TensorSparsity:
    """One row: a tensor with its own groups, or a coupled term (``shape`` ``()``,
    its groups the coupled groups, its elements those of all its members)."""

    name: str
    shape: tuple[int, ...]
    groups_kept: int  # groups that are not entirely zero
    groups_total: int
    k: int | None  # the term's budget (the shared budget for shared terms), if known
    zero_fraction: float  # fraction of the elements that are exactly zero
    numel: int = -1  # elements covered; -1: the product of shape

    def __post_init__(self) -> None:
        if self.numel < 0:
            object.__setattr__(self, "numel", torch.Size(self.shape).numel())


class SparsityReport(list):
    """A list of :class:`TensorSparsity` rows that prints as a table."""

    def __str__(self) -> str:
        width = max([len(r.name) for r in self] + [6])
        lines = [f"{'tensor':<{width}}  {'shape':<20}{'kept/groups':>14}{'k':>8}{'zero %':>9}"]
        for r in self:
            k = "-" if r.k is None else str(r.k)
            kept = f"{r.groups_kept}/{r.groups_total}"
            shape = "coupled" if r.shape == () else str(r.shape)
            lines.append(f"{r.name:<{width}}  {shape:<20}{kept:>14}{k:>8}{100 * r.zero_fraction:>8.1f}%")
        kept = sum(r.groups_kept for r in self)
        total = sum(r.groups_total for r in self)
        zeros = sum(r.zero_fraction * r.numel for r in self)
        numel = sum(r.numel for r in self)
        lines.append(f"{'total':<{width}}  {'':<20}{f'{kept}/{total}':>14}{'':>8}{100 * zeros / max(numel, 1):>8.1f}%")
        return "\n".join(lines)


def _row(name: str, p: torch.Tensor, spec: GroupSpec, k: int | None, shape=None) -> TensorSparsity:
    with torch.no_grad():
        norms = functional.group_norms(p.detach(), spec)
        zeros = (p.detach() == 0).sum()
        if distributed.is_dtensor(zeros):  # a partial sum on each rank: complete it
            zeros = zeros.full_tensor()
        if distributed.is_dtensor(norms):
            norms = norms.to_local()
        zero = float(zeros) / max(p.numel(), 1)
    shape = tuple(p.shape) if shape is None else shape
    return TensorSparsity(name, shape, int((norms > 0).sum()), norms.numel(), k, zero)


def _is_zero(t: torch.Tensor) -> torch.Tensor:
    return (t == 0).double()


def _sharded_rows(terms, params: list[torch.Tensor]) -> list[TensorSparsity]:
    """Per-tensor rows of DTensor params: norms and zero counts per global group
    (the counts as the squares of a 0/1 indicator), one all-reduce each."""
    with torch.no_grad():
        norms = terms.sharded.squares(params)
        zeros = terms.sharded.squares(params, _is_zero)
    return [
        TensorSparsity(name, tuple(p.shape), int((n > 0).sum()), n.numel(), k, float(z.sum()) / max(p.numel(), 1))
        for name, p, n, z, k in zip(
            terms.names, params, norms, zeros, terms.k * len(params) if terms.shared else terms.k
        )
    ]


def _coupled_rows(terms, params: list[torch.Tensor]) -> list[TensorSparsity]:
    with torch.no_grad():
        norms = terms.term_norms([p.detach() for p in params])
        numel = torch.zeros(sum(terms.term_sizes), dtype=torch.float64)
        zeros = torch.zeros_like(numel)
        sharded_zeros = terms.sharded.squares(params, _is_zero) if terms.sharded is not None else None
        for i, (p, layout, ids, c) in enumerate(zip(params, terms.layouts, terms.group_ids, terms.coupling)):
            if ids is None:
                per_group = torch.full((layout[1],), float(layout[0] * layout[2]), dtype=torch.float64)
                if sharded_zeros is None:
                    zero_per_group = (p.detach().reshape(layout) == 0).sum((0, 2)).double().cpu()
            else:
                flat = ids.reshape(-1).cpu()
                per_group = torch.bincount(flat, minlength=layout[1]).double()
                if sharded_zeros is None:
                    zero_per_group = torch.bincount(flat, (p.detach() == 0).reshape(-1).double().cpu(), layout[1])
            if sharded_zeros is not None:
                zero_per_group = sharded_zeros[i].cpu()
            numel.index_add_(0, c.cpu(), per_group)
            zeros.index_add_(0, c.cpu(), zero_per_group)
    rows, begin = [], 0
    for name, size, k, n in zip(terms.term_names, terms.term_sizes, terms.k, norms):
        elements = int(numel[begin : begin + size].sum())
        zero = float(zeros[begin : begin + size].sum()) / max(elements, 1)
        rows.append(TensorSparsity(name, (), int((n > 0).sum()), size, k, zero, elements))
        begin += size
    return rows


def _local_optimizer(source):
    """A ZeroRedundancyOptimizer's own ProxSGD, whose terms span every rank's params."""
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:
        return source
    return source.optim if isinstance(source, ZeroRedundancyOptimizer) else source


def sparsity_report(source, groups: GroupSpec = "filters") -> SparsityReport:
    """Groups kept and zero fraction per regularized tensor.

    Args:
        source: a :class:`wgsef.ProxSGD` or :class:`wgsef.ProxOptimizer` (reports every tensor of its regularized
            param groups with their own group specs and budgets, and every coupled
            term as one row over its coupled groups) or an ``nn.Module``
            (reports the weight of every conv and linear layer, grouped by ``groups``).
        groups: group spec used for an ``nn.Module``.
    """
    from .optim import ProxOptimizer, ProxSGD

    source = _local_optimizer(source)
    report = SparsityReport()
    if isinstance(source, (ProxSGD, ProxOptimizer)):
        for group in source.param_groups:
            if group["k"] is None:
                continue
            terms = source.prox_terms(group)
            if terms.coupled:
                report.extend(_coupled_rows(terms, terms.params))
                continue
            if terms.dtensors:
                report.extend(_sharded_rows(terms, terms.params))
                continue
            for i, p in enumerate(terms.params):
                k = terms.k[0] if terms.shared else terms.k[i]
                if terms.group_ids[i] is not None:
                    report.append(_row(terms.names[i], p, terms.group_ids[i], k))
                else:
                    # the (outer, groups, inner) view groups by its middle dim, like "channels"
                    view = p.detach().reshape(terms.layouts[i])
                    report.append(_row(terms.names[i], view, "channels", k, tuple(p.shape)))
        return report
    if isinstance(source, nn.Module):
        for name, module in source.named_modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                report.append(_row(f"{name}.weight", module.weight, groups, None))
        return report
    raise TypeError(
        f"source: expected a wgsef.ProxSGD, a wgsef.ProxOptimizer or an nn.Module, got {type(source).__name__}"
    )
