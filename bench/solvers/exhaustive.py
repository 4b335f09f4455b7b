"""Exhaustive enumeration: the reference every exact solver is tested against (small inputs only).

- ``select``: every set of at most ``k`` candidates within the budget (TAG's network-selection notebook
  enumerates the same sets recursively).
- ``partition``: every partition into exactly ``k`` blocks (restricted growth strings).
- ``miqp``: every set of ``m`` distinct feasible groups covering the tasks (disjoint for the partition variant),
  each checked for an assignment of the labels ``j = 1..m`` that respects every label's budget and size bounds
  (the objective does not depend on the labels, only feasibility does).

Refuses inputs above ``max_evaluations`` instead of running for hours.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from bench.errors import BenchError
from bench.solvers.random import stirling2
from bench.solvers.base import (
    Infeasible,
    MIQPProblem,
    PartitionProblem,
    Raw,
    SelectProblem,
    Solver,
    group_of,
)


def set_partitions(n: int, k: int) -> Iterator[list[int]]:
    """Every partition of ``range(n)`` into exactly ``k`` non-empty blocks, as block bit masks."""
    labels = [0] * n

    def rec(i: int, used: int) -> Iterator[list[int]]:
        if n - i < k - used:
            return
        if i == n:
            if used == k:
                blocks = [0] * k
                for t, lab in enumerate(labels):
                    blocks[lab] |= 1 << t
                yield blocks
            return
        for lab in range(min(used + 1, k)):
            labels[i] = lab
            yield from rec(i + 1, max(used, lab + 1))

    if 1 <= k <= n:
        yield from rec(0, 0)


class Exhaustive(Solver):
    name = "exhaustive"
    problems = ("select", "partition", "miqp")
    exact = True
    defaults = {"max_evaluations": 2_000_000}
    test_parameters = {"max_evaluations": 100_000}

    def _refuse(self, count: int, what: str) -> None:
        if count > self.max_evaluations:
            raise BenchError(f"solver 'exhaustive' would enumerate {count} {what}, above "
                             f"max_evaluations={self.max_evaluations}; use the exact solver 'dp'")

    def _solve(self, problem, seed: int) -> Raw:
        if isinstance(problem, SelectProblem):
            return self._select(problem)
        if isinstance(problem, PartitionProblem):
            return self._partition(problem)
        return self._miqp(problem)

    def _select(self, p: SelectProblem) -> Raw:
        cands, K = p.candidates, min(p.max_groups, len(p.candidates))
        self._refuse(sum(math.comb(len(cands), r) for r in range(1, K + 1)), "candidate sets")
        budget = math.inf if p.budget is None else p.budget + 1e-9
        tasks = set(p.tasks)
        best, best_v = None, -math.inf
        for r in range(1, K + 1):
            for combo in itertools.combinations(cands, r):
                if sum(c.cost for c in combo) > budget or {t for c in combo for t in c.group} != tasks:
                    continue
                value = p.objective([c.group for c in combo])
                if value > best_v + 1e-12:
                    best, best_v = combo, value
        if best is None:
            raise p.infeasible()
        return Raw([c.group for c in best], "optimal")

    def _partition(self, p: PartitionProblem) -> Raw:
        self._refuse(stirling2(p.n, p.k), "partitions")
        best, best_v = None, -math.inf
        for blocks in set_partitions(p.n, p.k):
            groups = [group_of(b, p.tasks) for b in blocks]
            if not all(p.allowed(len(g)) for g in groups):
                continue
            value = p.objective(groups)
            if value > best_v + 1e-12:
                best, best_v = groups, value
        if best is None or not math.isfinite(best_v):
            raise Infeasible(f"no partition into {p.k} groups has only allowed groups within the size bounds")
        return Raw(best, "optimal")

    def _miqp(self, p: MIQPProblem) -> Raw:
        if p.partition:
            self._refuse(stirling2(p.n, p.m), "partitions")
            sets = (tuple(group_of(b, p.tasks) for b in blocks) for blocks in set_partitions(p.n, p.m))
        else:
            feasible = [g for g in (group_of(mask, p.tasks) for mask in range(1, 1 << p.n))
                        if any(p.fits(g, j) for j in range(p.m))]
            self._refuse(math.comb(len(feasible), p.m), "group sets")
            sets = (c for c in itertools.combinations(feasible, p.m) if {t for g in c for t in g} == set(p.tasks))
        best, best_v = None, -math.inf
        for groups in sets:
            value = p.objective(groups)
            if value <= best_v + 1e-12:
                continue
            labelled = self._assign_labels(p, groups)
            if labelled is not None:
                best, best_v = labelled, value
        if best is None:
            raise Infeasible(f"no {p.m} distinct labelled groups cover every task within the budgets and sizes")
        return Raw(best, "optimal")

    @staticmethod
    def _assign_labels(p: MIQPProblem, groups) -> list | None:
        for order in itertools.permutations(groups):
            if all(p.fits(g, j) for j, g in enumerate(order)):
                return list(order)
        return None
