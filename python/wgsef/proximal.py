"""The WGSEF proximal step over an optimizer's param groups, shared by
:class:`wgsef.ProxSGD` and :class:`wgsef.ProxOptimizer`.

:class:`ProxTerms` turns one param group's options (``k``, ``lam``, ``groups``,
``weights``, ``shared_k``, ``coupling``, ``term_sizes``) into the arguments of the
native ops; :class:`WGSEFProx` caches them per group and applies the prox, the
frozen support (``freeze_support``) and the regularizer's value.
"""

from __future__ import annotations

import functools
import math
import numbers
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed, functional, ops
from .groups import group_layout, renumbered

__all__ = ["PROX_DEFAULTS", "ProxTerms", "WGSEFProx"]

# the param-group keys of the prox and their defaults (k=None: not regularized)
PROX_DEFAULTS: dict[str, Any] = {
    "lam": 0.0,
    "k": None,
    "groups": "filters",
    "weights": None,
    "shared_k": False,
    "coupling": None,
    "term_sizes": None,
    "frozen": False,  # set by freeze_support
}


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
    """A group budget: an int count, or a float kept fraction in (0, 1] (rounded
    with Python's ``round``, halves to even, and at least 1)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"k: expected an int count or a float fraction, got {type(k).__name__}{where}")
    if not isinstance(k, numbers.Integral):
        k = float(k)
        if not 0.0 < k <= 1.0:
            raise ValueError(f"k: a kept fraction must lie in (0, 1], got {k}{where}")
        return max(1, round(k * num_groups))
    k = int(k)
    if k < 0:
        raise ValueError(f"k: expected k >= 0, got {k}{where}")
    if k > num_groups:
        raise ValueError(f"k: {k} exceeds the number of groups ({num_groups}){where}")
    return k


class ProxTerms:
    """The WGSEF terms of one param group, as ``prox_multi_`` or ``prox_coupled_``
    takes them: each tensor's group layout, the weights and the budgets.

    Without ``coupling`` each tensor is its own term (or, with ``shared_k``, all of
    them are one term over the union of their groups). With ``coupling`` the
    terms are over coupled groups: ``coupling[i][g]`` is the coupled group of
    tensor i's group g, terms are runs of ``term_sizes`` consecutive coupled groups
    (one run with ``shared_k``), and ``weights`` holds one weight per coupled group.
    """

    def __init__(self, group: dict[str, Any], partition: tuple[list[bool], Any] | None = None):
        params: list[Tensor] = group["params"]
        n = len(params)
        # ZeroRedundancyOptimizer: which params this rank owns, and ZeRO's process group
        self.owned = partition[0] if partition is not None else [True] * n
        names = group.get("names") or [f"params[{i}]" for i in range(n)]
        self.coupled = group.get("coupling") is not None
        specs = _per_tensor(group["groups"], n, "groups")
        weights = [None] * n if self.coupled else _per_tensor(group["weights"], n, "weights")
        self.layouts: list[tuple[int, int, int]] = []
        self.group_ids: list[Tensor | None] = []
        self.weights: list[Tensor | None] = []
        self.num_groups: list[int] = []
        for p, spec, w, name in zip(params, specs, weights, names):
            if distributed.is_dtensor(spec):
                spec = spec.full_tensor()  # group ids: every rank needs them whole
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
        _check_disjoint(params, names)
        if not isinstance(group["shared_k"], bool):
            raise TypeError(f"shared_k: expected a bool, got {group['shared_k']!r}")
        self.shared = group["shared_k"]
        self.sharded = None
        self.params = list(params)
        self.position = {id(p): i for i, p in enumerate(params)}
        self.dtensors = any(distributed.is_dtensor(p) for p in params)
        if self.dtensors:
            self.sharded = distributed.ShardedGroups(params, self.layouts, self.group_ids, self.num_groups, names)
        elif partition is not None and (self.shared or self.coupled):  # terms that span ZeRO's partitions
            self.sharded = distributed.ShardedGroups.partitioned(
                params, self.layouts, self.group_ids, self.num_groups, names, self.owned, partition[1]
            )
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

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What every rank must agree on: the group structure, budgets and weights."""
        weights = self.coupled_weights if self.coupled else self.weights
        weights = [weights] if not isinstance(weights, list) else weights
        coupling = getattr(self, "coupling", [])
        return {
            "groups": (
                self.layouts,
                self.num_groups,
                self.shared,
                getattr(self, "term_sizes", None),
                [distributed.content(ids) for ids in self.group_ids],
                [distributed.content(c) for c in coupling],
            ),
            "k": self.k,
            "weights": [distributed.content(w) for w in weights],
        }

    def term_norms(self, params: Sequence[Tensor]) -> list[Tensor]:
        """Each term's group norms in float64, in group order; differentiable on plain
        tensors. On DTensors a collective (every rank must call it), not differentiable."""
        if self.sharded is not None:
            squares = self.sharded.squares(params)
        else:
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


def _multiply_masks(terms: ProxTerms, params: list[Tensor], masks: list[tuple[int, Tensor]]) -> None:
    """Multiply params[i] by its bool group mask, for each (i, mask)."""
    views, scales = [], []
    for i, mask in masks:
        p, (outer, m, inner), ids = params[i], terms.layouts[i], terms.group_ids[i]
        mask = mask.to(p.dtype)
        if ids is None:
            views.append(p.view(outer, m, inner))
            scales.append(mask.view(1, m, 1))
        else:
            p.mul_(mask[ids])
    if views:
        torch._foreach_mul_(views, scales)


def _sqrt(squares: Tensor) -> Tensor:
    """sqrt with a zero gradient at 0 (the subgradient WGSEF's gradient uses there)."""
    positive = squares > 0
    return torch.where(positive, squares, 1.0).sqrt() * positive


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _weight_tensor(w: Any, device: torch.device | None, name: str) -> Tensor | None:
    if distributed.is_dtensor(w):
        return w.full_tensor()  # every rank searches over all groups
    if w is None or isinstance(w, Tensor):
        return w
    try:
        return torch.as_tensor(w, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"weights: expected a tensor or a sequence of floats for {name}, got {w!r}") from err


def _dense(t: Tensor) -> bool:
    """Whether t's elements fill a block of memory without gaps, in any dim order."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _check_disjoint(params: Sequence[Tensor], names: Sequence[str]) -> None:
    """Raise, before a step changes anything, on params whose memory the in-place
    prox ops would refuse (csrc/checks.h, check_disjoint): the same tensor or view
    twice, or dense tensors that overlap. Strided views that interleave, or overlap in
    ways torch does not classify, pass, as in the ops."""
    seen: dict[int, list[tuple[int, int, Tensor, str]]] = {}
    for p, name in zip(params, names):
        t = p.to_local() if distributed.is_dtensor(p) else p
        if t.numel() == 0 or t.device.type == "meta":  # meta tensors hold no memory
            continue
        # byte offsets in the storage: views of one storage may differ in dtype
        first = t.storage_offset() * t.element_size()
        last = first + (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size() - 1
        shared = seen.setdefault(t.untyped_storage().data_ptr(), [])
        for a_first, a_last, a, a_name in shared:
            if a_last < first or last < a_first:
                continue
            same_view = a_first == first and a.shape == t.shape and a.stride() == t.stride()
            if same_view or (_dense(a) and _dense(t)):
                raise ValueError(
                    f"{a_name} and {name} share memory; the prox updates each param in place and "
                    "needs memory of its own for every one"
                )
        shared.append((first, last, t, name))


def _check_weights(w: Tensor, num_groups: int, name: str) -> Tensor:
    if w.dim() != 1:
        raise ValueError(f"weights: expected a 1-D tensor for {name}, got shape {tuple(w.shape)}")
    if w.numel() != num_groups:
        raise ValueError(f"weights: {name} has {num_groups} groups, got {w.numel()} weights")
    if not bool((w > 0).all() and torch.isfinite(w).all()):
        raise ValueError(f"weights: must be positive and finite for {name}")
    return w


def _as_tensor(value: float | Tensor | Sequence[float]) -> Tensor:
    if isinstance(value, Tensor):
        return value
    return torch.tensor(value, dtype=torch.float64)


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


def _identity(value: Any) -> Any:
    """What identifies a group option for the terms cache: a list by the identity of
    its items (so that an item replaced in place is seen), anything else by its own."""
    if isinstance(value, list):
        return tuple(id(v) for v in value)
    return id(value)


class WGSEFProx:
    """The WGSEF prox of one optimizer's param groups.

    A param group is regularized when its ``k`` is not ``None``; its prox strength is
    ``group["lr"] * group["lam"]``. The frozen support lives in the optimizer's state
    (``state[p]["support_mask"]``, one bool per group of ``p``), so it travels with
    ``state_dict``. With ``group["capturable"]`` true, ``lr`` and ``lam`` reach the ops
    as device tensors (no host synchronisation).
    """

    def __init__(self, optimizer: Optimizer, zero: Any = None) -> None:
        self.optimizer = optimizer
        self._terms_by_group: dict[int, tuple[tuple, ProxTerms]] = {}
        self._device_scalars: dict[tuple[int, str], tuple[Any, Tensor]] = {}
        # the ZeroRedundancyOptimizer that built `optimizer` over its partition, if any
        self._zero = weakref.ref(zero) if zero is not None else None

    def source(self, group: dict[str, Any]) -> dict[str, Any]:
        """The group the terms are built from: under ZeRO the global group (all its
        params, whose per-tensor options the local group shares), else the group itself."""
        zero_group = self._zero_group(group)
        # ZeRO copies the options into the local group at every step; its own group
        # lacks the defaults the local optimizer filled in
        return group if zero_group is None else {**group, "params": zero_group["params"]}

    def _zero_group(self, group: dict[str, Any]) -> dict[str, Any] | None:
        """ZeRO's own group behind a local group (same index), if under ZeRO."""
        zero = self._zero() if self._zero is not None else None
        if zero is None:
            return None
        return zero.param_groups[next(i for i, g in enumerate(self.optimizer.param_groups) if g is group)]

    def _partition(self, source: dict[str, Any], group: dict[str, Any]) -> tuple[list[bool], Any] | None:
        if source["params"] is group["params"]:
            return None
        local = {id(p) for p in group["params"]}
        return [id(p) in local for p in source["params"]], self._zero().process_group

    def reset(self) -> None:
        """Forget cached terms and device copies (after ``load_state_dict``, which
        also casts the masks to the params' dtype: they become bool again)."""
        self._terms_by_group = {}
        self._device_scalars = {}
        for st in self.optimizer.state.values():
            if "support_mask" in st:
                st["support_mask"] = st["support_mask"].bool()

    def terms(self, group: dict[str, Any]) -> ProxTerms:
        """The group's prox arguments, rebuilt only when its options or params change."""
        local, group = group, self.source(group)
        k = group["k"]
        local_ids = tuple(map(id, local["params"]))
        key = (
            local_ids,
            local_ids if group is local else tuple(map(id, group["params"])),
            _identity(group["groups"]),
            _identity(group["weights"]),
            tuple(k) if isinstance(k, (list, tuple)) else k,
            group["shared_k"],
            _identity(group.get("coupling")),
            tuple(group.get("term_sizes") or ()),
        )
        cached = self._terms_by_group.get(id(local))
        if cached is None or cached[0] != key:
            cached = (key, ProxTerms(group, self._partition(group, local)))
            self._terms_by_group[id(local)] = cached
        return cached[1]

    def forget(self, group: dict[str, Any]) -> None:
        self._terms_by_group.pop(id(group), None)

    def validate(self, group: dict[str, Any]) -> None:
        """Raise on a ``lam``, ``k``, ``groups`` or ``weights`` that does not fit the group."""
        _check_lam(group["lam"], self.source(group))
        if group["k"] is None:
            return
        if group.get("capturable") and any(distributed.is_dtensor(p) for p in group["params"]):
            raise ValueError(
                "capturable: not with DTensor params (the sharded prox all-reduces and checks on the host "
                "at every step)"
            )
        self.terms(group)

    def check_before_step(self, group: dict[str, Any], index: int) -> None:
        """What a step could reject, checked before anything changes: options changed
        since construction, ``lam`` set to invalid values (host values only)."""
        if group["k"] is None:
            return
        self.terms(group)
        lam = group["lam"]
        if not isinstance(lam, Tensor) or lam.device.type == "cpu":  # device values are not read back
            _check_lam(lam, self.source(group))

    @staticmethod
    def regularized(group: dict[str, Any]) -> bool:
        lam = group["lam"]
        if group["k"] is None:
            return False
        if isinstance(lam, Tensor):
            return True  # a tensor lam may be scheduled; a zero lam makes the prox the identity
        return any(v != 0 for v in (lam if isinstance(lam, (list, tuple)) else [lam]))

    def is_frozen(self, group: dict[str, Any]) -> bool:
        if group["k"] is None:
            return False
        if "frozen" in group:  # the flag, also for a ZeRO rank whose partition of the group is empty
            return bool(group["frozen"])
        params = group["params"]  # a checkpoint from before the flag: frozen when masks exist
        return bool(params) and "support_mask" in self.optimizer.state[params[0]]

    def ensure_masks(self, group: dict[str, Any]) -> None:
        """Give every param of a group with a budget its support mask (all True until
        the freeze), so that the state has the same keys before and after
        :meth:`freeze` (``torch.distributed.checkpoint`` loads only the keys the target has)."""
        state = self.optimizer.state
        params = group["params"]
        if group["k"] is None or not params or "support_mask" in state[params[-1]]:
            return
        terms = self.terms(group)
        for p in params:
            if "support_mask" not in state[p]:
                m = terms.num_groups[terms.position[id(p)]]
                state[p]["support_mask"] = torch.ones(m, dtype=torch.bool, device=p.device)

    def agree(self, error: BaseException | None) -> None:
        """Before a step changes anything: on DTensor params, one small all-reduce makes
        every rank raise when one rank's checks failed or the ranks disagree on the
        groups, budgets, weights, ``lam`` or ``lr``; then raise `error` if any."""
        consensus = self._consensus()
        if consensus is None:
            if error is not None:
                raise error
            return
        fingerprint: dict[str, Any] = {key: [] for key in ("groups", "k", "lam", "lr", "weights")}
        if error is None:
            try:
                for g in self.optimizer.param_groups:
                    if g["k"] is None or self.is_frozen(g) or not self.source(g)["params"]:
                        continue
                    for key, value in self.terms(g).fingerprint.items():
                        fingerprint[key].append(value)
                    for key in ("lam", "lr"):
                        v = g[key]
                        fingerprint[key].append(v.tolist() if isinstance(v, Tensor) else v)
            except (ValueError, TypeError, RuntimeError) as err:
                error = err
        distributed.agree(*consensus, fingerprint, error)

    def _consensus(self) -> tuple[list, torch.device] | None:
        """The process groups whose ranks must agree on a step's prox, and the device of
        their collective; None on one process (or when no term needs the others)."""
        active = [g for g in self.optimizer.param_groups if g["k"] is not None and not self.is_frozen(g)]
        if not active:
            return None
        zero = self._zero() if self._zero is not None else None
        if zero is not None:
            params = [p for g in zero.param_groups for p in g["params"]]
            return [zero.process_group], params[0].device if params else torch.device("cpu")
        for p in (p for g in active for p in g["params"]):
            if distributed.is_dtensor(p):
                mesh = p.device_mesh
                return [mesh.get_group(d) for d in range(mesh.ndim)], p.to_local().device
        return None

    def on_device(self, group: dict[str, Any], name: str, device: torch.device) -> Tensor:
        """group[name] as a tensor on `device`: a tensor already there is used as is; a
        number or a tensor elsewhere is copied once per value and kept."""
        value = group[name]
        if isinstance(value, Tensor) and value.device == device:
            return value
        key = (id(group), name)
        cached = self._device_scalars.get(key)
        # a list is compared by its values, so that one edited in place is copied again
        snapshot = tuple(value) if isinstance(value, (list, tuple)) else value
        if cached is not None and (cached[0] is value or (isinstance(cached[0], tuple) and cached[0] == snapshot)):
            return cached[1]
        tensor = torch.as_tensor(
            list(snapshot) if isinstance(snapshot, tuple) else value, dtype=torch.float64, device=device
        )
        self._device_scalars[key] = (snapshot, tensor)
        return tensor

    def step(self, group: dict[str, Any]) -> None:
        """After the base update: the prox (or the frozen support) on the group."""
        self.ensure_masks(group)
        params = self.source(group)["params"]  # under ZeRO, every rank's: shared terms need them all
        if any(p.grad is not None for p in params) and (self.is_frozen(group) or self.regularized(group)):
            self.apply(group)

    def sharded_sgd_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor | None]
    ) -> bool:
        """ProxSGD's step on DTensor params: torch.optim.SGD's update fused with the
        prox's group norms (one pass over the local shards, ``ops.sgd_group_squares_``),
        then the norms' all-reduce and the scaling. Returns False, having done nothing,
        where the fused step does not apply: no DTensors, the first step with momentum
        (no buffers yet), frozen or coupled groups, group ids, params without a gradient,
        single-element groups on the CPU (their prox needs no norms)."""
        if not self.regularized(group) or self.is_frozen(group) or len(params) != len(group["params"]):
            return False
        terms = self.terms(group)
        if not terms.dtensors or terms.coupled or not terms.sharded.strided or terms.sharded.searches_by_passes:
            return False
        momentum = group["momentum"]
        bufs = bufs if momentum != 0 else []
        if any(b is None for b in bufs) or not all(
            distributed.same_local_layout(t, p) for ts in (grads, bufs) for t, p in zip(ts, params)
        ):
            return False
        self.ensure_masks(group)
        squares = terms.sharded.sgd_squares_buffer(
            params,
            grads,
            bufs,
            lr=float(group["lr"]),
            weight_decay=group["weight_decay"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        lr, lam = _as_tensor(group["lr"]), _as_tensor(group["lam"])
        distributed.prox_multi_(terms.sharded, params, terms.weights, terms.k, lam, lr, terms.shared, squares)
        return True

    def apply(self, group: dict[str, Any], every_param: bool = False) -> None:
        """The prox on the group's params; per-tensor terms skip params without a
        gradient this step (unless `every_param`), a shared term always covers all of them.
        Under ZeRO a rank writes only the params it owns."""
        params = self.source(group)["params"]
        terms = self.terms(group)
        state = self.optimizer.state
        if self.is_frozen(group) and terms.dtensors:
            terms.sharded.scale_(params, [state[p]["support_mask"] for p in params])
            return
        if self.is_frozen(group):
            owned = [(i, state[p]["support_mask"]) for i, p in enumerate(params) if terms.owned[i]]
            _multiply_masks(terms, params, owned)
            return
        capturable = bool(group.get("capturable", False))
        device = params[0].device
        lr = self.on_device(group, "lr", device) if capturable else _as_tensor(group["lr"])
        lam = self.on_device(group, "lam", device) if capturable else _as_tensor(group["lam"])
        if terms.coupled and terms.sharded is not None:
            distributed.prox_coupled_(
                terms.sharded, params, terms.coupling, terms.term_sizes, terms.coupled_weights, terms.k, lam, lr
            )
            return
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
        if terms.shared:
            take = [True] * len(params)
        else:
            take = [owned and (every_param or p.grad is not None) for p, owned in zip(params, terms.owned)]
        chosen = [i for i, t in enumerate(take) if t]
        if not chosen:
            return
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
        k = terms.k if terms.shared else [terms.k[i] for i in chosen]
        if terms.sharded is not None:
            xs = [params[i] for i in chosen]
            distributed.prox_multi_(terms.sharded.select(chosen), xs, weights, k, lam, lr, terms.shared)
            return
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
        """``sum_t lam_t * WGSEF_t`` over every term of every regularized group, float64, differentiable."""
        total = torch.zeros((), dtype=torch.float64)
        for group in self.optimizer.param_groups:
            params = self.source(group)["params"]
            if group["k"] is None or not params:
                continue
            terms = self.terms(group)
            lam = _as_tensor(group["lam"]).detach().double().cpu().reshape(-1)
            for t, (norms, w, k) in enumerate(zip(terms.term_norms(params), terms.term_weights(), terms.k)):
                strength = lam[0 if lam.numel() == 1 else t]
                if strength == 0 or norms.numel() == 0:
                    continue
                w = None if w is None else w.to(norms)
                total = total + strength * functional.value(norms, k, "elements", w).cpu()
        return total

    @torch.no_grad()
    def freeze(self) -> None:
        """Keep the top-k groups of every term (ties to the lower index), zero the
        rest, and record the masks in the optimizer's state."""
        state = self.optimizer.state
        regularized = [g for g in self.optimizer.param_groups if g["k"] is not None and self.source(g)["params"]]
        for group in regularized:
            terms = self.terms(group)
            params = self.source(group)["params"]
            masks = []
            for norms, w, k in zip(terms.term_norms(params), terms.term_weights(), terms.k):
                score = norms if w is None else norms / w.to(norms).sqrt()
                # stable descending sort: equal scores keep index order
                order = torch.sort(-score, stable=True).indices
                mask = torch.zeros_like(score, dtype=torch.bool)
                mask[order[:k]] = True
                masks.append(mask & (score > 0))
            others = []  # ZeRO: every rank holds every param, so each zeroes its copies too
            for i, (p, mask, owned) in enumerate(zip(params, terms.tensor_masks(masks), terms.owned)):
                if owned:
                    state[p]["support_mask"] = mask
                else:
                    others.append((i, mask))
            _multiply_masks(terms, params, others)
            group["frozen"] = True
            zero_group = self._zero_group(group)
            if zero_group is not None:  # ZeRO copies its own groups' options into the local ones at every step
                zero_group["frozen"] = True
        for group in regularized:
            self.apply(group, every_param=True)

    def support_masks(self) -> dict[Tensor, Tensor]:
        """The frozen support: each regularized param's bool mask over its own groups
        (True: kept); empty before :meth:`freeze`."""
        state = self.optimizer.state
        return {
            p: state[p]["support_mask"]
            for group in self.optimizer.param_groups
            if self.is_frozen(group)
            for p in group["params"]
            if "support_mask" in state[p]
        }
