"""Coupled groups of real architectures, found with Torch-Pruning's dependency graph.

A channel of a network lives in several tensors: its producer's output slice
(conv filter or linear row, and bias), its batch-norm scale and shift, and, through
residual adds and concatenations, the same channel of every other producer on
that path. :func:`coupled_terms` asks Torch-Pruning (``pip install wgsef[prune]``)
which slices move together and turns each of its layer groups into one WGSEF term
whose groups are the coupled channels (or attention heads). :func:`coupled_param_groups`
hands those terms to :class:`wgsef.ProxSGD`, and :func:`compact` removes the
coupled groups that training left at zero. docs/design.md §4.4 gives the rules.

Zero invariance: every group is chosen so that when all its slices are zero the
channel's output is exactly zero, so removing the channel, together with the
consumers' input slices, leaves the function unchanged. Layer groups for which
that cannot hold are left unregularized and listed with the reason in
:attr:`CoupledTerms.skipped`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed

__all__ = ["CoupledMember", "CoupledTerm", "CoupledTerms", "compact_coupled", "coupled_param_groups", "coupled_terms"]


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(
            "coupled groups need Torch-Pruning: pip install 'wgsef[prune]' (or pip install torch-pruning)"
        ) from err
    return torch_pruning


@dataclass
class CoupledMember:
    """One tensor's share of the coupled groups: slice ``i`` of ``param`` along
    ``dim`` belongs to coupled group ``coupling[i]`` (an index over all terms)."""

    name: str
    param: nn.Parameter
    dim: int
    coupling: Tensor


@dataclass
class CoupledTerm:
    """One WGSEF term: the coupled groups of one Torch-Pruning layer group.

    ``channels[g]`` lists the root layer's output channels in coupled group ``g``
    (one channel, or the channels of one attention head)."""

    name: str
    channels: list[list[int]]
    # (module, Torch-Pruning's pruning function), or (nn.MultiheadAttention, None) for its heads
    root: tuple[nn.Module, Any]

    @property
    def size(self) -> int:
        return len(self.channels)


@dataclass
class CoupledTerms:
    """The coupled terms of a model, their members, and what was left out."""

    terms: list[CoupledTerm]
    members: list[CoupledMember]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer group, reason)

    @property
    def term_sizes(self) -> list[int]:
        return [t.size for t in self.terms]

    def group_sizes(self) -> Tensor:
        """Elements in each coupled group (float64)."""
        sizes = torch.zeros(sum(self.term_sizes), dtype=torch.float64)
        for m in self.members:
            per_slice = m.param.numel() // max(m.param.shape[m.dim], 1)
            sizes.index_add_(
                0, m.coupling.cpu(), torch.full((m.coupling.numel(),), float(per_slice), dtype=torch.float64)
            )
        return sizes

    def group_norms(self) -> Tensor:
        """Euclidean norm of every coupled group (float64, on the CPU)."""
        sq = torch.zeros(sum(self.term_sizes), dtype=torch.float64)
        with torch.no_grad():
            for m in self.members:
                x = m.param.detach().double().movedim(m.dim, 0).reshape(m.param.shape[m.dim], -1)
                sq.index_add_(0, m.coupling.cpu(), x.square().sum(1).cpu())
        return sq.sqrt()


# --- how each Torch-Pruning dependency maps to parameter slices -----------------

_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def _slices(tp, module: Any, handler: Any, params_declared: dict[int, int]) -> tuple[list[tuple[str, int, str]], str]:
    """The (parameter attribute, dim, role) slices a dependency prunes, or a reason
    why the layer group cannot be a zero-invariant coupled group."""
    fn = tp.pruner.function
    out = handler in (
        fn.prune_conv_out_channels,
        fn.prune_linear_out_channels,
        fn.prune_depthwise_conv_out_channels,
        fn.prune_depthwise_conv_in_channels,
    )
    if isinstance(module, nn.Parameter):
        if id(module) not in params_declared:
            return [], "a parameter Torch-Pruning cannot place (declare it in unwrapped_parameters=[(param, dim)])"
        return [("", params_declared[id(module)], "out")], ""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups not in (1, module.in_channels) or (
            module.groups > 1 and module.out_channels != module.in_channels
        ):
            return [], f"grouped convolution {type(module).__name__}(groups={module.groups})"
        depthwise = module.groups > 1
        if out or depthwise or handler == fn.prune_conv_out_channels:
            dim = 1 if module.transposed else 0
            return [("weight", dim, "out"), ("bias", 0, "out")], ""
        return [("weight", 0 if module.transposed else 1, "in")], ""
    if isinstance(module, nn.Linear):
        if out:
            return [("weight", 0, "out"), ("bias", 0, "out")], ""
        return [("weight", 1, "in")], ""
    if isinstance(module, _PER_CHANNEL_NORMS):
        return [("weight", 0, "out"), ("bias", 0, "out")], ""
    if isinstance(module, nn.PReLU):
        return ([("weight", 0, "out")] if module.num_parameters > 1 else []), ""
    if isinstance(module, _CHANNEL_NORMS) or type(module).__name__.lower().endswith("norm"):
        return [], f"{type(module).__name__} normalizes across channels, so a zero channel changes the others"
    if isinstance(module, nn.MultiheadAttention):
        return [], "the embedding dimension of nn.MultiheadAttention (its heads are separate terms)"
    if isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
        return [], f"{type(module).__name__} is a layer Torch-Pruning's coupling does not cover here"
    return [], ""  # parameter-free ops (activations, pooling, adds, reshapes)


def _floating_outputs(output: Any) -> list[Tensor]:
    """Every floating-point tensor of a model's output (tuples, dicts and Hugging
    Face ModelOutput alike), so the trace starts from all of them."""
    found: list[Tensor] = []

    def visit(o: Any) -> None:
        if isinstance(o, Tensor):
            if o.is_floating_point():
                found.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                visit(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    visit(output)
    return found


def _run(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


def _dependency_graph(tp, model: nn.Module, example_inputs: Any, unwrapped_parameters) -> tuple[Any, set]:
    """Torch-Pruning's graph of ``model``, and the grad_fns of the model's outputs."""
    for name, module in model.named_modules():
        # Torch-Pruning's graph walk does not terminate on k/v heads shared by several
        # query heads (VainF/Torch-Pruning#527): refuse instead of hanging
        shared = getattr(module, "num_key_value_groups", 1)
        if isinstance(shared, int) and shared > 1:
            raise NotImplementedError(
                f"model: {name or type(model).__name__} uses grouped-query attention ({shared} query heads per "
                "k/v head), which Torch-Pruning cannot trace; give the model num_key_value_heads == "
                "num_attention_heads or regularize it with per-tensor groups (regularized_param_groups)"
            )
    outputs: set = set()

    def traced_outputs(output: Any) -> list[Tensor]:
        found = [t for t in _floating_outputs(output) if t.grad_fn is not None]
        if not found:
            raise ValueError("example_inputs: the model's output holds no floating-point tensor that depends on it")
        outputs.update(t.grad_fn for t in found)
        return found

    was_training = model.training
    model.eval()  # batch-norm running statistics stay as they are
    try:
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs,
            forward_fn=_run,
            output_transform=traced_outputs,
            unwrapped_parameters=list(unwrapped_parameters),
            verbose=False,
        )
        return graph, outputs
    except (ValueError, TypeError) as err:
        if str(err).startswith("example_inputs"):
            raise
        raise RuntimeError(f"Torch-Pruning could not trace {type(model).__name__}: {err}") from err
    except RuntimeError as err:
        raise RuntimeError(f"Torch-Pruning could not trace {type(model).__name__}: {err}") from err
    finally:
        model.train(was_training)


def _head_dims(model: nn.Module) -> dict[int, int]:
    """head_dim of every linear projection that Hugging Face-style attention modules
    split into heads (the q/k/v projections), by id of the layer."""
    dims: dict[int, int] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
        heads = getattr(module, "num_attention_heads", None) or getattr(config, "num_attention_heads", None)
        if not isinstance(head_dim, int) or not isinstance(heads, int):
            continue
        for name in ("query", "key", "value", "q_proj", "k_proj", "v_proj"):
            layer = getattr(module, name, None)
            if isinstance(layer, nn.Linear) and layer.out_features % head_dim == 0:
                dims[id(layer)] = head_dim
    return dims


def coupled_terms(
    model: nn.Module,
    example_inputs: Any,
    *,
    ignored_layers: Iterable[nn.Module] = (),
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] = (),
    heads: bool = True,
) -> CoupledTerms:
    """The coupled groups of ``model``, one WGSEF term per Torch-Pruning layer group.

    Args:
        model: any module Torch-Pruning can trace; it is not modified (the trace
            runs one forward pass in eval mode).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword
            inputs for one forward pass.
        ignored_layers: modules whose output channels stay unregularized (e.g. the
            classifier; its input channels still join the groups that feed it).
        unwrapped_parameters: ``(param, dim)`` for parameters used outside standard
            layers (a class token, a layer scale): their slices along ``dim`` join
            the coupled groups. Undeclared ones exclude their layer group.
        heads: attention heads as groups: Hugging Face-style q/k/v projections whose
            module has ``num_attention_heads`` and ``head_dim`` (or
            ``attention_head_size``), and ``nn.MultiheadAttention``.

    Returns:
        A :class:`CoupledTerms`; ``skipped`` lists each layer group left out and why.
    """
    tp = _torch_pruning()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    declared = {id(p): d for p, d in unwrapped_parameters}
    dg, outputs = _dependency_graph(tp, model, example_inputs, unwrapped_parameters)
    module_names = {id(m): n for n, m in model.named_modules()}
    param_names = {id(p): n for n, p in model.named_parameters()}
    head_dims = _head_dims(model) if heads else {}
    roots = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)

    terms: list[CoupledTerm] = []
    skipped: list[tuple[str, str]] = []
    # candidate slices: id(param) -> list of (role, dim, slice index tensor, global coupled id tensor)
    candidates: dict[int, list[tuple[str, int, Tensor, Tensor]]] = {}
    params_by_id: dict[int, nn.Parameter] = {}
    offset = 0
    for group in dg.get_all_groups(ignored_layers=list(ignored_layers), root_module_types=roots):
        root_dep = group[0].dep
        root_name = module_names.get(id(root_dep.target.module), root_dep.target.name)
        width = len(group[0].idxs)
        head_dim = next(
            (head_dims[id(dep.target.module)] for dep, _ in group.items if id(dep.target.module) in head_dims), 1
        )
        if width % head_dim:
            skipped.append((root_name, f"{width} channels do not split into heads of {head_dim}"))
            continue
        found, reason = [], ""
        if any(
            item.dep.target.grad_fn in outputs and dg.is_out_channel_pruning_fn(item.dep.handler)
            for item in group.items
        ):
            skipped.append((root_name, "its channels are the model's output"))
            continue
        for item in group.items:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            slices, why = _slices(tp, dep.target.module, dep.handler, declared)
            if why:
                reason = f"{module_names.get(id(dep.target.module), dep.target.name)}: {why}"
                break
            for attr, dim, role in slices:
                p = dep.target.module if attr == "" else getattr(dep.target.module, attr, None)
                if not isinstance(p, nn.Parameter) or not p.requires_grad:
                    continue
                at = torch.tensor(idxs, dtype=torch.int64)
                channel = torch.tensor(root_idxs, dtype=torch.int64)
                if at.numel() and int(at.max()) >= p.shape[dim]:
                    reason = f"{param_names.get(id(p), '?')}: Torch-Pruning's indices exceed dim {dim}"
                    break
                found.append((p, role, dim, at, offset + channel // head_dim))
            if reason:
                break
        if reason:
            skipped.append((root_name, reason))
            continue
        size = width // head_dim
        channels = [list(range(g * head_dim, (g + 1) * head_dim)) for g in range(size)]
        suffix = " (heads)" if head_dim > 1 else ""
        terms.append(CoupledTerm(root_name + suffix, channels, (root_dep.target.module, root_dep.handler)))
        for p, role, dim, at, coupled in found:
            params_by_id[id(p)] = p
            candidates.setdefault(id(p), []).append((role, dim, at, coupled))
        offset += size
    if heads:
        for name, module in model.named_modules():
            if not isinstance(module, nn.MultiheadAttention) or module in set(ignored_layers):
                continue
            if not module._qkv_same_embed_dim or module.in_proj_weight is None:
                skipped.append((name, "nn.MultiheadAttention with separate q/k/v weights"))
                continue
            h, e = module.num_heads, module.embed_dim
            rows = (torch.arange(3 * e) % e) // module.head_dim + offset
            cols = torch.arange(e) // module.head_dim + offset
            found = [(module.in_proj_weight, "out", 0, torch.arange(3 * e), rows)]
            if module.in_proj_bias is not None:
                found.append((module.in_proj_bias, "out", 0, torch.arange(3 * e), rows))
            found.append((module.out_proj.weight, "in", 1, torch.arange(e), cols))
            if module.bias_k is not None or module.add_zero_attn:
                skipped.append((name, "nn.MultiheadAttention with bias_k/bias_v or add_zero_attn"))
                continue
            terms.append(CoupledTerm(f"{name} (heads)", [[i] for i in range(h)], (module, None)))
            for p, role, dim, at, coupled in found:
                params_by_id[id(p)] = p
                candidates.setdefault(id(p), []).append((role, dim, at, coupled))
            offset += h
    members = []
    for pid, cands in candidates.items():
        p = params_by_id[pid]
        outs = [c for c in cands if c[0] == "out"]
        chosen = outs or cands  # a producer slice wins; a consumer slice joins only a param with no group of its own
        dims = {c[1] for c in chosen}
        if len(dims) != 1:
            raise RuntimeError(f"coupled_terms: {param_names.get(pid, '?')} is coupled along dims {sorted(dims)}")
        dim = dims.pop()
        coupling = torch.full((p.shape[dim],), -1, dtype=torch.int64)
        for _, _, at, coupled in chosen:
            coupling[at] = coupled
        if bool((coupling < 0).any()):
            if outs:
                raise RuntimeError(f"coupled_terms: Torch-Pruning covers only part of {param_names.get(pid, '?')}")
            continue  # a consumer only partly fed by the terms (e.g. after a concat with a skipped branch)
        members.append(CoupledMember(param_names.get(pid, "?"), p, dim, coupling.to(p.device)))
    _drop_empty_terms(terms, members)
    return CoupledTerms(terms, members, skipped)


def _drop_empty_terms(terms: list[CoupledTerm], members: list[CoupledMember]) -> None:
    """Terms whose groups hold no trainable slice (e.g. every producer frozen) are
    removed and the coupled ids renumbered."""
    used = torch.zeros(sum(t.size for t in terms), dtype=torch.bool)
    for m in members:
        used[m.coupling.cpu()] = True
    keep, new_ids, offset, begin = [], [], 0, 0
    for t in terms:
        if bool(used[begin : begin + t.size].all()):
            keep.append(t)
            new_ids.append(torch.arange(offset, offset + t.size))
            offset += t.size
        else:
            new_ids.append(torch.full((t.size,), -1, dtype=torch.int64))
        begin += t.size
    remap = torch.cat(new_ids) if new_ids else torch.zeros(0, dtype=torch.int64)
    terms[:] = keep
    for m in members:
        m.coupling = remap.to(m.coupling.device)[m.coupling]
    members[:] = [m for m in members if bool((m.coupling >= 0).all())]


def coupled_param_groups(
    model: nn.Module,
    example_inputs: Any,
    k: int | float | Sequence[int | float] = 0.5,
    lam: float | Sequence[float] = 1e-4,
    *,
    shared_k: bool = False,
    weights: str | None = "size",
    ignored_layers: Iterable[nn.Module] = (),
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] = (),
    heads: bool = True,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Param groups for :class:`wgsef.ProxSGD` over the coupled groups of any traceable model.

    One WGSEF term per Torch-Pruning layer group: its groups are the coupled
    channels (a producer's filter and bias, its batch-norm scale and shift, every
    tensor tied to it by residual adds or concatenations, and the input slices of
    consumers that have no group of their own), or attention heads.

    Args:
        model: the network (not modified).
        example_inputs: inputs for one traced forward pass (tensor, tuple or dict).
        k: per-term budget: an int count, a float kept fraction in (0, 1], or a list
            with one per term; with ``shared_k`` one budget over all coupled groups.
        lam: regularization strength, one value or one per term.
        shared_k: one network-wide term (and budget) over all coupled groups.
        weights: ``"size"``: ``d_i = |G_i| / mean |G_j|`` over the term (groups compete
            by root-mean-square magnitude; equal sizes give ``d_i = 1``); ``None``:
            ``d_i = 1``.
        ignored_layers, unwrapped_parameters, heads: as in :func:`coupled_terms`.
        check: verify zero invariance on ``example_inputs`` before returning: zero
            one group of every term in a copy, remove the same groups in a
            second copy, and require equal outputs.

    Returns:
        ``[coupled_group, other_group]``: the first holds the coupled members with
        ``groups`` (``("dim", d)`` per tensor), ``coupling``, ``term_sizes``,
        ``term_names``, ``k``, ``lam`` and ``weights``; the second every other trainable
        parameter with ``k=None`` (plain SGD). ``other_group["skipped"]`` lists the
        layer groups left out and why.
    """
    if any(distributed.is_dtensor(p) for p in model.parameters()):
        raise ValueError(
            "model: has DTensor parameters (e.g. after fully_shard); build the groups on the model before "
            "sharding it, then map them to the sharded parameters with wgsef.rebind_param_groups(groups, model)"
        )
    found = coupled_terms(
        model, example_inputs, ignored_layers=ignored_layers, unwrapped_parameters=unwrapped_parameters, heads=heads
    )
    if weights not in ("size", None):
        raise ValueError(f"weights: expected 'size' or None, got {weights!r}")
    if check:
        check_zero_invariance(model, example_inputs, found, ignored_layers, unwrapped_parameters)
    sizes = found.term_sizes
    d = None
    if weights == "size" and sizes:
        d = found.group_sizes()
        spans = [sum(sizes)] if shared_k else sizes
        d = torch.cat([part / part.mean() for part in torch.split(d, spans) if part.numel()])
    members = found.members
    in_group = {id(m.param) for m in members}
    others = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_group]
    coupled = {
        "params": [m.param for m in members],
        "names": [m.name for m in members],
        "groups": [("dim", m.dim) for m in members],
        "coupling": [m.coupling for m in members],
        "term_sizes": sizes,
        "term_names": [t.name for t in found.terms],
        "k": k,
        "lam": lam,
        "weights": None if d is None else d.to(members[0].param.device),
        "shared_k": shared_k,
    }
    other = {"params": [p for _, p in others], "names": [n for n, _ in others], "k": None, "skipped": found.skipped}
    return [coupled, other]


def _zero_groups(found: CoupledTerms, groups: Tensor) -> None:
    with torch.no_grad():
        for m in found.members:
            hit = torch.isin(m.coupling, groups.to(m.coupling.device))
            if bool(hit.any()):
                m.param.index_fill_(m.dim, hit.nonzero().flatten(), 0.0)


def _prune(model: nn.Module, found: CoupledTerms, dg, zero: Tensor) -> None:
    """Remove the coupled groups in ``zero`` (never a whole layer): channels by
    Torch-Pruning, heads of an ``nn.MultiheadAttention`` by replacing it with a
    :class:`~wgsef.attention.PrunedMultiheadAttention` (after the channels, so it
    copies the final weights)."""
    from .attention import PrunedMultiheadAttention

    begin = 0
    zero_set = set(zero.tolist())
    attention = []
    for term in found.terms:
        groups = [g for g in range(term.size) if begin + g in zero_set]
        begin += term.size
        if not groups:
            continue
        if len(groups) == term.size:
            groups = groups[1:]  # a layer keeps one (zero) channel
        module, handler = term.root
        if handler is None:
            kept = torch.tensor(sorted(set(range(term.size)) - set(groups)), dtype=torch.int64)
            attention.append((module, kept))
            continue
        channels = [c for g in groups for c in term.channels[g]]
        dg.get_pruning_group(module, handler, channels).prune()
    names = {id(m): n for n, m in model.named_modules()}
    for module, kept in attention:
        parent_name, _, attr = names[id(module)].rpartition(".")
        setattr(model.get_submodule(parent_name), attr, PrunedMultiheadAttention.from_attention(module, kept))


def _outputs_close(a: Any, b: Any, rtol: float) -> tuple[bool, float]:
    """Whether two outputs agree to ``rtol`` relative to each tensor's largest
    magnitude, and the worst such difference."""
    ta, tb = _floating_outputs(a), _floating_outputs(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return False, math.inf
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.numel() == 0:
            continue
        x, y = x.detach().double(), y.detach().double()
        worst = max(worst, float((x - y).abs().max()) / max(float(x.abs().max()), 1e-30))
    return worst <= rtol, worst


def check_zero_invariance(
    model: nn.Module,
    example_inputs: Any,
    found: CoupledTerms,
    ignored_layers: Iterable[nn.Module] = (),
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] = (),
    rtol: float = 1e-4,
) -> None:
    """Raise if removing zero coupled groups changes the model's function: the last
    group of every term is zeroed in a copy and removed in another, and
    both copies must give the same outputs on ``example_inputs`` (eval mode)."""
    probe = torch.tensor(
        [sum(found.term_sizes[: i + 1]) - 1 for i, t in enumerate(found.terms) if t.size > 1],
        dtype=torch.int64,
    )
    if probe.numel() == 0:
        return
    zeroed = copy.deepcopy(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    found_zeroed = _on_copy(found, model, zeroed, ids)
    _zero_groups(found_zeroed, probe)
    pruned = copy.deepcopy(zeroed)
    declared = _params_on_copy(unwrapped_parameters, model, pruned)
    compact_coupled(pruned, example_inputs, declared, _found=_on_copy(found_zeroed, zeroed, pruned, ids))
    zeroed.eval()
    pruned.eval()
    with torch.no_grad():
        ok, worst = _outputs_close(_run(zeroed, example_inputs), _run(pruned, example_inputs), rtol)
    if not ok:
        raise RuntimeError(
            f"coupled groups: removing zero groups changed {type(model).__name__}'s output (relative difference "
            f"{worst:.3g}); a layer's coupling is not what Torch-Pruning traced. Pass it in ignored_layers"
        )


def _params_on_copy(
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]], source: nn.Module, target: nn.Module
) -> list[tuple[nn.Parameter, int]]:
    names = {id(p): n for n, p in source.named_parameters()}
    target_params = dict(target.named_parameters())
    return [(target_params[names[id(p)]], d) for p, d in unwrapped_parameters]


def _on_copy(found: CoupledTerms, source: nn.Module, target: nn.Module, ids: dict[int, str]) -> CoupledTerms:
    """The same terms with their members and roots pointing into a deep copy."""
    source_params = {n: p for n, p in source.named_parameters()}
    target_params = dict(target.named_parameters())
    source_modules = {id(m): n for n, m in source.named_modules()}
    target_modules = dict(target.named_modules())
    by_id = {id(p): n for n, p in source_params.items()}
    members = [
        CoupledMember(m.name, target_params[by_id[id(m.param)]], m.dim, m.coupling.clone()) for m in found.members
    ]
    terms = []
    for t in found.terms:
        module, handler = t.root
        terms.append(CoupledTerm(t.name, t.channels, (target_modules[source_modules[id(module)]], handler)))
    return CoupledTerms(terms, members, list(found.skipped))


def compact_coupled(
    model: nn.Module,
    example_inputs: Any,
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] = (),
    *,
    _found: CoupledTerms | None = None,
) -> nn.Module:
    """Remove, in place, every coupled group of ``model`` whose slices are all zero."""
    tp = _torch_pruning()
    found = _found
    if found is None:
        found = coupled_terms(model, example_inputs, unwrapped_parameters=unwrapped_parameters)
    dg, _ = _dependency_graph(tp, model, example_inputs, unwrapped_parameters)
    zero = (found.group_norms() == 0).nonzero().flatten()
    _prune(model, found, dg, zero)
    return model
