"""Random grouping: a partition drawn uniformly among all partitions of the tasks into exactly k non-empty groups.

transfer-gain-mip Section C.2 groups "tasks ... randomly"; the papers do not say from which distribution. Here
each partition into exactly ``k`` non-empty blocks is equally likely (sequential sampling with the Stirling
recurrence ``S(n, k) = k S(n-1, k) + S(n-1, k-1)``). The ``random`` baseline (``baselines/random.py``) averages
over several such draws and imports its sampler from here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from bench.errors import Unsupported
from bench.solvers.base import PartitionProblem, Raw, Solver
from bench.types import make_group


@lru_cache(maxsize=None)
def stirling2(n: int, k: int) -> int:
    """Stirling number of the second kind: partitions of n items into exactly k non-empty blocks."""
    if n == k:
        return 1
    if k == 0 or k > n:
        return 0
    return k * stirling2(n - 1, k) + stirling2(n - 1, k - 1)


def random_partition(items, k: int, gen) -> list[list]:
    """A partition of ``items`` into exactly ``k`` blocks, uniform over all such partitions.

    Top-down over the items (last first) with ``r`` blocks left to form: the last of the first ``i`` items is a
    block of its own in ``S(i-1, r-1)`` partitions and joins one of the ``r`` blocks of the first ``i-1`` items
    (ordered by their first item) in ``r S(i-1, r)``; the decisions are then replayed in item order.
    """
    items = list(items)
    n = len(items)
    if not 1 <= k <= n:
        raise Unsupported(f"cannot partition {n} tasks into {k} non-empty groups")
    decisions: list[int | None] = []
    r = k
    for i in range(n, 0, -1):
        alone = stirling2(i - 1, r - 1)
        join = r * stirling2(i - 1, r)
        if gen.random() * (alone + join) < alone:
            decisions.append(None)
            r -= 1
        else:
            decisions.append(int(gen.integers(r)))
    blocks: list[list] = []
    for item, decision in zip(items, reversed(decisions)):
        if decision is None:
            blocks.append([item])
        else:
            blocks[decision].append(item)
    return blocks


class RandomPartition(Solver):
    """A uniformly random partition into exactly ``k`` non-empty groups (any group score, no matrix needed).

    Size bounds and groups the score forbids (``-inf``) are honoured by rejection: partitions are drawn until one
    is allowed, which keeps the draw uniform over the allowed partitions; after ``max_draws`` draws without one
    the solver gives up (:class:`~bench.errors.Unsupported`).
    """

    name = "random"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"max_draws": 1000}
    test_parameters = {"max_draws": 100}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        gen = np.random.default_rng(seed)
        for draw in range(1, self.max_draws + 1):
            blocks = random_partition(problem.tasks, problem.k, gen)
            if all(problem.allowed(len(b)) and math.isfinite(problem.score.value(make_group(b)))
                   for b in blocks):
                return Raw(blocks, "heuristic", {"draws": draw})
        raise Unsupported(f"solver '{self.id}' found no allowed partition (size bounds, groups the score forbids) "
                          f"in {self.max_draws} uniform draws; raise max_draws or use an exact solver (dp, "
                          f"exhaustive)")
