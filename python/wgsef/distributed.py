"""The WGSEF prox, norms and value on sharded tensors (DTensor: FSDP2, HSDP, tensor
parallel), with one small collective per call.

A WGSEF term depends on its tensors only through the group norms. On a DTensor
each rank sums the squares of its own shard per *global* group (float64), one
``all_reduce(SUM)`` over the mesh dimensions the tensors are sharded on completes
the norms, every rank runs the same threshold search on the same numbers (so the
factors are identical everywhere) and scales its own shard in place. Nothing is
gathered: the collective moves 8 bytes per group (docs/design.md §8).

Plain tensors in such a term count as replicated over the mesh. ``Partial`` and
strided-shard placements are rejected. Everything here is internal; the public
entry points are :mod:`wgsef.functional`, :mod:`wgsef.nm` and the optimizers, which
route DTensors here.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
except ImportError:  # a torch built without distributed support
    DTensor = None

__all__ = ["LocalGroups", "ShardedGroups", "agree", "is_dtensor"]


def is_dtensor(x: Any) -> bool:
    return DTensor is not None and isinstance(x, DTensor)


def _placement_error(name: str, placement: Any) -> ValueError:
    return ValueError(
        f"{name}: the placement {type(placement).__name__} ({placement}) is not supported; expected Shard(dim) "
        "or Replicate() "
        "(redistribute a Partial tensor first)"
    )


def check_placements(x: Tensor, name: str) -> None:
    for placement in x.placements:
        if type(placement) not in (Shard, Replicate):
            raise _placement_error(name, placement)


def local_box(x: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """This rank's shard of x: its shape and its offset in the global tensor (a plain
    tensor is its own box)."""
    if not is_dtensor(x):
        return tuple(x.shape), (0,) * x.dim()
    mesh = x.device_mesh
    return _compute_local_shape_and_global_offset(tuple(x.shape), mesh.shape, list(mesh.get_coordinate()), x.placements)


def _dim_split(shape: Sequence[int], layout: tuple[int, int, int]) -> tuple[int, int] | None:
    """Dims (a, b) with layout = (prod(shape[:a]), prod(shape[a:b]), prod(shape[b:])):
    the groups are then the flat index over dims a..b-1 (None: no such split, as for
    heads that split dim 0)."""
    outer, m, inner = layout
    for a in range(len(shape) + 1):
        if math.prod(shape[:a]) != outer:
            continue
        for b in range(a, len(shape) + 1):
            if math.prod(shape[a:b]) == m and math.prod(shape[b:]) == inner:
                return a, b
    return None


class LocalGroups:
    """Which global groups a tensor's local shard holds, and where.

    With a strided layout the local shard is viewed as ``(outer, groups, inner)``
    and ``group_index`` maps its middle index to global groups (a slice when they
    are consecutive); otherwise (group-id tensors, heads that a shard boundary
    splits) every local element carries its global group id.
    """

    def __init__(
        self, x: Tensor, layout: tuple[int, int, int], group_ids: Tensor | None, num_groups: int, name: str
    ) -> None:
        if is_dtensor(x):
            check_placements(x, name)
        self.num_groups = num_groups
        # every global group is one element (decided from the global layout, so alike on
        # every rank: a group that a shard boundary splits may look single locally)
        self.single_elements = group_ids is None and layout[0] == 1 and layout[2] == 1
        self.shard_mesh_dims = (
            tuple(i for i, pl in enumerate(x.placements) if isinstance(pl, Shard)) if is_dtensor(x) else ()
        )
        shape, offset = local_box(x)
        device = x.device
        self.view: tuple[int, int, int] | None = None
        self.group_slice: slice | None = None
        self.group_index: Tensor | None = None
        self.local_ids: Tensor | None = None
        self.used_groups: Tensor | None = None
        if group_ids is not None:
            ids = group_ids.full_tensor() if is_dtensor(group_ids) else group_ids
            box = tuple(slice(o, o + n) for o, n in zip(offset, shape))
            self._set_local_ids(ids[box].to(device=device, dtype=torch.int64))
            return
        split = _dim_split(tuple(x.shape), layout)
        if split is None:  # per-element global ids of the local box
            flat = torch.zeros((), dtype=torch.int64, device=device)
            for size, o, n in zip(x.shape, offset, shape):
                flat = flat.unsqueeze(-1) * size + torch.arange(o, o + n, device=device)
            self._set_local_ids((flat // layout[2]) % layout[1])
            return
        a, b = split
        self.view = (math.prod(shape[:a]), math.prod(shape[a:b]), math.prod(shape[b:]))
        index = torch.zeros((), dtype=torch.int64)
        for d in range(a, b):
            index = index.unsqueeze(-1) * x.shape[d] + torch.arange(offset[d], offset[d] + shape[d])
        index = index.reshape(-1)
        first = int(index[0]) if index.numel() else 0
        if torch.equal(index, torch.arange(first, first + index.numel())):
            self.group_slice = slice(first, first + index.numel())
        else:
            self.group_index = index.to(device)

    def _set_local_ids(self, ids: Tensor) -> None:
        """Per-element global ids, and the groups the shard holds renumbered 0..u-1: a
        shard may hold fewer elements than there are groups."""
        self.local_ids = ids.contiguous()
        self.used_groups, inverse = torch.unique(self.local_ids, return_inverse=True)
        self._local_group_of = inverse.reshape(self.local_ids.shape)

    def squares(self, local: Tensor, out: Tensor | None = None) -> Tensor:
        """The shard's float64 sum of squares per global group, added into `out`
        (zeros of length num_groups, allocated when not given)."""
        if out is None:
            out = torch.zeros(self.num_groups, dtype=torch.float64, device=local.device)
        if local.numel() == 0:
            return out
        if self.local_ids is not None:
            norms = _norms(local.contiguous(), self._local_group_of, self.used_groups.numel())
            return out.index_add_(0, self.used_groups, norms.square_())
        sq = _norms(local.reshape(self.view), None, self.view[1]).square_()
        if self.group_slice is not None:
            out[self.group_slice] += sq
        else:
            out.index_add_(0, self.group_index, sq)
        return out

    def scale_(self, local: Tensor, factors: Tensor) -> None:
        """Multiply each element of the shard by its global group's factor, in place."""
        if local.numel() == 0:
            return
        factors = factors.to(local.dtype)
        target = local if local.is_contiguous() else local.contiguous()
        if self.local_ids is not None:
            target.mul_(factors[self.local_ids])
        else:
            f = factors[self.group_slice] if self.group_slice is not None else factors[self.group_index]
            target.view(self.view).mul_(f.view(1, -1, 1))
        if target is not local:
            local.copy_(target)


def _local(x: Tensor) -> Tensor:
    """The local shard (a plain tensor: itself), detached: the prox writes it in place
    without autograd, and sums of squares carry no graph. Under no_grad (an optimizer
    step) no detached copy of the handle is made: a few hundred per step cost ~1 ms."""
    if is_dtensor(x):
        # the storage itself: to_local() would add an autograd node per call, twice per
        # tensor and step
        local = getattr(x, "_local_tensor", None)
        x = x.to_local() if local is None else local
    return x.detach() if torch.is_grad_enabled() else x


def content(t: Tensor | None) -> tuple | None:
    """A tensor's shape, sum and position-weighted sum: equal on ranks that hold the
    same values (a reordering or a changed entry changes the last)."""
    if t is None:
        return None
    flat = t.detach().reshape(-1).double()
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return tuple(t.shape), float(flat.sum()), float((flat * position).sum())


def mesh_agree(x: Tensor, fingerprint: dict[str, Any], error: BaseException | None) -> None:
    """:func:`agree` over the whole mesh of the DTensor `x`."""
    mesh = x.device_mesh
    agree([mesh.get_group(d) for d in range(mesh.ndim)], _local(x).device, fingerprint, error)


def same_local_layout(t: Tensor, x: Tensor) -> bool:
    """Whether `t` (a gradient, a momentum buffer) is stored like `x`: both DTensors
    with the same mesh and placements (a ``Partial`` gradient must be reduced first)
    or neither, and local shards of one shape, dtype and device."""
    if is_dtensor(t) != is_dtensor(x):
        return False
    if is_dtensor(t):
        same_mesh = t.device_mesh is x.device_mesh or t.device_mesh == x.device_mesh
        if not same_mesh or t.placements != x.placements:
            return False
        t, x = t._local_tensor, x._local_tensor
    return t.shape == x.shape and t.dtype == x.dtype and t.device == x.device


def _norms(x: Tensor, group_ids: Tensor | None, num_groups: int) -> Tensor:
    """float64 group norms; a 16- or 32-bit norm that overflowed is computed again from
    float64 values (one check, so no host synchronisation per tensor)."""
    norms = ops.group_norms(x, group_ids, num_groups)
    if norms.dtype != torch.float64 and bool(torch.isinf(norms).any()):
        return ops.group_norms(x.double(), group_ids, num_groups)
    return norms.double()


def _local_groups(xs, layouts, group_ids, num_groups, names) -> list[LocalGroups]:
    return [LocalGroups(*args) for args in zip(xs, layouts, group_ids, num_groups, names)]


def _mesh_of(xs: Sequence[Tensor], name: str):
    meshes = {id(x.device_mesh): x.device_mesh for x in xs if is_dtensor(x)}
    if len(meshes) > 1:
        raise ValueError(f"{name}: the DTensors of one param group or term must share one device mesh")
    return next(iter(meshes.values()))


class ShardedGroups:
    """The tensors of one WGSEF term set (a param group, or one functional call) spread
    over processes: their local groups, and the collectives that complete the norms.

    On a device mesh, squares are summed over the mesh dims on which any of the
    tensors is sharded; a tensor not sharded on one of those dims contributes only
    from the ranks at coordinate 0 there, so that nothing is counted twice. Under
    ``ZeroRedundancyOptimizer`` (:meth:`partitioned`) each rank holds whole tensors,
    contributes and writes only those it owns, and sums over ZeRO's process group.
    """

    def __init__(
        self,
        xs: Sequence[Tensor],
        layouts: Sequence[tuple[int, int, int]],
        group_ids: Sequence[Tensor | None],
        num_groups: Sequence[int],
        names: Sequence[str],
    ) -> None:
        mesh = _mesh_of(xs, "params")
        groups = _local_groups(xs, layouts, group_ids, num_groups, names)
        reduce_dims = tuple(sorted({d for g in groups for d in g.shard_mesh_dims}))
        coordinate = mesh.get_coordinate()
        contributes = [all(coordinate[d] == 0 for d in reduce_dims if d not in g.shard_mesh_dims) for g in groups]
        reduce_groups = [mesh.get_group(d) for d in reduce_dims]
        self._init(groups, contributes, [True] * len(groups), reduce_groups, _local(xs[0]).device)
        # this rank's place among those the reduction spans (row-major over the reduce dims)
        index = 0
        for d in reduce_dims:
            index = index * mesh.size(d) + coordinate[d]
        self.process_index, self.process_count = index, math.prod(mesh.size(d) for d in reduce_dims)

    def _init(self, groups, contributes, writes, reduce_groups, device) -> None:
        self.process_index, self.process_count = None, None  # set on a mesh (not under ZeRO)
        self.groups = groups
        self.contributes = contributes  # whose squares this rank adds
        self.writes = writes  # which tensors this rank scales
        self.reduce_groups = reduce_groups
        self.device = device
        # with strided layouts only, all tensors' local groups go through one gather and
        # one scatter: their positions in the buffer of all groups, in tensor order
        self.strided = all(g.view is not None for g in groups)
        self.elementwise = False
        if self.strided:
            offsets = itertools.accumulate((g.num_groups for g in groups), initial=0)
            positions = [
                torch.arange(g.group_slice.start, g.group_slice.stop)
                if g.group_slice is not None
                else g.group_index.cpu()
                for g in groups
            ]
            self._positions = [p + o for p, o in zip(positions, offsets)]
            self._local_sizes = [p.numel() for p in positions]
            self._gather = self._positions_of(contributes)
            self._scatter = self._positions_of(writes)
            # single-element groups: prox_elements_ searches by passes instead of
            # all-reducing a norm per element
            self.elementwise = all(g.single_elements for g in groups)
            # the local squares of the tensors this rank adds, in the concatenation of all local groups
            starts = list(itertools.accumulate(self._local_sizes, initial=0))
            self._contributing = None
            if not all(contributes):
                chosen = [torch.arange(b, e) for b, e, c in zip(starts, starts[1:], contributes) if c]
                self._contributing = torch.cat(chosen or [torch.zeros(0, dtype=torch.int64)]).to(device)

    def _positions_of(self, flags: Sequence[bool]) -> Tensor:
        chosen = [p for p, f in zip(self._positions, flags) if f]
        return torch.cat(chosen).to(self.device) if chosen else torch.zeros(0, dtype=torch.int64, device=self.device)

    @classmethod
    def partitioned(
        cls,
        xs: Sequence[Tensor],
        layouts: Sequence[tuple[int, int, int]],
        group_ids: Sequence[Tensor | None],
        num_groups: Sequence[int],
        names: Sequence[str],
        owned: Sequence[bool],
        process_group,
    ) -> ShardedGroups:
        """Whole tensors partitioned between ranks (ZeRO): rank r owns those marked in `owned`."""
        self = cls.__new__(cls)
        groups = _local_groups(xs, layouts, group_ids, num_groups, names)
        device = xs[0].device if xs else torch.device("cpu")
        self._init(groups, list(owned), list(owned), [process_group], device)
        return self

    def all_reduce_(self, buffer: Tensor) -> Tensor:
        """Sum `buffer` over the ranks that hold parts of the tensors, in place; every
        rank ends with the same bits."""
        for group in self.reduce_groups:
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
        return buffer

    def squares(self, xs: Sequence[Tensor], transform=None) -> list[Tensor]:
        """Each tensor's global float64 squared group norms (of ``transform(local
        shard)`` if given): views into one buffer, summed by one all-reduce."""
        return list(self.squares_buffer(xs, transform).split([g.num_groups for g in self.groups]))

    def squares_buffer(self, xs: Sequence[Tensor], transform=None) -> Tensor:
        """The squares of :meth:`squares`, all tensors' groups in one buffer."""
        sizes = [g.num_groups for g in self.groups]
        buffer = torch.zeros(sum(sizes), dtype=torch.float64, device=self.device)
        parts = list(buffer.split(sizes))
        if self.strided:
            norms = []
            for x, g, counts in zip(xs, self.groups, self.contributes):
                if counts and g.view[1]:
                    local = _local(x)
                    local = local if transform is None else transform(local)
                    norms.append((local.reshape(g.view), g.view[1]))
            if norms:
                values = [ops.group_norms(v, None, m) for v, m in norms]
                if any(v.dtype != torch.float64 for v in values) and bool(torch.isinf(torch.cat(values)).any()):
                    values = [ops.group_norms(v.double(), None, m) for v, m in norms]  # a 32-bit norm overflowed
                buffer.index_add_(0, self._gather, torch.cat(values).double().square_())
        else:
            for x, g, counts, part in zip(xs, self.groups, self.contributes, parts):
                if counts:
                    local = _local(x)
                    g.squares(local if transform is None else transform(local), part)
        return self.all_reduce_(buffer)

    def sgd_squares_buffer(
        self, xs: Sequence[Tensor], grads: Sequence[Tensor], bufs: Sequence[Tensor], **sgd_options
    ) -> Tensor:
        """torch.optim.SGD's update of every local shard fused with the squares of the
        result (``ops.sgd_group_squares_``, one pass), summed like :meth:`squares_buffer`.
        Strided layouts only; `bufs` empty without momentum."""
        local = ops.sgd_group_squares_(
            [_local(x) for x in xs],
            [_local(g) for g in grads],
            [_local(b) for b in bufs],
            [v for g in self.groups for v in g.view],
            **sgd_options,
        )
        buffer = torch.zeros(sum(g.num_groups for g in self.groups), dtype=torch.float64, device=self.device)
        buffer.index_add_(0, self._gather, local if self._contributing is None else local[self._contributing])
        return self.all_reduce_(buffer)

    def scale_all_(self, xs: Sequence[Tensor], factors: Tensor) -> None:
        """Scale every tensor this rank writes by its groups' entries of `factors` (the
        buffer of all groups, in tensor order)."""
        per_tensor = factors.split([g.num_groups for g in self.groups])
        if not self.strided:
            return self.scale_(xs, per_tensor)
        local_factors = iter(
            factors.index_select(0, self._scatter).split([n for n, w in zip(self._local_sizes, self.writes) if w])
        )
        views, scales = [], []
        for x, g, writes, whole in zip(xs, self.groups, self.writes, per_tensor):
            if not writes:
                continue
            f = next(local_factors)
            local = _local(x)
            if local.numel() == 0:
                continue
            if local.is_contiguous():
                views.append(local.view(g.view))
                scales.append(f.to(local.dtype).view(1, -1, 1))
            else:
                g.scale_(local, whole)
        if views:
            torch._foreach_mul_(views, scales)

    def scale_(self, xs: Sequence[Tensor], factors: Sequence[Tensor]) -> None:
        for x, g, f, writes in zip(xs, self.groups, factors, self.writes):
            if writes:
                g.scale_(_local(x), f)

    def select(self, indices: Sequence[int]) -> ShardedGroups:
        """The same tensors' subset `indices` (the params with a gradient this step)."""
        if len(indices) == len(self.groups):
            return self
        subset = ShardedGroups.__new__(ShardedGroups)
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        subset._init(
            pick(self.groups),
            pick(self.contributes),
            pick(self.writes),
            self.reduce_groups,
            self.device,
        )
        subset.process_index, subset.process_count = self.process_index, self.process_count
        return subset

    @property
    def searches_by_passes(self) -> bool:
        """Whether the prox runs ``prox_elements_``: single-element groups of CPU
        tensors on a mesh (a CUDA kernel for it does not exist yet)."""
        return self.elementwise and self.process_count is not None and self.device.type == "cpu"

    def prox_elements_(
        self,
        xs: Sequence[Tensor],
        weights: Sequence[Tensor | None],
        k: Sequence[int],
        lam: Tensor,
        lr: Tensor,
        shared: bool,
    ) -> None:
        """The prox of single-element groups: the search streams the local shards and
        all-reduces a few counts and sums per pass (``ops.prox_elements_``)."""
        local_weights = []
        for d, g in zip(weights or [], self.groups):
            if d is not None:
                d = d.to(self.device)[g.group_slice if g.group_slice is not None else g.group_index]
            local_weights.append(d)
        ops.prox_elements_(
            [_local(x) for x in xs],
            local_weights if any(d is not None for d in local_weights) else [],
            list(self.contributes),
            list(k),
            lam,
            lr,
            shared,
            [group.group_name for group in self.reduce_groups],
            self.process_index,
            self.process_count,
        )


def agree(groups: Sequence, device: torch.device, fingerprint: dict[str, Any], error: BaseException | None) -> None:
    """Raise on every rank when any rank failed its checks or the ranks disagree on
    an argument: one all-reduce of a few numbers over the process groups (those of a
    mesh's dims, in turn), so that no rank goes on to a collective that the others skip."""
    keys = sorted(fingerprint)
    flat = [1.0 if error is not None else 0.0, 1.0]
    for key in keys:
        v = _hash(fingerprint[key])
        flat += [float(v), float(v) * v]
    buffer = torch.tensor(flat, dtype=torch.float64, device=device)
    for group in groups:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    if error is not None:
        raise error
    values = buffer.tolist()
    if values[0]:
        raise RuntimeError("wgsef: another rank rejected this step (see its error); nothing was changed")
    ranks = values[1]
    for i, key in enumerate(keys):
        total, total_sq = values[2 + 2 * i], values[3 + 2 * i]
        if ranks * total_sq != total * total:  # equal only when every rank has the same value
            raise ValueError(f"{key}: the ranks disagree on {key}; every rank must pass the same value")


def _hash(value: Any) -> int:
    """A 20-bit fingerprint of a value (sums of squares of these stay exact in float64)."""
    return zlib.crc32(repr(value).encode()) & 0xFFFFF


def factors_from_norms(norms: Tensor, out: Tensor) -> Tensor:
    """The per-group factor of a prox computed on the norms themselves: a group whose
    norm z becomes z' was scaled by z'/z (zero groups stay zero, any factor does)."""
    positive = norms > 0
    return out.div_(torch.where(positive, norms, 1.0)).mul_(positive)


def prox_multi_(
    sharded: ShardedGroups,
    xs: Sequence[Tensor],
    weights: Sequence[Tensor | None],
    k: Sequence[int],
    lam: Tensor,
    lr: Tensor,
    shared: bool,
    squares: Tensor | None = None,
) -> None:
    """``ops.prox_multi_`` on sharded tensors: each tensor its own term, or one shared
    term. `squares`: the all-reduced squares, where the caller has them already."""
    if squares is None and sharded.searches_by_passes:
        return sharded.prox_elements_(xs, weights, k, lam, lr, shared)
    norms = (sharded.squares_buffer(xs) if squares is None else squares).sqrt_()
    sizes = [g.num_groups for g in sharded.groups]
    out = norms.clone()
    layout = [v for m in sizes for v in (1, m, 1)]
    w = [None if d is None else d.to(device=norms.device) for d in weights] if weights else []
    ops.prox_multi_(
        list(out.split(sizes)), layout, [], w if any(d is not None for d in w) else [], list(k), lam, lr, shared
    )
    sharded.scale_all_(xs, factors_from_norms(norms, out))


def coupled_norms(sharded: ShardedGroups, xs: Sequence[Tensor], coupling: Sequence[Tensor], total: int) -> Tensor:
    """The norms of the coupled groups: members' squares added into their coupled
    group locally, then one all-reduce of the joint vector."""
    device = _local(xs[0]).device if xs else torch.device("cpu")
    joint = torch.zeros(total, dtype=torch.float64, device=device)
    for x, g, c, counts in zip(xs, sharded.groups, coupling, sharded.contributes):
        if counts:
            joint.index_add_(0, c.to(device), g.squares(_local(x).detach()))
    return sharded.all_reduce_(joint).sqrt()


def prox_coupled_(
    sharded: ShardedGroups,
    xs: Sequence[Tensor],
    coupling: Sequence[Tensor],
    term_sizes: Sequence[int],
    weights: Tensor | None,
    k: Sequence[int],
    lam: Tensor,
    lr: Tensor,
) -> None:
    """``ops.prox_coupled_`` on sharded tensors."""
    norms = coupled_norms(sharded, xs, coupling, sum(term_sizes))
    out = norms.clone()
    parts = list(out.split(list(term_sizes)))
    layout = [v for s in term_sizes for v in (1, s, 1)]
    w = list(weights.to(norms.device).split(list(term_sizes))) if weights is not None else []
    ops.prox_multi_(parts, layout, [], w, list(k), lam, lr, False)
    factors = factors_from_norms(norms, out)
    sharded.scale_(xs, [factors[c.to(factors.device)] for c in coupling])


# The functional API on one DTensor: wgsef.functional routes DTensors here.


def _one_term(x: Tensor, layout, name: str = "x") -> ShardedGroups:
    shape = layout.shape or (0, layout.num_groups, 0)
    return ShardedGroups([x], [shape], [layout.group_ids], [layout.num_groups], [name])


def _replicated(x: Tensor, local: Tensor) -> Tensor:
    mesh = x.device_mesh
    return DTensor.from_local(local, mesh, [Replicate()] * mesh.ndim, run_check=False)


def group_norms(x: Tensor, layout) -> Tensor:
    """The global group norms of a DTensor, replicated on its mesh (a collective)."""
    norms = _one_term(x, layout).squares([x])[0].sqrt()
    return _replicated(x, norms.to(torch.promote_types(x.dtype, torch.float32)))


def _value_and_factors(x: Tensor, k: int, layout, weights: Tensor | None, with_factors: bool):
    sharded = _one_term(x, layout)
    norms = sharded.squares([x])[0].sqrt()
    z = norms.view(1, -1, 1)
    w = None if weights is None else weights.to(norms.device)
    value = ops.value(z, k, w, None, norms.numel())
    factors = None
    if with_factors:  # d_i / u_i: the gradient of WGSEF is x_i times its group's factor
        grad_z = ops.value_backward(
            torch.ones((), dtype=torch.float64, device=norms.device), z, k, w, None, norms.numel()
        )
        factors = factors_from_norms(norms, grad_z.reshape(-1))
    return sharded, value, factors


class _ShardedValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, layout, weights: Tensor | None) -> Tensor:
        sharded, value, factors = _value_and_factors(x, k, layout, weights, x.requires_grad)
        ctx.sharded, ctx.factors = sharded, factors
        ctx.save_for_backward(x)
        return _replicated(x, value.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        local = x.to_local().detach().clone()
        ctx.sharded.groups[0].scale_(local, ctx.factors)
        scale = grad.to_local() if is_dtensor(grad) else grad
        local.mul_(scale.to(local.dtype))
        out = DTensor.from_local(local, x.device_mesh, x.placements, run_check=False, shape=x.shape, stride=x.stride())
        return out, None, None, None


def value(x: Tensor, k: int, layout, weights: Tensor | None) -> Tensor:
    """WGSEF of a DTensor as a replicated 0-dim DTensor; differentiable (the gradient is
    placed like x)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _ShardedValue.apply(x, k, layout, weights)
    _, value, _ = _value_and_factors(x, k, layout, weights, False)
    return _replicated(x, value.to(x.dtype))


def prox_(x: Tensor, k: int, lam: Tensor, layout, weights: Tensor | None) -> Tensor:
    """The prox of a DTensor in place: one all-reduce of its group norms."""
    one = torch.ones((), dtype=torch.float64)
    prox_multi_(_one_term(x, layout), [x], [weights], [k], lam, one, False)
    return x


# N:M on DTensors: the groups must lie inside the shards.


def check_nm_shards(w: Tensor, m: int, dim: int, name: str = "w") -> None:
    """Raise unless every shard boundary along `dim` falls between N:M groups of m."""
    check_placements(w, name)
    d = dim % w.dim()
    if any(isinstance(pl, Shard) and pl.dim == d for pl in w.placements):
        bad = _first_split_group(tuple(w.shape), tuple(w.device_mesh.shape), tuple(w.placements), m, d)
        if bad is not None:
            coordinate, begin, end = bad
            raise ValueError(
                f"{name}: a group of m={m} along dim {d} would span shards (the shard at mesh coordinate "
                f"{coordinate} holds [{begin}, {end})); shard another dim, or make every shard's size "
                f"along dim {d} a multiple of {m}"
            )


@functools.lru_cache(maxsize=256)
def _first_split_group(shape, mesh_shape, placements, m: int, d: int):
    """The first shard (mesh coordinate, begin, end along d) whose bounds split a group
    of m, or None; every rank computes every shard, so all of them raise alike. Cached:
    a parametrization asks at every forward pass."""
    for coordinate in itertools.product(*(range(s) for s in mesh_shape)):
        local, offset = _compute_local_shape_and_global_offset(shape, mesh_shape, list(coordinate), placements)
        if local[d] % m or (local[d] and offset[d] % m):
            return coordinate, offset[d], offset[d] + local[d]
    return None


def on_local_shard(fn, w: Tensor, m: int, dim: int) -> Tensor:
    """fn on w's local shard (N:M groups of m along dim inside it), placed like w."""
    check_nm_shards(w, m, dim)
    out = fn(w.to_local())
    return DTensor.from_local(out, w.device_mesh, w.placements, run_check=False, shape=w.shape, stride=w.stride())
