"""Exact grouping by dynamic programming over subsets of tasks (all three problems), with a proof of optimality.

**Network selection.** Serving each task by its best chosen candidate is the same as assigning each task to one
chosen candidate containing it, so an optimal selection is a split of the tasks into blocks ``A`` (the tasks a
candidate serves) with block value ``f(A) = max over candidates G ⊇ A of sum_{t in A} u(G, t)``. The best split
into at most ``k`` blocks is found by ``E_j(M) = max_{A ⊆ M, A ∋ min M} f(A) + E_{j-1}(M \\ A)``, ``O(k 3^n)``.
With candidate costs and a budget (HOA: half-size networks cost 0.5) the layers are indexed by how many blocks of
each distinct cost are used, so the budget is checked exactly. A candidate that ends up serving two blocks is
counted twice against ``k`` and the budget; merging those blocks is never worse, so the optimum is unaffected.

**Partition.** The same recursion with ``f`` = the group score (``-inf`` outside the size bounds) and exactly
``k`` blocks.

**MIQP, partition variant.** Labelled blocks: ``E_j(M) = max_{∅ ≠ A ⊆ M} h_j(A) + E_{j-1}(M \\ A)`` with
``h_j(A) = 1'S_A 1 / |A|`` where ``A`` fits group ``j``'s budget and size bounds, else ``-inf``.

**MIQP (Formulation 8, groups may overlap).** The objective adds ``h`` over ``m`` distinct labelled groups, so it
is a set-choice problem, solved exactly as a small integer program over reduced columns. Order groups strictly by
``(h, mask)`` and take an optimal solution; call ``P_j`` the *private* tasks of its group ``G_j`` (covered by no
other chosen group). If ``P_j`` is non-empty, replace ``G_j`` by the best group feasible for ``j`` that contains
``P_j``: coverage is kept, and no other chosen group can equal it (they miss the tasks of ``P_j``). If ``P_j`` is
empty, ``G_j`` can be replaced by any unused feasible group; if it is not among the ``m`` best groups feasible
for ``j``, one of those is unused and no worse. Each replacement moves one group strictly up the order, so they
terminate, in an optimal solution whose every group ``j`` lies in
``Top_m(F_j) ∪ {argmax_{G ∈ F_j, G ⊇ P} h(G) : P ≠ ∅}``. These columns (the second set for all ``P`` at once by a
superset-argmax transform) go into the assignment model ``max sum h(G) z_Gc`` s.t. each class ``c`` of
interchangeable labels (same feasible groups) gets its number of groups, each group is used at most once and
every task is covered, solved by HiGHS (``scipy.optimize.milp``) with zero gap.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from bench.errors import BenchError
from bench.solvers import _subsets as sub
from bench.solvers.base import (
    Infeasible,
    MIQPProblem,
    PartitionProblem,
    Raw,
    SelectProblem,
    Solver,
    bit_table,
    group_of,
    pair_sums,
    popcount,
)

MAX_TASKS = 16
MAX_COUNT_STATES = 4000


def _guard(n: int) -> None:
    if n > MAX_TASKS:
        raise BenchError(f"solver 'dp' enumerates subsets and is limited to {MAX_TASKS} tasks, got {n}; "
                         "for more tasks use select_highs (exact network selection over the listed candidates) "
                         "or a heuristic solver (beam, local_search, sdp, ...)")


# --------------------------------------------------------------------------------------------------------------
# network selection


def _block_values(problem: SelectProblem, members: np.ndarray) -> np.ndarray:
    """``f[A]`` over candidates ``members`` (indices): best ``sum_{t in A} u(G, t)`` over those ``G ⊇ A``."""
    n = problem.n
    index = {t: i for i, t in enumerate(problem.tasks)}
    f = np.full(1 << n, -np.inf)
    cands = [problem.candidates[i] for i in members]
    work = sum(1 << len(c.group) for c in cands)
    if work < 3**n // 4:  # few candidates: enumerate each one's subsets
        for cand in cands:
            idx = [index[t] for t in cand.group]
            masks = sub.subset_sums(np.array([1 << i for i in idx], dtype=np.float64)).astype(np.int64)
            vals = sub.subset_sums(np.array([cand.utility[t] for t in cand.group]))
            np.maximum.at(f, masks[1:], vals[1:])
        return f
    U = np.zeros((1 << n, n))
    present = np.zeros(1 << n, dtype=bool)
    for cand in cands:
        m = sum(1 << index[t] for t in cand.group)
        present[m] = True
        U[m, [index[t] for t in cand.group]] = [cand.utility[t] for t in cand.group]
    return sub.block_maxima(U, present, n)


def _cost_classes(problem: SelectProblem) -> tuple[list[float], list[np.ndarray]]:
    costs = np.array([c.cost for c in problem.candidates])
    if problem.budget is None:
        return [0.0], [np.arange(len(costs))]
    levels = sorted({round(c, 9) for c in costs})
    return levels, [np.flatnonzero(np.isclose(costs, lv, atol=1e-9)) for lv in levels]


def solve_select(problem: SelectProblem) -> tuple[list[int], float, dict]:
    """Exact network selection; returns candidate indices, the value and info."""
    n, full = problem.n, (1 << problem.n) - 1
    _guard(n)
    levels, members = _cost_classes(problem)
    fs = [_block_values(problem, m) for m in members]
    K = problem.max_groups
    budget = math.inf if problem.budget is None else problem.budget + 1e-9
    counts = [c for c in itertools.product(range(K + 1), repeat=len(levels))
              if 0 < sum(c) <= K and sum(x * w for x, w in zip(c, levels)) <= budget]
    if len(counts) > MAX_COUNT_STATES:
        raise BenchError(f"solver 'dp': {len(levels)} distinct candidate costs under this budget give "
                         f"{len(counts)} count states (limit {MAX_COUNT_STATES}); use branch_and_bound")
    counts.sort(key=sum)
    zero = tuple([0] * len(levels))
    base = np.full(1 << n, -np.inf)
    base[0] = 0.0
    E = {zero: base}
    for c in counts:
        best = np.full(1 << n, -np.inf)
        for ci in range(len(levels)):
            if c[ci] == 0:
                continue
            prev = c[:ci] + (c[ci] - 1,) + c[ci + 1:]
            if prev in E and np.isfinite(E[prev]).any():
                best = np.maximum(best, sub.layer(fs[ci], E[prev], n, anchored=True))
        E[c] = best
    final = max(counts, key=lambda c: (E[c][full], -sum(c)), default=None)
    if final is None or not math.isfinite(E[final][full]):
        raise problem.infeasible()
    value = float(E[final][full])
    # backtrack: which class and block at each step
    chosen, mask, c = [], full, final
    while mask:
        target, found = E[c][mask], None
        lowest = mask & -mask
        for ci in range(len(levels)):
            if c[ci] == 0:
                continue
            prev = c[:ci] + (c[ci] - 1,) + c[ci + 1:]
            s = mask
            while s:
                if s & lowest and fs[ci][s] + E[prev][mask ^ s] >= target - 1e-9 * (1 + abs(target)):
                    found = (ci, s, prev)
                    break
                s = (s - 1) & mask
            if found:
                break
        assert found is not None, "backtracking failed"
        ci, s, c = found
        chosen.append(_serving_candidate(problem, members[ci], s))
        mask ^= s
    return sorted(set(chosen)), value, {"layers": len(E) - 1}


def _serving_candidate(problem: SelectProblem, members: np.ndarray, block: int) -> int:
    best, best_v = -1, -math.inf
    served = group_of(block, problem.tasks)
    for i in members:
        cand = problem.candidates[i]
        if set(served) <= set(cand.group):
            v = sum(cand.utility[t] for t in served)
            if v > best_v:
                best, best_v = int(i), v
    return best


# --------------------------------------------------------------------------------------------------------------
# partitions


def _size_filter(f: np.ndarray, n: int, lo: np.ndarray | int, hi: np.ndarray | int) -> np.ndarray:
    size = popcount(n)
    return np.where((size >= lo) & (size <= hi), f, -np.inf)


def solve_partition(problem: PartitionProblem) -> tuple[list[int], float]:
    n, full = problem.n, (1 << problem.n) - 1
    _guard(n)
    f = _size_filter(problem.score.values(), n, problem.min_size, problem.max_size)
    f[0] = -np.inf
    base = np.full(1 << n, -np.inf)
    base[0] = 0.0
    layers = [base]
    for _ in range(problem.k):
        layers.append(sub.layer(f, layers[-1], n, anchored=True))
    if not math.isfinite(layers[-1][full]):
        raise Infeasible(f"no partition into {problem.k} groups has only allowed groups within the size bounds")
    blocks = sub.backtrack(layers, [f] * len(layers), full, anchored=True)
    return blocks, float(layers[-1][full])


# --------------------------------------------------------------------------------------------------------------
# MIQP


def miqp_values(problem: MIQPProblem) -> tuple[np.ndarray, list[np.ndarray]]:
    """``h[mask] = 1'S_A 1/|A|`` for every mask, and per label ``j`` the same with ``-inf`` where ``A`` does not fit."""
    n = problem.n
    size = popcount(n)
    h = np.full(1 << n, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        h[1:] = (pair_sums(problem.S)[1:] + sub.subset_sums(np.diag(problem.S))[1:]) / size[1:]
    per_label = []
    for j in range(problem.m):
        hj = _size_filter(h, n, problem.m1[j], problem.m2[j])
        if problem.B is not None:
            hj = np.where(sub.subset_sums(problem.B[:, j]) <= problem.b[j] + 1e-9, hj, -np.inf)
        hj[0] = -np.inf
        per_label.append(hj)
    return h, per_label


def solve_miqp_partition(problem: MIQPProblem) -> list[int]:
    n, full = problem.n, (1 << problem.n) - 1
    _, hs = miqp_values(problem)
    base = np.full(1 << n, -np.inf)
    base[0] = 0.0
    layers = [base]
    for j in range(problem.m):
        layers.append(sub.layer(hs[j], layers[-1], n, anchored=False))
    if not math.isfinite(layers[-1][full]):
        raise Infeasible(f"no partition of the tasks into {problem.m} labelled groups meets the budgets and sizes")
    blocks = sub.backtrack(layers, [None] + hs, full, anchored=False)
    return blocks[::-1]


def solve_miqp_cover(problem: MIQPProblem) -> tuple[list[int], dict]:
    n, m = problem.n, problem.m
    _, hs = miqp_values(problem)
    # Labels with the same feasible groups are interchangeable: one column per (group, class of labels).
    classes: dict[bytes, list[int]] = {}
    for j in range(m):
        classes.setdefault(hs[j].tobytes(), []).append(j)
    labels = list(classes.values())
    cols: list[tuple[int, int]] = []
    for c, js in enumerate(labels):
        best = sub.superset_top(hs[js[0]], n, 1)[1:, 0]  # best feasible superset of every non-empty P
        top = sub.superset_top(hs[js[0]], n, m)[0]  # the m best feasible groups
        keep = np.concatenate([best, top])
        cols.extend((int(g), c) for g in np.unique(keep[keep >= 0]))
    if not cols:
        raise Infeasible("no group fits any label's budget and size bounds")
    g_arr = np.array([g for g, _ in cols])
    c_arr = np.array([c for _, c in cols])
    groups, g_pos = np.unique(g_arr, return_inverse=True)
    N = len(cols)
    cost = -np.array([hs[labels[c][0]][g] for g, c in cols])
    one_hot = lambda pos, size: (np.arange(size)[:, None] == pos[None, :]).astype(np.float64)  # noqa: E731
    constraints = [
        LinearConstraint(one_hot(c_arr, len(labels)), [len(js) for js in labels], [len(js) for js in labels]),
        LinearConstraint(one_hot(g_pos, len(groups)), 0, 1),
        LinearConstraint(bit_table(n)[g_arr].T, 1, np.inf),
    ]
    # presolve off, as in miqp_highs: HiGHS's presolve has returned a wrong "optimal" answer on a tiny MIQP model
    res = milp(cost, constraints=constraints, integrality=np.ones(N), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0, "disp": False, "presolve": False})
    if res.status == 2:
        raise Infeasible(f"no {m} distinct labelled groups cover every task within the budgets and sizes")
    if res.status != 0 or res.x is None:
        raise BenchError(f"solver 'dp': HiGHS did not prove optimality of the reduced MIQP ({res.message})")
    chosen: list[int | None] = [None] * m
    free = [list(js) for js in labels]
    for k in np.flatnonzero(res.x > 0.5):
        g, c = cols[k]
        chosen[free[c].pop(0)] = g
    return chosen, {"columns": N, "distinct_groups": len(groups), "label_classes": len(labels)}


class DP(Solver):
    """Exact solver for network selection, partitions and the MIQP (see the module docstring)."""

    name = "dp"
    problems = ("select", "partition", "miqp")
    exact = True

    def _solve(self, problem, seed: int) -> Raw:
        if isinstance(problem, SelectProblem):
            chosen, _, info = solve_select(problem)
            return Raw([problem.candidates[i].group for i in chosen], "optimal", info)
        if isinstance(problem, PartitionProblem):
            blocks, _ = solve_partition(problem)
            return Raw([group_of(b, problem.tasks) for b in blocks], "optimal")
        _guard(problem.n)
        if problem.partition:
            return Raw([group_of(b, problem.tasks) for b in solve_miqp_partition(problem)], "optimal")
        chosen, info = solve_miqp_cover(problem)
        return Raw([group_of(g, problem.tasks) for g in chosen], "optimal", info)
