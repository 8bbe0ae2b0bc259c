"""Independent float64 reference for WGSEF, written for clarity, not speed.

Group membership is built from numpy index arrays, the value uses the sorted
closed form of the k-support norm, and the prox enumerates every breakpoint of
the piecewise-linear root equation. None of it shares code with wgsef.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = np.finfo(np.float64).eps


def group_ids(shape: tuple[int, ...], groups) -> tuple[np.ndarray, int]:
    """Flat group id of every element (row-major) and the number of groups."""
    n = int(np.prod(shape)) if len(shape) else 1
    if isinstance(groups, torch.Tensor):
        ids = groups.reshape(-1).cpu().numpy().astype(np.int64)
        return ids, (int(ids.max()) + 1 if ids.size else 0)
    if groups == "layer":
        return np.zeros(n, dtype=np.int64), 1
    if groups == "elements":
        return np.arange(n, dtype=np.int64), n
    idx = np.indices(shape).reshape(len(shape), -1)
    if groups == "filters":
        return idx[0], shape[0]
    if groups == "channels":
        return idx[1], shape[1]
    if groups == "shapes":
        rest = shape[1:]
        return np.ravel_multi_index(tuple(idx[1:]), rest), int(np.prod(rest))
    if isinstance(groups, tuple) and groups[0] == "dim":
        d = groups[1] % len(shape)
        return idx[d], shape[d]
    if isinstance(groups, tuple) and groups[0] == "heads":
        h = groups[1]
        return idx[0] // (shape[0] // h), h
    raise ValueError(groups)


def sq_norms(x: np.ndarray, ids: np.ndarray, m: int) -> np.ndarray:
    return np.bincount(ids, weights=x.reshape(-1) ** 2, minlength=m).astype(np.float64)


def value_from_sq(sq: np.ndarray, d: np.ndarray, k: int) -> float:
    """WGSEF from squared group norms: 1/2 (k-support norm of z)^2, z = sqrt(d)*norm."""
    if np.isnan(sq).any():
        return float("nan")
    if np.isinf(sq).any():
        return float("inf")
    z = np.sqrt(d * sq)
    if not (z > 0).any():
        return 0.0
    if k == 0:
        return float("inf")
    if (z > 0).sum() <= k:
        return 0.5 * float(np.sum(z**2))
    zs = np.sort(z)[::-1]
    for N in range(k):  # zs[N-1] is the N-th largest (1-based); zs[-1] stands for +inf at N = 0
        tail = zs[N:].sum()
        level = tail / (k - N)
        upper = np.inf if N == 0 else zs[N - 1]
        if upper > level >= zs[N]:
            return 0.5 * (float(np.sum(zs[:N] ** 2)) + tail**2 / (k - N))
    raise AssertionError("no split found")


def value(x: torch.Tensor, k: int, groups="filters", weights=None) -> float:
    xn = x.detach().double().cpu().numpy()
    ids, m = group_ids(tuple(x.shape), groups)
    d = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    return value_from_sq(sq_norms(xn, ids, m), d, k)


def conjugate_from_sq(sq: np.ndarray, d: np.ndarray, k: int) -> float:
    """WGSEF*(y) = 1/2 * sum of the k largest ||y_i||^2 / d_i."""
    r = np.sort(sq / d)[::-1]
    return 0.5 * float(r[:k].sum())


def prox_shares(c: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """u_i = clip(c_i*eta - w_i, 0, 1) with sum u = k, for c > 0, by breakpoint enumeration."""

    def h(eta):
        return np.clip(c * eta - w, 0.0, 1.0).sum() - k

    points = np.sort(np.concatenate([w / c, (w + 1.0) / c]))
    hv = np.array([h(p) for p in points])
    j = int(np.argmax(hv >= 0))
    if hv[j] == 0:
        eta = points[j]
    else:
        a, b = points[j - 1], points[j]
        eta = a + (0.0 - hv[j - 1]) * (b - a) / (hv[j] - hv[j - 1])
    t = c * eta - w
    t[np.abs(t) <= 8 * EPS * np.maximum(c * eta, w)] = 0.0
    return np.clip(t, 0.0, 1.0)


def prox_factors(sq: np.ndarray, d: np.ndarray, k: int, lam: float) -> np.ndarray:
    m = sq.size
    if not np.isfinite(sq).all():
        return np.full(m, np.nan)
    if lam == 0:
        return np.ones(m)
    if k == 0:
        return np.zeros(m)
    nz = sq > 0
    if nz.sum() <= k:
        return 1.0 / (1.0 + lam * d)
    c = np.sqrt(d[nz] * sq[nz])
    w = lam * d[nz]
    u = prox_shares(c, w, k)
    f = np.zeros(m)
    f[nz] = u / (u + w)
    return f


def prox(x: torch.Tensor, k: int, lam: float, groups="filters", weights=None) -> np.ndarray:
    """The prox in float64, as a numpy array of x's shape."""
    xn = x.detach().double().cpu().numpy()
    ids, m = group_ids(tuple(x.shape), groups)
    d = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    f = prox_factors(sq_norms(xn, ids, m), d, k, lam)
    return (xn.reshape(-1) * f[ids]).reshape(x.shape)


def nonzero_groups(arr: np.ndarray, ids: np.ndarray, m: int) -> int:
    return int((np.bincount(ids, weights=np.abs(arr.reshape(-1)), minlength=m) > 0).sum())


def lambda_crit(a: np.ndarray, d: np.ndarray, k: int) -> float:
    """Smallest lam with a k-group-sparse prox (docs/design.md §2.5); a_i = ||v_i|| / sqrt(d_i)."""
    nz = a > 0
    if k == 0 or nz.sum() <= k:
        return 0.0
    order = np.argsort(-a, kind="stable")
    top, nxt = order[:k], order[k]
    if a[top[-1]] == a[nxt]:
        return float("inf")
    return float(np.max(a[nxt] / (d[top] * (a[top] - a[nxt]))))


def coupled_prox(tensors, specs, coupling, term_sizes, weights, k, lam) -> list[np.ndarray]:
    """The prox over coupled groups in float64: group g of tensor i belongs to
    coupled group coupling[i][g]; a coupled group's squared norm is the sum of its
    members'; the coupled groups form terms of term_sizes consecutive groups."""
    total = int(sum(term_sizes))
    sq = np.zeros(total)
    members = []
    for x, spec, c in zip(tensors, specs, coupling):
        xn = x.detach().double().cpu().numpy()
        ids, m = group_ids(tuple(x.shape), spec)
        c = np.asarray(c, dtype=np.int64)
        np.add.at(sq, c, sq_norms(xn, ids, m))
        members.append((xn, ids, c))
    d = np.ones(total) if weights is None else np.asarray(weights, dtype=np.float64)
    f = np.zeros(total)
    begin = 0
    for size, kk, lt in zip(term_sizes, k, lam):
        f[begin : begin + size] = prox_factors(sq[begin : begin + size], d[begin : begin + size], kk, lt)
        begin += size
    return [(xn.reshape(-1) * f[c[ids]]).reshape(xn.shape) for xn, ids, c in members]


def sgd_step(p, g, buf, lr, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False):
    """torch.optim.SGD's update as its documentation states it, in float64 numpy:
    returns the new (p, buf); buf is None without momentum."""
    p, g = np.asarray(p, dtype=np.float64), np.asarray(g, dtype=np.float64)
    d = -g if maximize else g
    if weight_decay:
        d = d + weight_decay * p
    if momentum:
        buf = momentum * np.asarray(buf, dtype=np.float64) + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def strided_sq_norms(x, outer: int, groups: int, inner: int) -> np.ndarray:
    """Squared norms of the groups x[:, g, :] of x viewed as (outer, groups, inner)."""
    v = np.asarray(x, dtype=np.float64).reshape(outer, groups, inner)
    return (v**2).sum(axis=(0, 2))
