"""Group specifications: which elements of a weight tensor form one group.

A group spec is one of

* ``"filters"``: group ``i`` is ``x[i, ...]`` (a conv filter, a linear row);
* ``"channels"``: group ``j`` is ``x[:, j, ...]`` (a conv input channel, a linear column);
* ``"shapes"``: one group per index over dims ``1..``: ``x[:, j, a, b]`` across all filters;
* ``"layer"``: the whole tensor is one group;
* ``"elements"``: every element is its own group (WGSEF becomes the plain SEF);
* ``("heads", h)``: dim 0 split into ``h`` equal contiguous blocks (attention heads);
* ``("dim", d)``: group ``i`` is ``x.select(d, i)`` (``"filters"`` is ``("dim", 0)``,
  ``"channels"`` is ``("dim", 1)``); coupled groups use it for every member tensor;
* an integer tensor of x's shape holding each element's group id in ``[0, G)``.

Group order (for ``weights`` and for :func:`wgsef.group_norms`) is the index order
above; for ``"shapes"`` and ``"elements"`` it is the flat (row-major) index.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

GroupSpec = str | tuple | torch.Tensor

GROUP_TYPES = ("filters", "channels", "shapes", "layer", "elements", "heads", "dim")


class GroupLayout(NamedTuple):
    """How the ops see x: a strided ``(outer, groups, inner)`` shape, or ids."""

    shape: tuple[int, int, int] | None
    group_ids: torch.Tensor | None
    num_groups: int


def _strided_shape(x: torch.Tensor, groups: str | tuple) -> tuple[int, int, int]:
    shape = tuple(x.shape)
    n = math.prod(shape)
    if isinstance(groups, tuple) and len(groups) == 2 and groups[0] == "dim":
        d = groups[1]
        if isinstance(d, bool) or not isinstance(d, int) or not -x.dim() <= d < x.dim():
            raise ValueError(f"groups: ('dim', d) needs an int d in [{-x.dim()}, {x.dim()}), got {d!r}")
        d %= x.dim()
        return (math.prod(shape[:d]), shape[d], math.prod(shape[d + 1 :]))
    if isinstance(groups, tuple):
        if len(groups) != 2 or groups[0] != "heads" or isinstance(groups[1], bool) or not isinstance(groups[1], int):
            raise ValueError(f"groups: expected ('heads', num_heads), got {groups!r}")
        h = groups[1]
        if x.dim() < 1 or h < 1 or shape[0] % h != 0:
            raise ValueError(f"groups: ('heads', {h}) needs num_heads >= 1 dividing x.shape[0], got x of shape {shape}")
        return (1, h, n // h)
    if groups == "layer":
        return (1, 1, n)
    if groups == "elements":
        return (1, n, 1)
    if groups == "filters":
        if x.dim() < 1:
            raise ValueError("groups: 'filters' needs x with at least 1 dimension, got a 0-dim tensor")
        return (1, shape[0], math.prod(shape[1:]))
    if groups in ("channels", "shapes"):
        if x.dim() < 2:
            raise ValueError(f"groups: {groups!r} needs x with at least 2 dimensions, got shape {shape}")
        if groups == "channels":
            return (shape[0], shape[1], math.prod(shape[2:]))
        return (shape[0], math.prod(shape[1:]), 1)
    raise ValueError(
        f"groups: expected one of {GROUP_TYPES[:-2]}, ('heads', h), ('dim', d) or a tensor of group ids, got {groups!r}"
    )


def group_layout(x: torch.Tensor, groups: GroupSpec, weights: torch.Tensor | None = None) -> GroupLayout:
    """Resolve a group spec for ``x``; raises ValueError/TypeError naming the bad argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if isinstance(groups, torch.Tensor):
        ids = groups
        if ids.dtype.is_floating_point or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"groups: a group-id tensor must have an integer dtype, got {ids.dtype}")
        if ids.shape != x.shape:
            raise ValueError(f"groups: a group-id tensor must have x's shape {tuple(x.shape)}, got {tuple(ids.shape)}")
        if ids.device != x.device:
            raise ValueError(f"groups: group ids are on {ids.device}, x on {x.device}")
        ids = ids.to(torch.int64)
        lowest, highest = torch.stack(torch.aminmax(ids)).tolist() if ids.numel() > 0 else (0, -1)
        if lowest < 0:
            raise ValueError(f"groups: group ids must be >= 0, got {lowest}")
        num_groups = weights.numel() if weights is not None else highest + 1
        if highest >= num_groups:
            raise ValueError(
                f"groups: group ids must lie in [0, {num_groups}) (one weight per group), got id {highest}"
            )
        return GroupLayout(None, ids, num_groups)
    shape = _strided_shape(x, groups)
    return GroupLayout(shape, None, shape[1])


def renumbered(
    layout: GroupLayout, weights: torch.Tensor | None
) -> tuple[GroupLayout, torch.Tensor | None, torch.Tensor]:
    """The groups of an id layout that hold elements, renumbered 0..G'-1, with their
    weights and the original ids of the kept groups. Empty groups change neither
    WGSEF's value nor its prox, so ops may run on these alone; with ids far larger
    than the tensor (more groups than elements) this keeps per-group memory in
    proportion to the elements rather than to the largest id."""
    used, inverse = torch.unique(layout.group_ids, return_inverse=True)
    kept = weights[used] if weights is not None else None
    return GroupLayout(None, inverse.reshape(layout.group_ids.shape), used.numel()), kept, used


def num_groups(x: torch.Tensor, groups: GroupSpec = "filters") -> int:
    """The number of groups ``groups`` defines on ``x``."""
    return group_layout(x, groups).num_groups
