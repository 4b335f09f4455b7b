"""Dynamic programming over subsets of tasks: the machinery behind the exact solver ``dp``.

Every pair ``(mask, sub)`` with ``sub`` a non-empty subset of ``mask`` corresponds to one ternary word (each task:
outside ``mask``, in ``mask`` but not ``sub``, in ``sub``), so all ``3^n`` pairs are generated at once with numpy
and a DP layer is a gather, an add and one ``np.maximum.at``. Above ``BASE`` tasks the pairs are produced in
chunks (the low ``BASE`` tasks' pairs times the ternary words of the high tasks) to bound memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

from bench.solvers.base import bit_table

BASE = 13


@lru_cache(maxsize=4)
def _ternary_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(mask, sub)`` with ``sub ⊆ mask`` (``sub`` may be empty), as int64 arrays of length ``3^n``."""
    words = np.arange(3**n, dtype=np.int64)
    mask = np.zeros_like(words)
    sub = np.zeros_like(words)
    for i in range(n):
        digit = words % 3
        words //= 3
        mask |= (digit >= 1).astype(np.int64) << i
        sub |= (digit == 2).astype(np.int64) << i
    return mask, sub


def submask_pairs(n: int, anchored: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of ``(mask, sub)`` with ``sub`` a non-empty subset of ``mask``.

    ``anchored``: only pairs where ``sub`` holds the lowest task of ``mask`` (each unordered split of a set into
    blocks is then produced once).
    """
    low = min(n, BASE)
    base_mask, base_sub = _ternary_pairs(low)
    high_mask, high_sub = _ternary_pairs(n - low)
    for hm, hs in zip(high_mask.tolist(), high_sub.tolist()):
        mask = base_mask | (hm << low)
        sub = base_sub | (hs << low)
        keep = sub != 0
        if anchored:
            lowest = mask & -mask
            keep &= (sub & lowest) != 0
        yield mask[keep], sub[keep]


@lru_cache(maxsize=8)
def _sorted_pairs(n: int, anchored: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``n <= BASE``: the pairs sorted by ``mask`` and the start of each mask's run (masks 1 .. 2^n - 1)."""
    mask, sub = next(submask_pairs(n, anchored))
    order = np.argsort(mask, kind="stable")
    mask, sub = mask[order], sub[order]
    starts = np.searchsorted(mask, np.arange(1, 1 << n))
    return mask, sub, starts


def layer(f: np.ndarray, g_prev: np.ndarray, n: int, anchored: bool) -> np.ndarray:
    """``g[M] = max over non-empty A ⊆ M of f[A] + g_prev[M \\ A]`` (anchored: ``A`` holds the lowest task of M)."""
    g = np.full(1 << n, -np.inf)
    if n <= BASE:  # one cached table, a segmented max (every non-empty M has at least the pair (M, M))
        mask, sub, starts = _sorted_pairs(n, anchored)
        g[1:] = np.maximum.reduceat(f[sub] + g_prev[mask ^ sub], starts)
        return g
    with np.errstate(invalid="ignore"):
        for mask, sub in submask_pairs(n, anchored):
            vals = f[sub] + g_prev[mask ^ sub]
            np.maximum.at(g, mask, vals)
    g[np.isnan(g)] = -np.inf
    return g


def backtrack(layers: Sequence[np.ndarray], fs: Sequence[np.ndarray], full: int, anchored: bool,
              tol: float = 1e-9) -> list[int]:
    """The blocks of an optimum: ``layers[j]`` was built from ``layers[j-1]`` with block values ``fs[j]``.

    ``layers[0]`` is the base (``0`` at the empty set for labelled DPs, or the one-block values). Returns the
    blocks from the last layer down (block of layer ``j`` first).
    """
    blocks, mask = [], full
    for j in range(len(layers) - 1, 0, -1):
        target = layers[j][mask]
        lowest = mask & -mask
        found = None
        sub = mask
        while sub:
            if (not anchored or sub & lowest) and fs[j][sub] + layers[j - 1][mask ^ sub] >= target - tol * (
                    1 + abs(target)):
                found = sub
                break
            sub = (sub - 1) & mask
        assert found is not None, "backtracking failed: the DP layers are inconsistent"
        blocks.append(found)
        mask ^= found
    if mask:
        blocks.append(mask)  # the base layer's block (unlabelled DPs start from the one-block values)
    return blocks


@lru_cache(maxsize=8)
def _by_subset(n: int):
    """For ``n <= BASE``: all pairs ``(G, A)``, ``∅ ≠ A ⊆ G``, in an order where ``A`` minus its lowest task comes
    first (``prev``), grouped by ``|A|``; and the permutation that sorts them by ``A`` with each run's start."""
    mask, sub = _ternary_pairs(n)
    words = np.arange(3**n, dtype=np.int64)
    low = np.full(3**n, -1, dtype=np.int64)
    digits = words.copy()
    for i in range(n):  # the lowest task in A (digit 2)
        d = digits % 3
        digits //= 3
        low[(low < 0) & (d == 2)] = i
    size = np.zeros(3**n, dtype=np.int64)
    for i in range(n):
        size += sub >> i & 1
    prev = words - np.where(low >= 0, 3 ** np.maximum(low, 0), 0)
    by_size = [np.flatnonzero(size == r) for r in range(1, n + 1)]
    nonempty = np.flatnonzero(sub > 0)
    order = nonempty[np.argsort(sub[nonempty], kind="stable")]
    starts = np.searchsorted(sub[order], np.arange(1, 1 << n))
    return mask, low, prev, by_size, order, starts


def block_maxima(U: np.ndarray, present: np.ndarray, n: int) -> np.ndarray:
    """``f[A] = max over present G ⊇ A of sum_{t in A} U[G, t]`` for every non-empty ``A`` (``-inf`` if none)."""
    f = np.full(1 << n, -np.inf)
    if n <= BASE:  # pair values by adding one task at a time, then a segmented max by A
        mask, low, prev, by_size, order, starts = _by_subset(n)
        vals = np.zeros(3**n)
        for idx in by_size:
            vals[idx] = vals[prev[idx]] + U[mask[idx], low[idx]]
        vals[~present[mask]] = -np.inf
        f[1:] = np.maximum.reduceat(vals[order], starts)
        return f
    bits = bit_table(n)
    for mask, s in submask_pairs(n, anchored=False):
        keep = present[mask]
        mask, s = mask[keep], s[keep]
        vals = np.zeros(len(mask))
        for t in range(n):
            vals += U[mask, t] * bits[s, t]
        np.maximum.at(f, s, vals)
    return f


def superset_top(values: np.ndarray, n: int, m: int) -> np.ndarray:
    """``top[A]``: the (up to) ``m`` masks ``B ⊇ A`` with the largest ``values[B]`` (``-1`` pads).

    Ties are broken by the smaller mask, so the order is strict: the exactness argument of the MIQP column
    reduction (see :mod:`bench.solvers.dp`) needs a strict order.
    """
    size = 1 << n
    masks = np.arange(size)
    idx = np.full((size, m), -1, dtype=np.int64)
    val = np.full((size, m), -np.inf)
    ok = np.isfinite(values)
    idx[ok, 0] = masks[ok]
    val[ok, 0] = values[ok]
    for i in range(n):
        lacking = masks[(masks >> i & 1) == 0]
        cat_idx = np.concatenate([idx[lacking], idx[lacking | (1 << i)]], axis=1)
        cat_val = np.concatenate([val[lacking], val[lacking | (1 << i)]], axis=1)
        tie = np.where(cat_idx < 0, size, cat_idx)
        order = np.lexsort((tie, -cat_val), axis=-1)[:, :m]
        idx[lacking] = np.take_along_axis(cat_idx, order, axis=1)
        val[lacking] = np.take_along_axis(cat_val, order, axis=1)
    idx[~np.isfinite(val)] = -1
    return idx


def subset_sums(weights: np.ndarray) -> np.ndarray:
    """``out[mask] = sum of weights[i] for i in mask`` for every mask."""
    n = len(weights)
    out = np.zeros(1 << n)
    for i in range(n):
        out[1 << i: 1 << (i + 1)] = out[: 1 << i] + weights[i]
    return out
