"""Pure-PyTorch versions of the wgsef ops, written the way a competent user would:
vectorised, no Python loop over groups. The suite checks each against the native
op before timing it."""

from __future__ import annotations

import torch


def group_view(x: torch.Tensor, groups: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A view in which the groups are dim 1 of (outer, groups, inner), and the dims to reduce."""
    if groups == "filters":
        return x.reshape(1, x.shape[0], -1), (0, 2)
    if groups == "channels":
        return x.reshape(x.shape[0], x.shape[1], -1), (0, 2)
    raise ValueError(groups)


def group_norms(x: torch.Tensor, groups: str = "filters") -> torch.Tensor:
    view, dims = group_view(x, groups)
    return torch.linalg.vector_norm(view, dim=dims)


def value(x: torch.Tensor, k: int, groups: str = "filters") -> torch.Tensor:
    """1/2 (k-support norm of the group norms)^2 by the sorted closed form."""
    z = torch.sort(group_norms(x, groups).double(), descending=True).values
    if int((z > 0).sum()) <= k:
        return 0.5 * (z**2).sum()
    tails = torch.flip(torch.cumsum(torch.flip(z, [0]), 0), [0])  # tails[N] = sum_{i >= N} z_i
    n = torch.arange(k, dtype=z.dtype, device=z.device)
    level = tails[:k] / (k - n)
    upper = torch.cat([torch.full((1,), float("inf"), dtype=z.dtype, device=z.device), z[: k - 1]])
    split = int(torch.nonzero((upper > level) & (level >= z[:k]))[0])
    return 0.5 * ((z[:split] ** 2).sum() + tails[split] ** 2 / (k - split))


def prox_factors(x: torch.Tensor, k: int, lam: float, groups: str = "filters") -> torch.Tensor:
    """Per-group factors by sorting the breakpoints and a prefix-sum search (d = 1)."""
    c = group_norms(x, groups).double()
    nz = c > 0
    if int(nz.sum()) <= k:
        return torch.full_like(c, 1.0 / (1.0 + lam))
    cz = c[nz]
    ones = torch.ones_like(cz)
    points = torch.cat([lam / cz, (lam + 1) / cz])
    order = torch.argsort(points)
    points = points[order]
    slope = torch.cumsum(torch.cat([cz, -cz])[order], 0)
    offset = torch.cumsum(torch.cat([-lam * ones, (lam + 1) * ones])[order], 0)
    h = slope * points + offset - k  # h just right of each breakpoint (h is continuous)
    j = int(torch.searchsorted(h, torch.zeros(1, dtype=h.dtype, device=h.device)))
    eta = points[j] if h[j] == 0 else (k - offset[j - 1]) / slope[j - 1]
    t = cz * eta - lam
    t = torch.where(t.abs() <= 8 * torch.finfo(t.dtype).eps * torch.maximum(cz * eta, lam * ones), 0, t)
    u = t.clamp(0, 1)
    factors = torch.zeros_like(c)
    factors[nz] = u / (u + lam)
    return factors


def prox(x: torch.Tensor, k: int, lam: float, groups: str = "filters") -> torch.Tensor:
    view, _ = group_view(x, groups)
    f = prox_factors(x, k, lam, groups).to(x.dtype)
    return (view * f.view(1, -1, 1)).view_as(x)


def prox_(x: torch.Tensor, k: int, lam: float, groups: str = "filters") -> torch.Tensor:
    view, _ = group_view(x, groups)
    view.mul_(prox_factors(x, k, lam, groups).to(x.dtype).view(1, -1, 1))
    return x


def nm_mask_topk(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    groups = w.abs().reshape(-1, m)
    index = groups.topk(n, dim=1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, index, True).view_as(w)


_PATTERNS_2_4 = torch.tensor(
    [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.float32
)


def nm_mask_2_4_patterns(w: torch.Tensor) -> torch.Tensor:
    """apex ASP's m4n2_1d: score the 6 patterns of each group of 4, keep the best."""
    patterns = _PATTERNS_2_4.to(w.device)
    groups = w.abs().reshape(-1, 4).float()
    best = torch.argmax(groups @ patterns.t(), dim=1)
    return patterns[best].bool().view_as(w)


def nm_decay(w: torch.Tensor, n: int, m: int, decay: torch.Tensor) -> torch.Tensor:
    """W * (mask + D (1 - mask)) with the mask held constant (autograd: scaled gradient)."""
    mask = nm_mask_topk(w.detach(), n, m)
    return w * torch.where(mask, torch.ones_like(w), decay.to(w.dtype))
