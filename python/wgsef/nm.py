"""N:M sparsity with progressive gradient flow (Bambhaniya et al., arXiv 2402.04744).

* :func:`nm_mask` / :func:`nm_decay`: native ops. The mask keeps the ``n`` largest
  ``|w|`` of every run of ``m`` consecutive elements along ``dim`` (NaN ranks
  with +inf, ties go to the lower index; docs/design.md §6.2); ``nm_decay`` returns
  ``W * (mask + D * (1 - mask))`` from the same pass, with a straight-through or
  scaled gradient and an optional SR-STE term.
* :class:`NMSchedule`: the step -> (phase, n, m, D) map of SR-STE, MDGF (linear and
  exponential mask decay) and SDGF (stepwise and geometric structure decay), with
  the dense -> decay -> fine-tune phases.
* :class:`NMSparsifier`: trains a model's ``nn.Linear``, ``nn.Conv1d/2d/3d`` and attention
  projections with decayed N:M weights through torch parametrizations, advances
  the schedule from an optimizer hook, and exports hard N:M weights.
* :func:`check_nm`: per-layer validity of a model's N:M structure.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import distributed, ops

__all__ = [
    "METHODS",
    "NMLayerCheck",
    "NMSchedule",
    "NMSparsifier",
    "NMState",
    "check_nm",
    "nm_decay",
    "nm_mask",
    "sdgf_geometric_patterns",
    "sdgf_stepwise_patterns",
]

METHODS = ("srste", "mdgf_linear", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric")


def nm_mask(w: Tensor, n: int, m: int, dim: int = -1) -> Tensor:
    """Boolean N:M mask of ``w``: the ``n`` largest ``|w|`` of every ``m`` consecutive
    elements along ``dim``.

    NaN ranks with +inf, ties go to the lower index, ``-0.0 == +0.0``
    (docs/design.md §6.2). ``0 <= n <= m``; the size of ``dim`` must be a multiple of
    ``m``. Any ``m`` works (m = 4, 8, 16, 32 and ``n = 1`` take vectorised paths). One read of ``w``; strided
    groups (``dim`` not last, e.g. conv input channels) are read in place.
    """
    if distributed.is_dtensor(w):  # groups inside the shards: each rank masks its own
        return distributed.on_local_shard(lambda local: ops.nm_mask(local, n, m, dim), w, m, dim)
    return ops.nm_mask(w, n, m, dim)


def nm_decay(
    w: Tensor,
    n: int,
    m: int,
    decay: float | Tensor = 0.0,
    dim: int = -1,
    grad_mode: str = "ste",
    srste_weight: float = 0.0,
) -> Tensor:
    """``W * (mask + D * (1 - mask))`` with ``mask = nm_mask(W, n, m, dim)``, in one pass.

    Args:
        w: weight tensor (float16, bfloat16, float32, float64).
        n, m, dim: the N:M pattern, as in :func:`nm_mask`.
        decay: ``D`` in ``[0, 1]``, the factor of the pruned weights (a float or a
            one-element tensor; use a tensor under ``torch.compile`` when it changes).
        grad_mode: ``"ste"`` (default): the gradient reaches every weight unchanged
            (straight-through, as in the authors' code); ``"scaled"``: pruned weights
            get ``D`` times the gradient (plain autodiff of the formula).
        srste_weight: ``lambda_W`` of SR-STE: adds ``lambda_W * (1 - mask) * W`` to the
            gradient, pulling pruned weights towards zero (2e-4 in the paper).
    """
    if not isinstance(decay, Tensor):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(f"decay: expected a float in [0, 1] or a one-element tensor, got {type(decay).__name__}")
        decay = torch.tensor(float(decay), dtype=torch.float64)
    return _nm_decay(w, n, m, dim, decay, grad_mode, srste_weight)


def _nm_decay(w: Tensor, n: int, m: int, dim: int, decay: Tensor, grad_mode: str, srste_weight: float) -> Tensor:
    if distributed.is_dtensor(w):
        return distributed.on_local_shard(
            lambda local: ops.nm_decay(local, n, m, dim, decay, grad_mode, srste_weight)[0], w, m, dim
        )
    return ops.nm_decay(w, n, m, dim, decay, grad_mode, srste_weight)[0]


# ---------------------------------------------------------------- schedules


def sdgf_stepwise_patterns(n: int, m: int) -> list[tuple[int, int]]:
    """SDGF-Stepwise: (m-1):m, then (m/2^d):m while above n, ending at n:m."""
    if n == m:
        return [(m, m)]
    patterns = [(m - 1, m)]
    d = 1
    while m // 2**d > n:
        patterns.append((m // 2**d, m))
        d += 1
    patterns.append((n, m))
    out: list[tuple[int, int]] = []
    for p in patterns:  # drop repeats and non-decreasing steps; always end at n:m
        if not out or p[0] < out[-1][0]:
            out.append(p)
    return out


def sdgf_geometric_patterns(n: int, m: int, k: int = 16) -> list[tuple[int, int]]:
    """SDGF-Geometric: (k n / 2^d):(k m / 2^d) for d = 0..log2(k); n/m stays fixed."""
    if k < 1 or k & (k - 1):
        raise ValueError(f"geometric_k: expected a power of two, got {k}")
    return [(k * n // 2**d, k * m // 2**d) for d in range(int(math.log2(k)) + 1)]


@dataclass(frozen=True)
class NMState:
    """What the forward pass uses at one step."""

    phase: str  # "dense", "decay" or "finetune"
    n: int
    m: int
    decay: float  # D: the factor of pruned weights


class NMSchedule:
    """Maps the training step to ``(phase, n, m, D)``; a pure function of the step.

    Phases: dense ``[0, d)`` (no mask), decay ``[d, T - s)``, fine-tune ``[T - s, T)``
    (the hard target mask), with ``d = round(dense_frac * T)`` and
    ``s = round(finetune_frac * T)``. In the decay phase, with ``j = step - d``:

    * ``"srste"``: the target n:m, D = 0 (use with ``srste_weight``; by default no
      dense or fine-tune phase);
    * ``"mdgf_linear"``: target n:m, ``D = max(1 - rate * j, 0)``; default rate reaches 0
      at the end of the decay phase;
    * ``"mdgf_exp"``: target n:m, ``D = exp(-rate * j)``; default rate reaches 1e-3 at
      the end of the decay phase;
    * ``"sdgf_stepwise"`` / ``"sdgf_geometric"``: D = 0 and the pattern walks
      :func:`sdgf_stepwise_patterns` / :func:`sdgf_geometric_patterns`, the decay phase
      split evenly between them.

    Args:
        n, m: the target pattern.
        total_steps: ``T``, the number of optimizer steps of the whole run.
        method: one of :data:`METHODS`.
        dense_frac, finetune_frac: phase lengths as fractions of ``T``; default 0.05 and
            0.15 (0 and 0 for SR-STE).
        decay_rate: the MDGF rate per step (``beta``), overriding the default.
        geometric_k: the first group-size multiplier of SDGF-Geometric (16 in the paper).
    """

    def __init__(
        self,
        n: int,
        m: int,
        total_steps: int,
        method: str = "mdgf_exp",
        dense_frac: float | None = None,
        finetune_frac: float | None = None,
        decay_rate: float | None = None,
        geometric_k: int = 16,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        if not (isinstance(m, int) and isinstance(n, int) and m >= 1 and 0 <= n <= m):
            raise ValueError(f"n, m: expected integers with 0 <= n <= m and m >= 1, got {n}:{m}")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
        default_frac = 0.0 if method == "srste" else None
        dense_frac = (0.05 if default_frac is None else 0.0) if dense_frac is None else dense_frac
        finetune_frac = (0.15 if default_frac is None else 0.0) if finetune_frac is None else finetune_frac
        for name, v in (("dense_frac", dense_frac), ("finetune_frac", finetune_frac)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {v}")
        if dense_frac + finetune_frac > 1.0:
            raise ValueError("dense_frac + finetune_frac must not exceed 1")
        if decay_rate is not None and not decay_rate >= 0:
            raise ValueError(f"decay_rate: expected >= 0, got {decay_rate}")
        self.n, self.m, self.total_steps, self.method = n, m, total_steps, method
        self.dense_steps = round(dense_frac * total_steps)
        self.finetune_steps = round(finetune_frac * total_steps)
        self.decay_span = total_steps - self.finetune_steps - self.dense_steps
        if decay_rate is None:
            span = max(self.decay_span, 1)
            decay_rate = 1.0 / span if method == "mdgf_linear" else math.log(1000.0) / span
        self.decay_rate = decay_rate
        if method == "sdgf_stepwise":
            self.patterns = sdgf_stepwise_patterns(n, m)
        elif method == "sdgf_geometric":
            self.patterns = sdgf_geometric_patterns(n, m, geometric_k)
        else:
            self.patterns = [(n, m)]
        self.step_count = 0

    def state(self, step: int | None = None) -> NMState:
        """The state at ``step`` (default: the current step)."""
        t = self.step_count if step is None else step
        if t < self.dense_steps:
            return NMState("dense", self.m, self.m, 1.0)
        if t >= self.total_steps - self.finetune_steps:
            return NMState("finetune", self.n, self.m, 0.0)
        j = t - self.dense_steps
        if self.method == "mdgf_linear":
            return NMState("decay", self.n, self.m, max(1.0 - self.decay_rate * j, 0.0))
        if self.method == "mdgf_exp":
            return NMState("decay", self.n, self.m, math.exp(-self.decay_rate * j))
        count = len(self.patterns)
        index = count - 1 if self.decay_span <= 0 else min(j * count // self.decay_span, count - 1)
        n, m = self.patterns[index]
        return NMState("decay", n, m, 0.0)

    def group_sizes(self) -> set[int]:
        """Every m the schedule uses; a layer's grouped dim must be divisible by each."""
        return {m for _, m in self.patterns} | {self.m}

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])


# ------------------------------------------------------------ integration


class _DecayedNM(nn.Module):
    """Parametrization: weight -> W * (mask + D * (1 - mask)) at the schedule's state."""

    def __init__(self, owner: NMSparsifier, dim: int) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so the sparsifier is not registered as a submodule
        self.dim = dim

    def forward(self, w: Tensor) -> Tensor:
        owner = self._owner[0]
        state = owner.current
        if state.phase == "dense":
            return w
        return _nm_decay(w, state.n, state.m, self.dim, owner.decay_tensor, owner.grad_mode, owner.srste_weight)


@dataclass(frozen=True)
class NMLayerCheck:
    name: str
    shape: tuple[int, ...]
    dim: int
    max_nonzeros: int  # the most non-zeros found in one group of m
    valid: bool  # every group has at most n non-zeros


def _nm_targets(model: nn.Module, attention: bool):
    """(name, module, parameter name, dim) for every layer N:M applies to: groups run
    along the input dimension (conv: input channels)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            yield name, module, "weight", 1
        elif attention and isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            yield name, module, "in_proj_weight", 1


class NMSparsifier:
    """Trains a model's layers with decayed N:M weights, without rewriting the model.

    Registers a parametrization on the weight of every ``nn.Linear``, ``nn.Conv1d/2d/3d``
    and (with ``attention=True``) the q/k/v input projection of every
    ``nn.MultiheadAttention`` (their output projections are ``nn.Linear``). Groups run
    along the input dimension. The dense master weights stay in the model and keep
    receiving gradients; the forward pass sees the decayed N:M weight of the current
    schedule state.

    Args:
        model: the network, modified in place (parametrizations added).
        schedule: an :class:`NMSchedule`.
        grad_mode: ``"ste"`` or ``"scaled"`` (see :func:`nm_decay`).
        srste_weight: the SR-STE ``lambda_W``; defaults to 2e-4 for
            ``schedule.method == "srste"``, else 0.
        attention: also sparsify ``nn.MultiheadAttention`` input projections.
        skip: names of modules to leave dense.

    Layers whose grouped dimension is not divisible by every group size of the
    schedule are left dense and listed in :attr:`skipped` (with a warning).

    Usage::

        sparsifier = NMSparsifier(model, NMSchedule(1, 8, total_steps, "mdgf_exp"))
        sparsifier.attach(optimizer)   # advances the schedule after every step
        ...train...
        sparsifier.export()            # plain modules with hard 1:8 weights
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NMSchedule,
        grad_mode: str = "ste",
        srste_weight: float | None = None,
        attention: bool = True,
        skip: tuple[str, ...] | list[str] = (),
    ) -> None:
        if grad_mode not in ("ste", "scaled"):
            raise ValueError(f"grad_mode: expected 'ste' or 'scaled', got {grad_mode!r}")
        self.model = model
        self.schedule = schedule
        self.grad_mode = grad_mode
        self.srste_weight = (2e-4 if schedule.method == "srste" else 0.0) if srste_weight is None else srste_weight
        self.decay_tensor = torch.tensor(1.0, dtype=torch.float64)
        self.current = schedule.state()
        self.layers: list[tuple[str, nn.Module, str, int]] = []
        self.skipped: list[tuple[str, str]] = []
        sizes = schedule.group_sizes()
        for name, module, pname, dim in list(_nm_targets(model, attention)):
            if name in skip:
                continue
            weight = getattr(module, pname)
            bad = [m for m in sorted(sizes) if weight.shape[dim] % m]
            if bad:
                reason = f"input dim {weight.shape[dim]} is not a multiple of m = {bad[0]}"
                self.skipped.append((name, reason))
                warnings.warn(f"NMSparsifier: leaving {name or 'model'} dense: {reason}", stacklevel=2)
                continue
            parametrize.register_parametrization(module, pname, _DecayedNM(self, dim))
            self.layers.append((name, module, pname, dim))
        self._sync()

    def _sync(self) -> None:
        self.current = self.schedule.state()
        self.decay_tensor.fill_(self.current.decay)

    def step(self) -> None:
        """Advance the schedule by one optimizer step."""
        self.schedule.step()
        self._sync()

    def attach(self, optimizer: torch.optim.Optimizer):
        """Advance the schedule after every ``optimizer.step()``; returns the hook handle."""
        return optimizer.register_step_post_hook(lambda *args, **kwargs: self.step())

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
        self._sync()

    @torch.no_grad()
    def export(self) -> nn.Module:
        """Bake hard target N:M weights (``W * nm_mask(W, n, m)``) into plain modules.

        Removes the parametrizations; the model then holds ordinary parameters whose
        every group of m has at most n non-zeros (the N:M pattern that 2:4 kernels
        such as ``torch.sparse.to_sparse_semi_structured`` consume).
        """
        n, m = self.schedule.n, self.schedule.m
        for _, module, pname, dim in self.layers:
            dense = module.parametrizations[pname].original
            hard = dense * nm_mask(dense, n, m, dim)
            parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
            getattr(module, pname).copy_(hard)
        self.layers = []
        return self.model


def check_nm(model: nn.Module, n: int, m: int, attention: bool = True) -> list[NMLayerCheck]:
    """Whether every group of ``m`` consecutive input-dim weights has at most ``n``
    non-zeros, per layer (layers whose input dim is not a multiple of m are skipped)."""
    rows = []
    for name, module, pname, dim in _nm_targets(model, attention):
        w = getattr(module, pname).detach()
        if w.shape[dim] % m:
            continue
        counts = (w != 0).movedim(dim, -1).reshape(-1, m).sum(1)
        worst = int(counts.max()) if counts.numel() else 0
        rows.append(NMLayerCheck(f"{name}.{pname}" if name else pname, tuple(w.shape), dim, worst, worst <= n))
    return rows
