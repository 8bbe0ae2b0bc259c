"""ProxSGD: stochastic proximal gradient with the WGSEF regularizer.

Each step is ``p <- prox_{lr * lam * WGSEF}(p - lr * d_p)``: the SGD direction
``d_p`` (momentum, dampening, Nesterov, L2 weight decay, maximize) is exactly
``torch.optim.SGD``'s, computed by torch's own functional ``sgd`` (or, with
``capturable=True``, by foreach ops that read ``lr`` from a device tensor); then one
native call (``torch.ops.wgsef.prox_multi_``) applies the proximal step to every
regularized tensor of the param group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.sgd import sgd as sgd_functional

from . import functional, ops
from .groups import GroupSpec, group_layout, renumbered

__all__ = ["ProxSGD", "regularized_param_groups"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _per_tensor(value: Any, n: int, name: str) -> list:
    """Broadcast a scalar option to n tensors, or check a per-tensor list."""
    if isinstance(value, (list, tuple)) and not (name == "groups" and _is_tuple_spec(value)):
        if len(value) != n:
            raise ValueError(f"{name}: expected one entry per parameter ({n}), got {len(value)}")
        return list(value)
    return [value] * n


def _is_tuple_spec(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] in ("heads", "dim")


def _resolve_k(k: int | float, num_groups: int, where: str) -> int:
    """A group budget: an int count, or a float kept fraction in (0, 1]."""
    if isinstance(k, bool) or not _is_number(k):
        raise TypeError(f"k: expected an int count or a float fraction, got {type(k).__name__}{where}")
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"k: a kept fraction must lie in (0, 1], got {k}{where}")
        return max(1, round(k * num_groups))
    if k < 0:
        raise ValueError(f"k: expected k >= 0, got {k}{where}")
    if k > num_groups:
        raise ValueError(f"k: {k} exceeds the number of groups ({num_groups}){where}")
    return k


class _ProxTerms:
    """The WGSEF terms of one param group, as ``prox_multi_`` or ``prox_coupled_``
    takes them: each tensor's group layout, the weights and the budgets.

    Without ``coupling`` each tensor is its own term (or, with ``shared_k``, all of
    them are one term over the union of their groups). With ``coupling`` the
    terms are over coupled groups: ``coupling[i][g]`` is the coupled group of
    tensor i's group g, terms are runs of ``term_sizes`` consecutive coupled groups
    (one run with ``shared_k``), and ``weights`` holds one weight per coupled group.
    """

    def __init__(self, group: dict[str, Any]):
        params: list[Tensor] = group["params"]
        n = len(params)
        names = group.get("names") or [f"params[{i}]" for i in range(n)]
        self.coupled = group.get("coupling") is not None
        specs = _per_tensor(group["groups"], n, "groups")
        weights = [None] * n if self.coupled else _per_tensor(group["weights"], n, "weights")
        self.layouts: list[tuple[int, int, int]] = []
        self.group_ids: list[Tensor | None] = []
        self.weights: list[Tensor | None] = []
        self.num_groups: list[int] = []
        for p, spec, w, name in zip(params, specs, weights, names):
            w = _weight_tensor(w, p.device, name)
            try:
                layout = group_layout(p, spec, w)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{err} (for {name})") from None
            if layout.group_ids is not None and w is None and layout.num_groups > p.numel() and not self.coupled:
                layout, _, _ = renumbered(layout, None)  # ids far beyond the tensor: the used groups
            if w is not None:
                _check_weights(w, layout.num_groups, name)
            self.layouts.append(layout.shape or (0, layout.num_groups, 0))
            self.group_ids.append(layout.group_ids)
            self.weights.append(w)
            self.num_groups.append(layout.num_groups)
        self.names = names
        self.shared = bool(group["shared_k"])
        if self.coupled:
            self._init_coupling(group, params)
            return
        self.term_names = ["shared"] if self.shared else list(names)
        if self.shared:
            self.k = [_resolve_k(group["k"], sum(self.num_groups), " (shared budget)")]
        else:
            ks = _per_tensor(group["k"], n, "k")
            self.k = [_resolve_k(k, m, f" for {name}") for k, m, name in zip(ks, self.num_groups, names)]

    def _init_coupling(self, group: dict[str, Any], params: list[Tensor]) -> None:
        sizes = group.get("term_sizes")
        if not isinstance(sizes, (list, tuple)) or not all(_is_int(v) and v >= 0 for v in sizes):
            raise ValueError(f"term_sizes: expected a list of ints >= 0 (coupled groups per term), got {sizes!r}")
        total = sum(sizes)
        coupling = _per_tensor(group["coupling"], len(params), "coupling")
        self.coupling: list[Tensor] = []
        for c, p, m, name in zip(coupling, params, self.num_groups, self.names):
            if not isinstance(c, Tensor) or c.dtype != torch.int64 or c.dim() != 1 or c.numel() != m:
                raise ValueError(f"coupling: expected an int64 tensor of {m} coupled group ids for {name}, got {c!r}")
            if c.numel() and not (0 <= int(c.min()) and int(c.max()) < total):
                raise ValueError(f"coupling: ids of {name} must lie in [0, {total}) (the sum of term_sizes)")
            self.coupling.append(c.to(p.device))
        names = group.get("term_names") or [f"term[{t}]" for t in range(len(sizes))]
        self.term_sizes = [total] if self.shared else list(sizes)
        self.term_names = ["shared"] if self.shared else list(names)
        w = group["weights"]
        self.coupled_weights = None
        if w is not None:
            device = params[0].device if params else None
            self.coupled_weights = _check_weights(
                _weight_tensor(w, device, "the coupled groups"), total, "the coupled groups"
            )
        ks = [group["k"]] if self.shared else _per_tensor(group["k"], len(sizes), "k")
        self.k = [_resolve_k(k, m, f" for {name}") for k, m, name in zip(ks, self.term_sizes, self.term_names)]

    @property
    def num_terms(self) -> int:
        return len(self.k)

    def term_norms(self, params: Sequence[Tensor]) -> list[Tensor]:
        """Each term's group norms in float64 (differentiable), in group order."""
        squares = []
        for p, layout, ids in zip(params, self.layouts, self.group_ids):
            x = p.double()
            if ids is None:
                squares.append(x.reshape(layout).square().sum((0, 2)))
            else:  # weights may declare more groups than p has elements: sum by id
                squares.append(x.new_zeros(layout[1]).index_add(0, ids.reshape(-1), x.reshape(-1).square()))
        if self.coupled:
            total = sum(self.term_sizes)
            joint = squares[0].new_zeros(total) if squares else torch.zeros(total, dtype=torch.float64)
            for sq, c in zip(squares, self.coupling):
                joint = joint.index_add(0, c, sq)
            return list(torch.split(_sqrt(joint), self.term_sizes))
        norms = [_sqrt(sq) for sq in squares]
        return [torch.cat(norms)] if self.shared else norms

    def term_weights(self) -> list[Tensor | None]:
        """Each term's group weights (None: all 1)."""
        if self.coupled:
            w = self.coupled_weights
            return [None] * self.num_terms if w is None else list(torch.split(w, self.term_sizes))
        if not self.shared:
            return list(self.weights)
        if all(w is None for w in self.weights):
            return [None]
        return [
            torch.cat(
                [
                    torch.ones(m, dtype=torch.float64) if w is None else w.double().cpu()
                    for w, m in zip(self.weights, self.num_groups)
                ]
            )
        ]

    def tensor_masks(self, term_masks: list[Tensor]) -> list[Tensor]:
        """Per-tensor masks over each tensor's own groups from per-term masks."""
        if self.coupled:
            joint = torch.cat(term_masks)
            return [joint.to(c.device)[c] for c in self.coupling]
        return list(torch.split(term_masks[0], self.num_groups)) if self.shared else list(term_masks)


def _sqrt(squares: Tensor) -> Tensor:
    """sqrt with a zero gradient at 0 (the subgradient WGSEF's gradient uses there)."""
    positive = squares > 0
    return torch.where(positive, squares, 1.0).sqrt() * positive


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _weight_tensor(w: Any, device: torch.device | None, name: str) -> Tensor | None:
    if w is None or isinstance(w, Tensor):
        return w
    try:
        return torch.as_tensor(w, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"weights: expected a tensor or a sequence of floats for {name}, got {w!r}") from err


def _check_weights(w: Tensor, num_groups: int, name: str) -> Tensor:
    if w.numel() != num_groups:
        raise ValueError(f"weights: {name} has {num_groups} groups, got {w.numel()} weights")
    if not bool((w > 0).all() and torch.isfinite(w).all()):
        raise ValueError(f"weights: must be positive and finite for {name}")
    return w


def _as_tensor(value: float | Tensor | Sequence[float]) -> Tensor:
    if isinstance(value, Tensor):
        return value
    return torch.tensor(value, dtype=torch.float64)


def _sgd_on_device(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor | None], lr: Tensor, group: dict[str, Any]
) -> None:
    """torch.optim.SGD's update with lr read from a device tensor: no host sync, so
    the step can be captured in a CUDA graph (after a first step created the buffers).
    """
    if group["maximize"]:
        grads = torch._foreach_neg(grads)
    if group["weight_decay"] != 0:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
    momentum = group["momentum"]
    if momentum != 0:
        if all(buf is not None for buf in bufs):
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
        else:  # the first step: buffers start as the direction
            for i, buf in enumerate(bufs):
                if buf is None:
                    bufs[i] = grads[i].detach().clone()
                else:
                    buf.mul_(momentum).add_(grads[i], alpha=1 - group["dampening"])
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
    # lr as float32 (float64 for float64 params): float32 params then stay on
    # foreach's fused path, and 16-bit params do not round lr to 16 bits
    lr = lr.to(torch.float64 if params[0].dtype == torch.float64 else torch.float32)
    torch._foreach_sub_(params, torch._foreach_mul(grads, lr))


def _num_terms(group: dict[str, Any]) -> int:
    """How many WGSEF terms the group's options declare (lam may have one value per term)."""
    if group["shared_k"]:
        return 1
    if group.get("coupling") is not None:
        sizes = group.get("term_sizes")
        return len(sizes) if isinstance(sizes, (list, tuple)) else 1
    return len(group["params"])


def _check_lam(lam: Any, group: dict[str, Any]) -> None:
    values = (
        lam.detach().reshape(-1).tolist()
        if isinstance(lam, Tensor)
        else (list(lam) if isinstance(lam, (list, tuple)) else [lam])
    )
    expected = _num_terms(group)
    if len(values) not in (1, expected):
        what = "term" if group.get("coupling") is not None else "parameter"
        raise ValueError(f"lam: expected one value or one per {what} ({expected}), got {len(values)}")
    for v in values:
        if not _is_number(v) or not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"lam: expected finite values >= 0, got {lam!r}")


class ProxSGD(Optimizer):
    r"""SGD followed by the WGSEF proximal step: a drop-in for ``torch.optim.SGD``.

    For each param group with a group budget ``k``, every step does

    .. math:: p \leftarrow \operatorname{prox}_{lr \cdot \lambda \cdot \mathrm{WGSEF}_{k,d}}(p - lr \cdot d_p)

    where ``d_p`` is exactly ``torch.optim.SGD``'s update direction. Param groups
    with ``k=None`` or ``lam=0`` behave exactly like ``torch.optim.SGD``.

    Args:
        params: iterable of parameters or of param-group dicts (see
            :func:`regularized_param_groups`); every option below may be set per group.
        lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, fused: as in
            ``torch.optim.SGD`` (``fused=True`` runs the SGD update as torch's one-pass
            fused kernel; not with ``capturable``). Pass ``lr`` as a tensor to use ``torch.compile(opt.step)``
            with an LR scheduler without recompiling.
        lam: regularization strength ``lambda >= 0``: a float, a tensor (one element, or
            one per parameter of the group), or a list with one float per parameter.
        k: group budget per WGSEF term: an int count, a float kept fraction in (0, 1]
            of the term's groups, or a list with one entry per parameter; ``None``
            leaves the group unregularized.
        groups: group spec (``"filters"``, ``"channels"``, ``"shapes"``, ``"layer"``,
            ``"elements"``, ``("heads", h)`` or an id tensor), or a list with one per
            parameter. See :mod:`wgsef.groups`.
        weights: ``None``, or a list with one per parameter of ``None`` or a tensor of
            positive group weights ``d``.
        shared_k: ``False``: each parameter is its own WGSEF term (per-layer ``k_l``,
            ``lam_l``). ``True``: one term over all groups of all the group's parameters,
            with one budget ``k`` (e.g. a network-wide filter budget, or ``groups="layer"``
            so that whole layers compete and ``k`` of them survive).

    **Reaching exactly k groups.** A prox step leaves at most ``k`` groups unshrunk,
    but more may survive partially shrunk unless ``lr * lam`` exceeds the term's
    ``lambda_crit`` (docs/design.md §2.5). For a guaranteed level, call
    :meth:`freeze_support` for the last part of training (a healing phase): it keeps
    the ``k`` groups of each term with the largest ``||p_i|| / sqrt(d_i)`` (ties to the
    lower index), sets the others to exactly zero and holds them there on every
    later step, while the kept groups train by plain SGD with the regularizer off.
    Training then ends with at most ``k`` non-zero groups per term (exactly ``k`` unless
    a kept group becomes exactly zero). The masks are optimizer state, so they
    survive ``state_dict``/``load_state_dict``.

        capturable: ``True`` makes :meth:`step` free of host synchronisation, so that
            it can be captured in a CUDA graph (``torch.cuda.graph``) once a first,
            uncaptured step has created the momentum buffers and device copies. The
            SGD update then runs as foreach ops that read ``lr`` from a device tensor
            (equal to ``torch.optim.SGD`` up to rounding), and ``lr`` and ``lam`` go
            to ``prox_multi_`` as device tensors. Tensors on the params' device are
            read in place on every step (update them in place, e.g. ``lr.fill_(...)``,
            to schedule a captured step); Python numbers are copied to the device
            when they change, which cannot happen inside a capture. The params of a
            group must share one device.

    The SGD part is torch's own (``torch.optim.sgd.sgd``), so it allocates what
    ``torch.optim.SGD`` does (nothing full-size without weight decay, beyond the
    momentum buffers); the prox works in place.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        lam: float | Tensor | Sequence[float] = 0.0,
        k: int | float | Sequence[int | float] | None = None,
        groups: GroupSpec | Sequence[GroupSpec] = "filters",
        weights: Sequence[Tensor | None] | None = None,
        shared_k: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=False,
            lam=lam,
            k=k,
            groups=groups,
            weights=weights,
            shared_k=shared_k,
            coupling=None,
            term_sizes=None,
            capturable=capturable,
        )
        self._terms_by_group: dict[int, tuple[tuple, _ProxTerms]] = {}
        self._device_scalars: dict[tuple[int, str], tuple[Any, Tensor]] = {}
        super().__init__(params, defaults)

    def _prox_terms(self, group: dict[str, Any]) -> _ProxTerms:
        """The group's prox arguments, rebuilt only when its options or params change."""
        k = group["k"]
        key = (
            tuple(id(p) for p in group["params"]),
            id(group["groups"]),
            id(group["weights"]),
            tuple(k) if isinstance(k, (list, tuple)) else k,
            group["shared_k"],
            id(group.get("coupling")),
            tuple(group.get("term_sizes") or ()),
        )
        cached = self._terms_by_group.get(id(group))
        if cached is None or cached[0] != key:
            cached = (key, _ProxTerms(group))
            self._terms_by_group[id(group)] = cached
        return cached[1]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            self._validate(self.param_groups[-1])
        except (ValueError, TypeError):
            self._terms_by_group.pop(id(self.param_groups.pop()), None)
            raise

    def _validate(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("lr: a tensor lr must have one element")
        if not float(lr) >= 0.0:
            raise ValueError(f"lr: expected lr >= 0, got {lr}")
        if group["momentum"] < 0.0:
            raise ValueError(f"momentum: expected momentum >= 0, got {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"weight_decay: expected weight_decay >= 0, got {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")
        _check_lam(group["lam"], group)
        if not isinstance(group["capturable"], bool):
            raise TypeError(f"capturable: expected a bool, got {type(group['capturable']).__name__}")
        if group["capturable"] and group["fused"]:
            raise ValueError("fused: not with capturable=True (the capturable step runs its own foreach update)")
        if group["capturable"] and len({p.device for p in group["params"]}) > 1:
            raise ValueError("capturable: the params of a param group must share one device")
        if group["k"] is not None:
            self._prox_terms(group)  # raises on groups, weights or k that do not fit the parameters

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._terms_by_group = {}
        self._device_scalars = {}
        for group in self.param_groups:
            for key, default in self.defaults.items():
                group.setdefault(key, default)

    @staticmethod
    def _regularized(group: dict[str, Any]) -> bool:
        lam = group["lam"]
        if group["k"] is None:
            return False
        if isinstance(lam, Tensor):
            return True  # a tensor lam may be scheduled; a zero lam makes the prox the identity
        return any(v != 0 for v in (lam if isinstance(lam, (list, tuple)) else [lam]))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One SGD step followed by the proximal step; returns the closure's loss.

        Everything the step could reject (sparse gradients where a budget or
        ``capturable`` needs dense ones, ``lr`` or ``lam`` changed to invalid values)
        is checked for every param group before any parameter or buffer changes.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [self._gather(index, group) for index, group in enumerate(self.param_groups)]
        for group, (params, grads, bufs, sparse) in zip(self.param_groups, work):
            if not params:
                continue
            if group["capturable"]:
                _sgd_on_device(params, grads, bufs, self._on_device(group, "lr", params[0].device), group)
            else:
                sgd_functional(
                    params,
                    grads,
                    bufs,
                    weight_decay=group["weight_decay"],
                    momentum=group["momentum"],
                    lr=group["lr"],
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    maximize=group["maximize"],
                    has_sparse_grad=sparse,
                    foreach=group["foreach"],
                    fused=group["fused"],
                    grad_scale=None,
                    found_inf=None,
                )
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
            frozen = group["k"] is not None and "support_mask" in self.state[group["params"][0]]
            if frozen or self._regularized(group):
                self._proximal_step(group, with_grad=[p.grad is not None for p in group["params"]])
        return loss

    def _gather(self, index: int, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list, bool]:
        """The group's params with a gradient, their gradients and momentum buffers,
        and whether a gradient is sparse; raises on what the step cannot apply."""
        params, grads, bufs = [], [], []
        names = group.get("names") or [f"params[{i}]" for i in range(len(group["params"]))]
        sparse = False
        for p, name in zip(group["params"], names):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                if group["k"] is not None or group["capturable"]:
                    reason = "a budget k (the prox needs dense tensors)" if group["k"] is not None else "capturable"
                    raise RuntimeError(
                        f"ProxSGD: {name} of param group {index} has a sparse gradient, which a group "
                        f"with {reason} cannot take; put it in a group without k"
                    )
                sparse = True
            params.append(p)
            grads.append(p.grad)
            bufs.append(self.state[p].get("momentum_buffer"))
        if params:
            if group["k"] is not None:
                self._prox_terms(group)  # rebuilt if k, groups or weights changed: raises now
            lr = group["lr"]
            if not isinstance(lr, Tensor) or lr.device.type == "cpu":  # device values are not read back
                if not float(lr) >= 0.0:
                    raise ValueError(f"lr: expected lr >= 0 in param group {index}, got {lr}")
            lam = group["lam"]
            if group["k"] is not None and (not isinstance(lam, Tensor) or lam.device.type == "cpu"):
                _check_lam(lam, group)
        return params, grads, bufs, sparse

    def _on_device(self, group: dict[str, Any], name: str, device: torch.device) -> Tensor:
        """group[name] as a tensor on `device`: a tensor already there is used as is; a
        number or a tensor elsewhere is copied once per value and kept."""
        value = group[name]
        if isinstance(value, Tensor) and value.device == device:
            return value
        key = (id(group), name)
        cached = self._device_scalars.get(key)
        if cached is not None and cached[0] is value:
            return cached[1]
        if isinstance(value, (list, tuple)):
            value = list(value)
        tensor = torch.as_tensor(value, dtype=torch.float64, device=device)
        self._device_scalars[key] = (group[name], tensor)
        return tensor

    def _proximal_step(self, group: dict[str, Any], with_grad: list[bool]) -> None:
        """The prox on the group's params; per-tensor terms skip params without a
        gradient this step, a shared term always covers all of them."""
        params = group["params"]
        terms = self._prox_terms(group)
        if "support_mask" in self.state[params[0]]:
            views, scales = [], []
            for p, (outer, m, inner), ids in zip(params, terms.layouts, terms.group_ids):
                mask = self.state[p]["support_mask"].to(p.dtype)
                if ids is None:
                    views.append(p.view(outer, m, inner))
                    scales.append(mask.view(1, m, 1))
                else:
                    p.mul_(mask[ids])
            if views:
                torch._foreach_mul_(views, scales)
            return
        capturable = group["capturable"]
        device = params[0].device
        lr = self._on_device(group, "lr", device) if capturable else _as_tensor(group["lr"])
        lam = self._on_device(group, "lam", device) if capturable else _as_tensor(group["lam"])
        if terms.coupled:  # a coupled group spans tensors: every member is scaled, with a gradient or not
            ops.prox_coupled_(
                params,
                [v for layout in terms.layouts for v in layout],
                terms.group_ids if any(t is not None for t in terms.group_ids) else [],
                terms.coupling,
                terms.term_sizes,
                terms.coupled_weights,
                terms.k,
                lam,
                lr,
            )
            return
        take = [True] * len(params) if terms.shared else with_grad
        chosen = [i for i, t in enumerate(take) if t]
        if lam.numel() > 1 and not terms.shared and len(chosen) < len(params):
            if capturable:  # an index tensor already on the device: no copy in the step
                key = (id(group), f"lam_index{tuple(chosen)}")
                if key not in self._device_scalars:
                    self._device_scalars[key] = (None, torch.tensor(chosen, device=device))
                lam = lam.index_select(0, self._device_scalars[key][1])
            else:
                lam = lam[chosen]
        ids = [terms.group_ids[i] for i in chosen]
        weights = [terms.weights[i] for i in chosen]
        ops.prox_multi_(
            [params[i] for i in chosen],
            [v for i in chosen for v in terms.layouts[i]],
            ids if any(t is not None for t in ids) else [],
            weights if any(w is not None for w in weights) else [],
            terms.k if terms.shared else [terms.k[i] for i in chosen],
            lam,
            lr,
            terms.shared,
        )

    def regularizer(self) -> Tensor:
        """The regularizer the prox steps minimise with the loss: the sum over every
        WGSEF term of ``lam_t * WGSEF_{k_t,d}(params)`` (coupled terms over their
        coupled groups), as a differentiable float64 scalar, e.g. to log the
        objective ``loss + opt.regularizer()``."""
        total = torch.zeros((), dtype=torch.float64)
        for group in self.param_groups:
            if group["k"] is None:
                continue
            terms = self._prox_terms(group)
            lam = _as_tensor(group["lam"]).detach().double().cpu().reshape(-1)
            for t, (norms, w, k) in enumerate(zip(terms.term_norms(group["params"]), terms.term_weights(), terms.k)):
                strength = lam[0 if lam.numel() == 1 else t]
                if strength == 0 or norms.numel() == 0:
                    continue
                w = None if w is None else w.to(norms)
                total = total + strength * functional.value(norms, k, "elements", w).cpu()
        return total

    @torch.no_grad()
    def freeze_support(self) -> None:
        """Keep the top-k groups of every WGSEF term, zero the rest, and hold them at zero.

        From then on the regularized params take plain SGD steps on their kept
        groups (the prox is off), so training ends with at most ``k`` non-zero groups
        per term. Ties in ``||p_i|| / sqrt(d_i)`` go to the lower group index.
        """
        for group in self.param_groups:
            if group["k"] is None:
                continue
            terms = self._prox_terms(group)
            params = group["params"]
            masks = []
            for norms, w, k in zip(terms.term_norms(params), terms.term_weights(), terms.k):
                score = norms if w is None else norms / w.to(norms).sqrt()
                # stable descending sort: equal scores keep index order
                order = torch.sort(-score, stable=True).indices
                mask = torch.zeros_like(score, dtype=torch.bool)
                mask[order[:k]] = True
                masks.append(mask & (score > 0))
            for p, mask in zip(params, terms.tensor_masks(masks)):
                self.state[p]["support_mask"] = mask
        for group in self.param_groups:
            if group["k"] is not None:
                self._proximal_step(group, with_grad=[True] * len(group["params"]))


def regularized_param_groups(
    model: nn.Module,
    k: int | float = 0.5,
    lam: float = 1e-4,
    groups: GroupSpec | Callable[[str, nn.Module, Tensor], GroupSpec | None] = "filters",
    shared_k: bool = False,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear),
    skip: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Param groups for :class:`ProxSGD` from a model.

    The weights of ``layer_types`` modules are regularized (one group dict, with a
    per-tensor group spec and budget); everything else (biases, normalization
    parameters, embeddings, layers named in ``skip``) goes to a second group with
    ``k=None``, which takes plain SGD steps.

    Args:
        model: the network.
        k: per-layer budget: an int count of groups, or a float kept fraction in
            (0, 1] (``0.5`` keeps half of each layer's filters). With ``shared_k`` it is
            the budget over all regularized groups of the model.
        lam: regularization strength ``lambda``.
        groups: group spec for every regularized weight, or a callable
            ``(name, module, weight) -> spec or None`` (None: leave that weight alone).
            ``"heads"`` groups each ``nn.MultiheadAttention`` by attention head (its
            q/k/v input projection by row blocks, its output projection by column
            blocks) and the other layers by filters.
        shared_k: one WGSEF term over all regularized groups instead of one per layer.
        layer_types: module types whose ``weight`` is regularized.
        skip: module names (as in ``named_modules``) to leave unregularized.

    Returns:
        ``[regularized_group, other_group]``; each carries ``names`` for
        :func:`wgsef.sparsity_report`.
    """
    skip = set(skip)
    reg_params, reg_names, reg_specs, reg_ids = [], [], [], set()

    def add(name: str, weight: Tensor, spec: GroupSpec | None) -> None:
        if spec is None or not isinstance(weight, nn.Parameter) or not weight.requires_grad:
            return
        if id(weight) in reg_ids:
            return
        reg_params.append(weight)
        reg_names.append(name)
        reg_specs.append(spec)
        reg_ids.add(id(weight))

    for name, module in model.named_modules():
        if name in skip:
            continue
        if groups == "heads" and isinstance(module, nn.MultiheadAttention):
            add(f"{name}.in_proj_weight", module.in_proj_weight, ("heads", 3 * module.num_heads))
            out = module.out_proj.weight
            head_of_column = torch.arange(out.shape[1], device=out.device) // module.head_dim
            add(f"{name}.out_proj.weight", out, head_of_column.expand(out.shape[0], -1).contiguous())
            continue
        if not isinstance(module, layer_types):
            continue
        weight = getattr(module, "weight", None)
        if callable(groups):
            spec = groups(name, module, weight)
        else:
            spec = "filters" if groups == "heads" else groups
        add(f"{name}.weight", weight, spec)
    other = [(n, p) for n, p in model.named_parameters() if id(p) not in reg_ids and p.requires_grad]
    return [
        {"params": reg_params, "names": reg_names, "groups": reg_specs, "k": k, "lam": lam, "shared_k": shared_k},
        {"params": [p for _, p in other], "names": [n for n, _ in other], "k": None},
    ]
