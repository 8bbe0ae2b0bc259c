"""The WGSEF regularizer and its proximal operator on one weight tensor.

For a partition of x into groups ``G_1..G_m`` with weights ``d_i > 0`` and a
budget of ``k`` groups, WGSEF is the convex envelope of

    g(x) = 1/2 * sum_i d_i * ||x_{G_i}||^2   restricted to   #{i : x_{G_i} != 0} <= k,

which equals ``1/2 * (k-support norm of z)^2`` with ``z_i = sqrt(d_i) * ||x_{G_i}||``.
``k = 1`` gives the squared weighted group lasso, ``k >= m`` plain weighted weight
decay. Its proximal operator scales each group by a factor in ``[0, 1]`` and sets
weak groups exactly to zero. Both take one streaming pass (value) or two (prox)
over x and a worst-case O(m) threshold search over the groups.

NaN or Inf inside x: ``value`` returns NaN (NaN present) or +Inf (only Inf), and
``prox`` returns a tensor of NaN, since the threshold is undefined.
"""

from __future__ import annotations

import functools
import math

import torch

from . import distributed, ops
from .groups import GroupSpec, group_layout, renumbered

__all__ = ["group_norms", "prox", "prox_", "value"]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k: expected k >= 0, got {k}")
    return k


def _lam_tensor(lam: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if distributed.is_dtensor(lam):
        lam = lam.full_tensor()
    if isinstance(lam, torch.Tensor):
        if lam.device != x.device and lam.device.type != "cpu":
            raise ValueError(f"lam: expected a tensor on the CPU or on x's device {x.device}, got {lam.device}")
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"lam: expected a float or a one-element tensor, got {type(lam).__name__}")
    # comparisons rather than math.isfinite: under torch.compile lam may be symbolic
    if not (lam >= 0 and lam < math.inf):
        raise ValueError(f"lam: expected a finite value >= 0, got {lam}")
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        # traced, or under a mode such as FakeTensorMode: a tensor of that
        # context, which must not reach the cache of real calls
        return torch.tensor(lam, dtype=torch.float64, device="cpu")
    return _lam_constant(float(lam))


@functools.lru_cache(maxsize=64)
def _lam_constant(lam: float) -> torch.Tensor:
    """A float lam as the 0-dim CPU tensor the ops take, made once per value (making
    it costs more than a prox on a small tensor); the ops only read it."""
    return torch.tensor(lam, dtype=torch.float64, device="cpu")


def _weights_tensor(weights, x: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        if isinstance(weights, (str, bytes)):
            raise TypeError(f"weights: expected a tensor or a sequence of floats, got {type(weights).__name__}")
        try:
            return torch.as_tensor(weights, dtype=torch.float64, device=x.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"weights: expected a tensor or a sequence of floats, got {weights!r}") from err
    if weights.device != x.device:
        raise ValueError(f"weights: expected a tensor on x's device {x.device}, got {weights.device}")
    return weights


def _resolve(x: torch.Tensor, groups: GroupSpec, weights):
    weights = _weights_tensor(weights, x)
    layout = group_layout(x, groups, weights)
    if layout.shape is not None:
        return x.reshape(layout.shape), layout, weights
    if layout.num_groups > x.numel():
        _check_weight_values(weights)
        layout, weights, _ = renumbered(layout, weights)
    return x, layout, weights


def _resolve_sharded(x: torch.Tensor, groups: GroupSpec, weights, k: int | None = None, lam=None, check=None):
    """The layout of a DTensor's global shape, its weights and lam (DTensors of weights
    or lam are gathered: every rank needs all of them), once every rank has checked
    its arguments (`k`, `lam`, and `check()` if given) and holds the same ones: one
    small all-reduce over x's mesh makes every rank raise otherwise, before the
    call's own collectives, so that no rank waits in one alone."""
    layout = lam_t = error = None
    fingerprint: dict = dict.fromkeys(("k", "lam", "groups", "weights"))  # the same keys on every rank
    try:
        distributed.check_placements(x, "x")
        if check is not None:
            check()
        if k is not None:
            fingerprint["k"] = _check_k(k)
        if lam is not None:
            lam_t = _lam_tensor(lam, x)
            fingerprint["lam"] = lam_t.tolist() if isinstance(lam_t, torch.Tensor) else lam_t
        if distributed.is_dtensor(groups):
            groups = groups.full_tensor()  # group ids: every rank needs them whole
        if distributed.is_dtensor(weights):
            weights = weights.full_tensor()
        weights = _weights_tensor(weights, x)
        layout = group_layout(x, groups, weights)
        _check_weight_values(weights)
        fingerprint["groups"] = (layout.shape, layout.num_groups, distributed.content(layout.group_ids))
        fingerprint["weights"] = distributed.content(weights)
    except (ValueError, TypeError, RuntimeError) as err:
        error = err
    distributed.mesh_agree(x, fingerprint, error)
    return layout, weights, lam_t


def _check_weight_values(weights: torch.Tensor | None) -> None:
    # the ops check the weights they get; renumbering hands them a subset
    if weights is not None and not bool(((weights > 0) & torch.isfinite(weights)).all()):
        raise ValueError("weights: must be positive and finite")


def group_norms(x: torch.Tensor, groups: GroupSpec = "filters") -> torch.Tensor:
    """Euclidean norm of every group of ``x``.

    Args:
        x: floating-point tensor (float16, bfloat16, float32 or float64).
        groups: group spec, see :mod:`wgsef.groups`.

    Returns:
        1-D tensor of length m (number of groups), in group order; float32 for
        16-bit inputs, else x's dtype. Blocks of 256 squares are summed in float
        lanes (float64 for float64 inputs), the blocks in float64. O(n) time.
    """
    if distributed.is_dtensor(x):
        return distributed.group_norms(x, _resolve_sharded(x, groups, None)[0])
    layout = group_layout(x, groups)
    if layout.shape is not None:
        return ops.group_norms(x.reshape(layout.shape), None, layout.num_groups)
    if layout.num_groups > x.numel():  # most groups empty: norms of the used ones, put in place
        used_layout, _, used = renumbered(layout, None)
        norms = ops.group_norms(x, used_layout.group_ids, used_layout.num_groups)
        return norms.new_zeros(layout.num_groups).index_copy_(0, used, norms)
    return ops.group_norms(x, layout.group_ids, layout.num_groups)


def value(
    x: torch.Tensor,
    k: int,
    groups: GroupSpec = "filters",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGSEF_{k,d}(x), the weighted group sparse envelope of x.

    ``WGSEF(x) = 1/2 * min_{u in [0,1]^m, sum u <= k} sum_i d_i ||x_{G_i}||^2 / u_i``.
    ``k = 0`` gives 0 at x = 0 and +inf elsewhere.

    Args:
        x: floating-point tensor of any shape.
        k: number of groups the envelope leaves free, ``k >= 0``.
        groups: group spec (``"filters"``, ``"channels"``, ``"shapes"``, ``"layer"``,
            ``"elements"``, ``("heads", h)`` or an id tensor), see :mod:`wgsef.groups`.
        weights: ``None`` (all 1) or positive weights ``d``, one per group.

    Returns:
        0-dim tensor of x's dtype. Differentiable in x: the gradient is the
        subgradient ``d_i * x_{G_i} / u_i`` at the optimal ``u`` (0 on zero groups).

    Cost: one read of x and a worst-case O(m) search in float64.
    """
    if distributed.is_dtensor(x):
        layout, weights, _ = _resolve_sharded(x, groups, weights, k)
        return distributed.value(x, k, layout, weights)
    _check_k(k)
    view, layout, weights = _resolve(x, groups, weights)
    return ops.value(view, k, weights, layout.group_ids, layout.num_groups)


def prox(
    x: torch.Tensor,
    k: int,
    lam: float | torch.Tensor,
    groups: GroupSpec = "filters",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Proximal operator ``argmin_z lam * WGSEF_{k,d}(z) + 1/2 ||z - x||^2``.

    Each group is scaled, ``z_{G_i} = x_{G_i} * u_i / (u_i + lam * d_i)`` with
    ``u_i = clip(sqrt(d_i) ||x_{G_i}|| * eta - lam * d_i, 0, 1)`` and eta the root of
    ``sum_i u_i = k``. Groups with ``u_i = 0`` become exactly zero. At most k groups
    are left unshrunk, but more than k may survive partially shrunk unless lam is
    large enough (see ``docs/design.md`` §2.5). Special cases: ``lam = 0``
    returns a copy of x, ``k = 0`` returns zeros, at most k non-zero groups gives
    ``x_{G_i} / (1 + lam * d_i)``.

    Args:
        x: floating-point tensor of any shape; not modified.
        k: group budget, ``k >= 0``.
        lam: step size times regularization strength, finite and ``>= 0``; a
            float or a one-element tensor (use a tensor under ``torch.compile`` when
            it changes between calls).
        groups: group spec, see :mod:`wgsef.groups`.
        weights: ``None`` (all 1) or positive weights ``d``, one per group.

    Returns:
        A new contiguous tensor of x's shape and dtype.

    Cost: two streaming passes over x and a worst-case O(m) threshold search.
    """
    if distributed.is_dtensor(x):
        layout, weights, lam_t = _resolve_sharded(x, groups, weights, k, lam)
        return distributed.prox_(x.detach().clone(), k, lam_t, layout, weights)
    _check_k(k)
    view, layout, weights = _resolve(x, groups, weights)
    out = ops.prox(view, k, _lam_tensor(lam, x), weights, layout.group_ids, layout.num_groups)
    return out.view(x.shape)


def prox_(
    x: torch.Tensor,
    k: int,
    lam: float | torch.Tensor,
    groups: GroupSpec = "filters",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-place :func:`prox`: overwrites x with the proximal point and returns x."""
    if distributed.is_dtensor(x):

        def writable() -> None:
            if x.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(
                    "x: a DTensor that requires grad cannot be changed in place; use wgsef.prox, or torch.no_grad()"
                )

        layout, weights, lam_t = _resolve_sharded(x, groups, weights, k, lam, check=writable)
        return distributed.prox_(x, k, lam_t, layout, weights)
    _check_k(k)
    lam_t = _lam_tensor(lam, x)
    _, layout, weights = _resolve(x, groups, weights)
    if layout.shape is None:
        ops.prox_(x, k, lam_t, weights, layout.group_ids, layout.num_groups)
    elif x.is_contiguous():
        ops.prox_(x.view(layout.shape), k, lam_t, weights, None, -1)
    else:
        tmp = x.contiguous()
        ops.prox_(tmp.view(layout.shape), k, lam_t, weights, None, -1)
        x.copy_(tmp)
    return x
