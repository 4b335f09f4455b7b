"""Selection semantics: how a grouping is scored, and exact network selection over candidate groups.

Network selection (HOA, TAG, ETAP, MTG-Net and the Optimal baseline): choose at most ``k`` candidate groups so that
every task is in at least one; groups may overlap; each task is scored in the chosen group that is best for it;
the total is the sum over tasks. A partition is the special case of disjoint groups.

:func:`select_exact` solves network selection exactly by dynamic programming over subsets of tasks. Serving each
task by its best chosen group is the same as assigning every task to one chosen group that contains it, so an
optimal selection is a partition of the tasks into at most ``k`` blocks ``A`` with value
``f(A) = max over candidates G ⊇ A of sum_{t in A} u(G, t)``; the best such partition is found by the subset
recursion ``g_j(M) = max_{A ⊆ M, A ∋ min(M)} f(A) + g_{j-1}(M \\ A)`` in ``O(k 3^n)``.
:func:`select_exhaustive` enumerates every set of at most ``k`` candidates and is the reference for tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.errors import Unsupported, UsageError
from bench.types import Group, GroupResult, Grouping, Task


@dataclass(frozen=True)
class Evaluation:
    """A grouping scored on ground truth: per task, the test and validation value of the group serving it."""

    per_task: dict[str, float]
    per_task_val: dict[str, float]
    served_by: dict[str, Group]

    @property
    def total(self) -> float:
        return float(sum(self.per_task.values()))


def evaluate(grouping: Grouping, results: Mapping[Group, GroupResult], tasks: Sequence[Task],
             serve_by: str = "val") -> Evaluation:
    """Score ``grouping``: each task takes the test value of its best chosen group by ``serve_by`` (val/test).

    Ties go to the first group in the grouping's canonical order, so the result is deterministic.
    """
    if serve_by not in ("val", "test"):
        raise UsageError(f"serve_by must be 'val' or 'test', got {serve_by!r}")
    grouping.validate([t.name for t in tasks])
    per_task, per_val, served = {}, {}, {}
    for task in tasks:
        best, best_u = None, -math.inf
        for group in grouping.groups:
            if task.name not in group:
                continue
            result = results[group]
            u = task.utility(getattr(result, serve_by)[task.name])
            if u > best_u:
                best, best_u = group, u
        assert best is not None  # validate() guarantees coverage
        per_task[task.name] = float(results[best].test[task.name])
        per_val[task.name] = float(results[best].val[task.name])
        served[task.name] = best
    return Evaluation(per_task, per_val, served)


@dataclass(frozen=True)
class Candidate:
    """A candidate group with the utility (larger is better) of each member task in it."""

    group: Group
    utility: Mapping[str, float]


def _check(candidates: Sequence[Candidate], tasks: Sequence[str], k: int) -> None:
    if k < 1:
        raise UsageError(f"the number of groups must be at least 1, got {k}")
    known = set(tasks)
    for cand in candidates:
        extra = set(cand.group) - known
        if extra:
            raise UsageError(f"candidate group {cand.group} names unknown tasks {sorted(extra)}")
    covered = {t for c in candidates for t in c.group}
    if covered != known:
        raise UsageError(f"no candidate group contains tasks {sorted(known - covered)}")


def _value(selection: Sequence[Candidate], tasks: Sequence[str]) -> float:
    total = 0.0
    for t in tasks:
        values = [c.utility[t] for c in selection if t in c.group]
        if not values:
            return -math.inf
        total += max(values)
    return total


def select_exhaustive(candidates: Sequence[Candidate], tasks: Sequence[str], k: int) -> tuple[Grouping, float]:
    """Reference: try every set of at most ``k`` candidates (feasible only for tiny inputs)."""
    _check(candidates, tasks, k)
    best, best_value = None, -math.inf
    for r in range(1, min(k, len(candidates)) + 1):
        for combo in itertools.combinations(candidates, r):
            value = _value(combo, tasks)
            if value > best_value + 1e-12:
                best, best_value = combo, value
    if best is None:
        raise UsageError(f"no selection of at most {k} candidate groups covers every task")
    return Grouping.of([c.group for c in best], "select"), best_value


MAX_DP_TASKS = 16


def select_exact(candidates: Sequence[Candidate], tasks: Sequence[str], k: int) -> tuple[Grouping, float]:
    """Exact network selection by dynamic programming over task subsets (see the module docstring)."""
    _check(candidates, tasks, k)
    n = len(tasks)
    if n > MAX_DP_TASKS:
        raise Unsupported(f"exact network selection is limited to {MAX_DP_TASKS} tasks here, got {n}")
    index = {t: i for i, t in enumerate(tasks)}
    full = (1 << n) - 1
    masks = np.arange(1 << n)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
    f = np.full(1 << n, -np.inf)
    arg = np.full(1 << n, -1)
    for ci, cand in enumerate(candidates):
        m = sum(1 << index[t] for t in cand.group)
        u = np.zeros(n)
        for t in cand.group:
            u[index[t]] = cand.utility[t]
        subs = masks[(masks & m) == masks]
        subs = subs[subs > 0]
        vals = bits[subs] @ u
        better = vals > f[subs] + 1e-12
        f[subs[better]] = vals[better]
        arg[subs[better]] = ci
    # g[j][M]: best value covering exactly M with at most j blocks; choice[j][M]: the block holding min(M).
    g_prev = f.copy()
    choices = [np.where(np.isfinite(f), masks, -1)]
    best_j, best_val = 1, g_prev[full]
    for j in range(2, min(k, n) + 1):
        g = g_prev.copy()
        choice = choices[-1].copy()
        for mask in range(1, full + 1):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            while True:
                block = sub | low
                if block != mask:
                    value = f[block] + g_prev[mask ^ block]
                    if value > g[mask] + 1e-12:
                        g[mask], choice[mask] = value, block
                if sub == 0:
                    break
                sub = (sub - 1) & rest
        g_prev = g
        choices.append(choice)
        if g[full] > best_val + 1e-12:
            best_j, best_val = j, g[full]
    if not np.isfinite(best_val):
        raise UsageError(f"no selection of at most {k} candidate groups covers every task")
    groups, mask, j = [], full, best_j
    while mask:
        block = int(choices[j - 1][mask])
        groups.append(candidates[int(arg[block])].group)
        mask ^= block
        j -= 1
    return Grouping.of(groups, "select"), float(best_val)
