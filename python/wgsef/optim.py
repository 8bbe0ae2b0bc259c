"""Optimizers with the WGSEF proximal step: ``ProxSGD`` and ``ProxOptimizer``.

``ProxOptimizer(base)`` follows any ``torch.optim`` optimizer's step with the prox
``p <- prox_{lr * lam * WGSEF}(p)`` on the param groups that have a budget ``k``.

``ProxSGD`` is the same for SGD with SGD's options: each step is
``p <- prox_{lr * lam * WGSEF}(p - lr * d_p)``, where the SGD direction ``d_p``
(momentum, dampening, Nesterov, L2 weight decay, maximize) is exactly
``torch.optim.SGD``'s, computed by torch's own functional ``sgd`` (or, with
``capturable=True``, by foreach ops that read ``lr`` from a device tensor). One
native call (``torch.ops.wgsef.prox_multi_`` or ``prox_coupled_``) applies the prox
to every regularized tensor of a param group. The prox machinery itself is
:mod:`wgsef.proximal`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.sgd import sgd as sgd_functional

from . import distributed
from .groups import GroupSpec
from .proximal import PROX_DEFAULTS, ProxTerms, WGSEFProx

__all__ = ["ProxOptimizer", "ProxSGD", "rebind_param_groups", "regularized_param_groups"]


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


def _building_zero() -> Any:
    """The ZeroRedundancyOptimizer that is constructing this optimizer, if any.

    ZeRO builds its local optimizer itself, over this rank's partition of each param
    group, and passes nothing else. Terms shared across the partition (``shared_k``,
    coupled groups) and per-tensor option lists need the whole group, which ZeRO
    keeps; the caller's frame is the only place that names it.
    """
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:
        return None
    frame = sys._getframe(2)  # the caller of ProxSGD.__init__
    for _ in range(3):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, ZeroRedundancyOptimizer):
            return owner
        frame = frame.f_back
    return None


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
            frozen=False,
            capturable=capturable,
        )
        self._prox = WGSEFProx(self, zero=_building_zero())
        super().__init__(params, defaults)

    def prox_terms(self, group: dict[str, Any]) -> ProxTerms:
        """The WGSEF terms of a regularized param group (its layouts, budgets and
        weights as the native ops take them; read-only)."""
        return self._prox.terms(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            self._validate(self.param_groups[-1])
        except (ValueError, TypeError):
            self._prox.forget(self.param_groups.pop())
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
        if not isinstance(group["capturable"], bool):
            raise TypeError(f"capturable: expected a bool, got {type(group['capturable']).__name__}")
        if group["capturable"] and group["fused"]:
            raise ValueError("fused: not with capturable=True (the capturable step runs its own foreach update)")
        if group["fused"] and any(distributed.is_dtensor(p) for p in group["params"]):
            raise ValueError("fused: torch's fused SGD kernel does not take DTensor params; use foreach=True")
        if group["capturable"] and len({p.device for p in group["params"]}) > 1:
            raise ValueError("capturable: the params of a param group must share one device")
        self._prox.validate(group)  # raises on lam, groups, weights or k that do not fit the parameters

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_prox"):
            self._prox = WGSEFProx(self)
        self._prox.reset()
        for group in self.param_groups:
            for key, default in self.defaults.items():
                group.setdefault(key, default)

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
        try:
            work = [self._gather(index, group) for index, group in enumerate(self.param_groups)]
            error = None
        except (ValueError, TypeError, RuntimeError) as err:
            error = err
        self._prox.agree(error)  # raises the error; on DTensors on every rank
        for group, (params, grads, bufs, sparse) in zip(self.param_groups, work):
            if not params:  # the prox may still need this rank (a term shared across ZeRO's partitions)
                self._prox.step(group)
                continue
            if self._prox.sharded_sgd_step(group, params, grads, bufs):
                continue
            if group["capturable"]:
                _sgd_on_device(params, grads, bufs, self._prox.on_device(group, "lr", params[0].device), group)
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
            self._prox.step(group)
        return loss

    def _gather(self, index: int, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list, bool]:
        """The group's params with a gradient, their gradients and momentum buffers,
        and whether a gradient is sparse; raises on what the step cannot apply."""
        params, grads, bufs = [], [], []
        state = self.state
        sparse = False
        for i, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                if group["k"] is not None or group["capturable"]:
                    name = group["names"][i] if group.get("names") else f"params[{i}]"
                    reason = "a budget k (the prox needs dense tensors)" if group["k"] is not None else "capturable"
                    raise RuntimeError(
                        f"ProxSGD: {name} of param group {index} has a sparse gradient, which a group "
                        f"with {reason} cannot take; put it in a group without k"
                    )
                sparse = True
            params.append(p)
            grads.append(grad)
            bufs.append(state[p].get("momentum_buffer"))
        if params:
            lr = group["lr"]
            if not isinstance(lr, Tensor) or lr.device.type == "cpu":  # device values are not read back
                if not float(lr) >= 0.0:
                    raise ValueError(f"lr: expected lr >= 0 in param group {index}, got {lr}")
            self._prox.check_before_step(group, index)
        return params, grads, bufs, sparse

    def regularizer(self) -> Tensor:
        """The regularizer the prox steps minimise with the loss: the sum over every
        WGSEF term of ``lam_t * WGSEF_{k_t,d}(params)`` (coupled terms over their
        coupled groups), as a differentiable float64 scalar, e.g. to log the
        objective ``loss + opt.regularizer()``."""
        return self._prox.regularizer()

    def freeze_support(self) -> None:
        """Keep the top-k groups of every WGSEF term, zero the rest, and hold them at zero.

        From then on the regularized params take plain SGD steps on their kept
        groups (the prox is off), so training ends with at most ``k`` non-zero groups
        per term. Ties in ``||p_i|| / sqrt(d_i)`` go to the lower group index.
        """
        self._prox.freeze()

    def is_frozen(self) -> bool:
        """Whether :meth:`freeze_support` has fixed the support of the regularized groups."""
        return any(self._prox.is_frozen(g) for g in self.param_groups)

    def support_masks(self) -> dict[Tensor, Tensor]:
        """Each regularized param's frozen support: a bool mask over its own groups
        (True: kept). Empty before :meth:`freeze_support`."""
        return self._prox.support_masks()


class ProxOptimizer(Optimizer):
    r"""Any ``torch.optim`` optimizer followed by the WGSEF proximal step.

    For each param group with a budget ``k``, every step is

    .. math:: p \leftarrow \operatorname{prox}_{lr \cdot \lambda \cdot \mathrm{WGSEF}_{k,d}}(\mathrm{base\_step}(p))

    with the group's current ``lr``. The prox is taken in the plain Euclidean metric
    with step ``lr``, also for adaptive methods (Adam, AdamW, RMSprop, Adagrad): the
    update is a proximal gradient step whose gradient part is preconditioned and
    whose prox is not (docs/design.md, "the prox under adaptive optimizers").

    The wrapper shares ``param_groups`` and ``state`` with ``base_optimizer``: LR
    schedulers attach to either, ``state_dict`` holds the base optimizer's state plus
    the frozen masks, and groups without a budget step exactly as the base optimizer
    does. The budget keys are those of :class:`ProxSGD` (``k``, ``lam``, ``groups``,
    ``weights``, ``shared_k``, ``coupling``, ``term_sizes``), read from each param
    group; the keyword arguments here are defaults for groups that lack them. A base
    param group with ``capturable=True`` (Adam, AdamW, ...) gives ``lr`` and ``lam`` to
    the ops as device tensors, so the step stays free of host synchronisation.

    Example::

        groups = wgsef.regularized_param_groups(model, k=0.5, lam=1e-4)
        opt = wgsef.ProxOptimizer(torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01))

    Args:
        base_optimizer: a ``torch.optim.Optimizer``, already built over the params.
        lam, k, groups, weights, shared_k: defaults for param groups without the key.
    """

    def __init__(
        self,
        base_optimizer: Optimizer,
        *,
        lam: float | Tensor | Sequence[float] = 0.0,
        k: int | float | Sequence[int | float] | None = None,
        groups: GroupSpec | Sequence[GroupSpec] = "filters",
        weights: Sequence[Tensor | None] | None = None,
        shared_k: bool = False,
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(f"base_optimizer: expected a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        if isinstance(base_optimizer, (ProxOptimizer, ProxSGD)):
            raise TypeError(f"base_optimizer: {type(base_optimizer).__name__} already applies the WGSEF prox")
        prox_defaults = PROX_DEFAULTS | dict(lam=lam, k=k, groups=groups, weights=weights, shared_k=shared_k)
        # Optimizer.__init__ registers this class's hooks and profiling (its placeholder
        # group is ignored); the groups are then the base optimizer's own dicts and list
        super().__init__([{"params": []}], {})
        self.base_optimizer = base_optimizer
        self.defaults = base_optimizer.defaults | prox_defaults
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self._prox = WGSEFProx(self)
        for index, group in enumerate(self.param_groups):
            for key, default in prox_defaults.items():
                group.setdefault(key, default)
            self._validate(group, index)

    def _validate(self, group: dict[str, Any], index: int) -> None:
        try:
            self._prox.validate(group)
        except (ValueError, TypeError) as err:
            raise type(err)(f"param group {index}: {err}") from None

    def prox_terms(self, group: dict[str, Any]) -> ProxTerms:
        """The WGSEF terms of a regularized param group (read-only)."""
        return self._prox.terms(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer, with the prox defaults for missing keys."""
        if not hasattr(self, "base_optimizer"):  # Optimizer.__init__'s placeholder group
            return
        self.base_optimizer.add_param_group(param_group)
        group = self.param_groups[-1]
        for key, default in PROX_DEFAULTS.items():
            group.setdefault(key, self.defaults.get(key, default))
        try:
            self._validate(group, len(self.param_groups) - 1)
        except (ValueError, TypeError):
            self._prox.forget(self.param_groups.pop())
            raise

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    def _fill_prox_keys(self, previous: list[dict[str, Any]] | None = None) -> None:
        """Budget keys for groups that lack them (a plain base-optimizer checkpoint, a
        group added to the base directly): the group's previous value, else the default."""
        for index, group in enumerate(self.param_groups):
            if all(key in group for key in PROX_DEFAULTS):
                continue
            before = previous[index] if previous is not None and index < len(previous) else {}
            for key, default in PROX_DEFAULTS.items():
                group.setdefault(key, before.get(key, self.defaults.get(key, default)))
            self._validate(group, index)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The base optimizer's ``load_state_dict``; the wrapper's load hooks run
        around it, and groups saved without budget keys keep the current ones."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        previous = [{key: g[key] for key in PROX_DEFAULTS if key in g} for g in self.param_groups]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._prox.reset()
        self._fill_prox_keys(previous)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "base_optimizer": self.base_optimizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # copy and pickle: relink to the base's groups and state
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._prox = WGSEFProx(self)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """The base optimizer's step, then the prox; returns the closure's loss.

        Budgets, ``lam`` and sparse gradients of regularized groups are checked for
        every param group before the base step changes anything."""
        self._fill_prox_keys()
        try:
            self._check_before_step()
            error = None
        except (ValueError, TypeError, RuntimeError) as err:
            error = err
        self._prox.agree(error)  # raises the error; on DTensors on every rank
        # Adam and most others initialise a param's state only when it is empty: a
        # mask alone (a param without a gradient so far) is held aside meanwhile
        held = {p: st.pop("support_mask") for p, st in self.state.items() if len(st) == 1 and "support_mask" in st}
        try:
            loss = self.base_optimizer.step(closure)
        finally:
            for p, mask in held.items():
                self.state[p]["support_mask"] = mask
        with torch.no_grad():
            for group in self.param_groups:
                self._prox.step(group)
        return loss

    def _check_before_step(self) -> None:
        for index, group in enumerate(self.param_groups):
            if group["k"] is None:
                continue
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(
                        f"ProxOptimizer: a parameter of param group {index} has a sparse gradient, which a group "
                        "with a budget k cannot take (the prox needs dense tensors)"
                    )
            try:
                self._prox.check_before_step(group, index)
            except (ValueError, TypeError) as err:
                raise type(err)(f"param group {index}: {err}") from None

    def regularizer(self) -> Tensor:
        """``sum_t lam_t * WGSEF_t`` over every WGSEF term, float64, differentiable."""
        return self._prox.regularizer()

    def freeze_support(self) -> None:
        """Keep the top-k groups of every WGSEF term, zero the rest, and hold them at zero
        on every later step (the prox is off; the base optimizer trains the kept groups)."""
        self._prox.freeze()

    def is_frozen(self) -> bool:
        """Whether :meth:`freeze_support` has fixed the support."""
        return any(self._prox.is_frozen(g) for g in self.param_groups)

    def support_masks(self) -> dict[Tensor, Tensor]:
        """Each regularized param's frozen support: a bool mask over its own groups."""
        return self._prox.support_masks()


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


def rebind_param_groups(param_groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """The same param groups over ``model``'s current parameters, found by name.

    For models whose parameters are replaced after the groups were built, such as
    ``fully_shard`` (FSDP2), which swaps each parameter for a DTensor: build the
    groups on the model first (:func:`wgsef.coupled_param_groups` traces and copies
    it, which a sharded model does not allow), shard it, then rebind. Every group
    needs ``names`` (the groups wgsef builds have them); the other keys are kept.
    """
    current = dict(model.named_parameters())
    rebound = []
    for index, group in enumerate(param_groups):
        names = group.get("names")
        if names is None or len(names) != len(group["params"]):
            raise ValueError(f"param_groups: group {index} needs 'names', one per parameter, to be rebound")
        missing = [n for n in names if n not in current]
        if missing:
            raise ValueError(f"model: has no parameter named {missing[0]!r} (param group {index})")
        rebound.append({**group, "params": [current[n] for n in names]})
    return rebound
