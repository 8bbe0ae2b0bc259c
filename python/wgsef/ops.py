"""Fake kernels and autograd formulas for the ``torch.ops.wgsef`` ops.

The schemas live in ``csrc/ops.cpp`` (one ``TORCH_LIBRARY`` block); this module,
named there by ``set_python_module``, completes each op's contract so that
``torch.compile`` can trace it and ``torch.library.opcheck`` passes. The
user-facing functions are in :mod:`wgsef.functional`.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loading the extension registers the ops)

__all__ = [
    "group_norms",
    "nm_decay",
    "nm_mask",
    "prox",
    "prox_",
    "prox_coupled_",
    "prox_elements_",
    "prox_multi_",
    "sgd_group_squares_",
    "value",
    "value_backward",
]

group_norms = torch.ops.wgsef.group_norms.default
value = torch.ops.wgsef.value.default
value_backward = torch.ops.wgsef.value_backward.default
prox = torch.ops.wgsef.prox.default
prox_ = torch.ops.wgsef.prox_.default
prox_multi_ = torch.ops.wgsef.prox_multi_.default
prox_coupled_ = torch.ops.wgsef.prox_coupled_.default
prox_elements_ = torch.ops.wgsef.prox_elements_.default
sgd_group_squares_ = torch.ops.wgsef.sgd_group_squares_.default
nm_mask = torch.ops.wgsef.nm_mask.default
nm_decay = torch.ops.wgsef.nm_decay.default


def _num_groups(x: torch.Tensor, group_ids: torch.Tensor | None, num_groups: int) -> int:
    return num_groups if group_ids is not None else x.shape[1]


def _no_meta_beside_real(op: str, x: torch.Tensor | None, x_name: str = "x", **args) -> None:
    """A meta tensor among the arguments sends a call on real tensors to these fake
    kernels (the dispatcher picks the meta backend), which would return
    uninitialised memory; raise instead."""
    if x is None or x.device.type == "meta":
        return
    for name, arg in args.items():
        for t in arg if isinstance(arg, (list, tuple)) else [arg]:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                raise ValueError(
                    f"wgsef.{op}: {name} is on the meta device while {x_name} is on {x.device}; "
                    f"pass {name} on {x_name}'s device (or, for a scalar, on the CPU)"
                )


@torch.library.register_fake("wgsef::group_norms")
def _group_norms_fake(x, group_ids=None, num_groups=-1):
    _no_meta_beside_real("group_norms", x, group_ids=group_ids)
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.new_empty((_num_groups(x, group_ids, num_groups),), dtype=dtype)


@torch.library.register_fake("wgsef::value")
def _value_fake(x, k, weights=None, group_ids=None, num_groups=-1):
    _no_meta_beside_real("value", x, weights=weights, group_ids=group_ids)
    return x.new_empty(())


@torch.library.register_fake("wgsef::value_backward")
def _value_backward_fake(grad, x, k, weights=None, group_ids=None, num_groups=-1):
    _no_meta_beside_real("value_backward", x, grad=grad, weights=weights, group_ids=group_ids)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("wgsef::prox")
def _prox_fake(x, k, lam, weights=None, group_ids=None, num_groups=-1):
    _no_meta_beside_real("prox", x, lam=lam, weights=weights, group_ids=group_ids)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("wgsef::prox_")
def _prox_inplace_fake(x, k, lam, weights=None, group_ids=None, num_groups=-1):
    _no_meta_beside_real("prox_", x, lam=lam, weights=weights, group_ids=group_ids)
    return None


@torch.library.register_fake("wgsef::prox_coupled_")
def _prox_coupled_fake(xs, layout, group_ids, coupling, term_sizes, weights, k, lam, lr):
    real = next((x for x in xs if x.device.type != "meta"), None)
    _no_meta_beside_real(
        "prox_coupled_", real, "xs", xs=xs, group_ids=group_ids, coupling=coupling, weights=weights, lam=lam, lr=lr
    )
    return None


@torch.library.register_fake("wgsef::prox_multi_")
def _prox_multi_fake(xs, layout, group_ids, weights, k, lam, lr, shared=False):
    real = next((x for x in xs if x.device.type != "meta"), None)
    _no_meta_beside_real("prox_multi_", real, "xs", xs=xs, group_ids=group_ids, weights=weights, lam=lam, lr=lr)
    return None


@torch.library.register_fake("wgsef::prox_elements_")
def _prox_elements_fake(xs, weights, counted, k, lam, lr, shared, process_groups, process_index, process_count):
    real = next((x for x in xs if x.device.type != "meta"), None)
    _no_meta_beside_real("prox_elements_", real, "xs", xs=xs, weights=weights, lam=lam, lr=lr)
    return None


@torch.library.register_fake("wgsef::sgd_group_squares_")
def _sgd_group_squares_fake(
    params,
    grads,
    momentum_buffers,
    layout,
    lr,
    weight_decay=0.0,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    maximize=False,
):
    real = next((p for p in params if p.device.type != "meta"), None)
    _no_meta_beside_real(
        "sgd_group_squares_", real, "params", params=params, grads=grads, momentum_buffers=momentum_buffers
    )
    device = params[0].device if params else torch.device("cpu")
    return torch.empty(sum(layout[1::3]), dtype=torch.float64, device=device)


def _value_setup_context(ctx, inputs, output):
    x, k, weights, group_ids, num_groups = inputs
    ctx.save_for_backward(x, weights, group_ids)
    ctx.k = k
    ctx.num_groups = num_groups


def _value_backward_formula(ctx, grad):
    x, weights, group_ids = ctx.saved_tensors
    grad_x = value_backward(grad, x, ctx.k, weights, group_ids, ctx.num_groups)
    return grad_x, None, None, None, None


torch.library.register_autograd("wgsef::value", _value_backward_formula, setup_context=_value_setup_context)


@torch.library.register_fake("wgsef::nm_mask")
def _nm_mask_fake(w, n, m, dim=-1):
    return torch.empty_like(w, dtype=torch.bool, memory_format=torch.contiguous_format)


@torch.library.register_fake("wgsef::nm_decay")
def _nm_decay_fake(w, n, m, dim, decay, grad_mode="ste", srste_weight=0.0):
    _no_meta_beside_real("nm_decay", w, "w", decay=decay)
    out = torch.empty_like(w, memory_format=torch.contiguous_format)
    if grad_mode == "scaled" or srste_weight > 0:
        return out, torch.empty_like(w, dtype=torch.bool, memory_format=torch.contiguous_format)
    return out, w.new_empty((0,), dtype=torch.bool)


def _nm_decay_setup_context(ctx, inputs, output):
    w, _, _, _, decay, grad_mode, srste_weight = inputs
    mask = output[1]
    ctx.mark_non_differentiable(mask)
    ctx.grad_mode = grad_mode
    ctx.srste_weight = srste_weight
    ctx.save_for_backward(mask, decay, w if srste_weight else None)


def _nm_decay_backward(ctx, grad_out, grad_mask):
    mask, decay, w = ctx.saved_tensors
    grad = grad_out
    if ctx.grad_mode == "scaled":
        grad = torch.where(mask, grad_out, grad_out * decay.to(grad_out.dtype))
    if ctx.srste_weight:
        grad = grad + ctx.srste_weight * torch.where(mask, torch.zeros_like(w), w)
    return grad, None, None, None, None, None, None


torch.library.register_autograd("wgsef::nm_decay", _nm_decay_backward, setup_context=_nm_decay_setup_context)
