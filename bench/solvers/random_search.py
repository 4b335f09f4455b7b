"""Random search over partitions: the baseline of affinity-predictor-local-search, Section 6.2.1.

"A simple random search that tries random partitions one-by-one, until it has used at least the same amount of
computation as our approach (number of MTL models trained), and then it outputs the best partition found so far."
Each partition is uniform over the partitions into exactly ``k`` groups within the size bounds
(:func:`bench.solvers._search.sample_partition`); computation is counted as in ``local_search``: one oracle call
per distinct group evaluated (memoised). The search stops as soon as ``oracle_calls`` distinct groups were
evaluated, so it overshoots by fewer than ``k`` calls; a composition sets ``oracle_calls`` to what a local search
consumed.

When fewer distinct groups than ``oracle_calls`` can occur in a valid partition (small instances), the target is
that number; the search also stops after ``100 * target + 1000`` partitions (a note says so), which only a very
rare group can require.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bench.errors import Unsupported, UsageError
from bench.solvers._search import GroupOracle, Partition, reachable_groups, sample_partition
from bench.solvers.base import PartitionProblem, Raw, Solver
from bench.types import Group


def run_random_search(tasks: Sequence[str], k: int, oracle: Callable[[Group], float] | GroupOracle,
                      rng: np.random.Generator, budget: int, *, min_size: int = 1,
                      max_size: int | None = None) -> tuple[Partition, float, int, bool]:
    """Random partitions until ``budget`` distinct groups were evaluated (or every reachable group was).

    Returns the best partition (the first of equal value), its value, the number of partitions tried and whether
    the search stopped at its cap on partitions before reaching its target.
    """
    oracle = oracle if isinstance(oracle, GroupOracle) else GroupOracle(oracle)
    if budget < 1:
        raise UsageError(f"random search needs a budget of at least 1 oracle call, got {budget}")
    n = len(tasks)
    max_size = n if max_size is None else max_size
    target = min(budget, reachable_groups(n, k, min_size, max_size))
    cap = 100 * target + 1000
    best, best_value, tried = None, -math.inf, 0
    while oracle.calls < target and tried < cap:
        partition = sample_partition(tasks, k, rng, min_size, max_size)
        tried += 1
        value = oracle.partition_value(partition)
        if best is None or value > best_value:
            best, best_value = partition, value
    return best, best_value, tried, oracle.calls < target


class RandomSearch(Solver):
    """Best of uniformly random partitions until ``oracle_calls`` groups are evaluated (affinity-predictor, 6.2.1).

    Partitions into exactly ``k`` groups; ``info["oracle_calls"]`` is the number of distinct groups evaluated.
    """

    name = "random_search"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"oracle_calls": 200}
    test_parameters = {"oracle_calls": 20}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        oracle = GroupOracle(problem.score.value)
        best, value, tried, capped = run_random_search(
            problem.tasks, problem.k, oracle, np.random.default_rng(seed), self.oracle_calls,
            min_size=problem.min_size, max_size=problem.max_size)
        if not math.isfinite(value):
            raise Unsupported(f"random search found no partition whose groups are all allowed by the score "
                              f"({tried} partitions tried); use an exact solver (dp)")
        notes = (f"stopped after {tried} partitions with {oracle.calls} of its target oracle calls",) if capped else ()
        return Raw(best, "heuristic", {"oracle_calls": oracle.calls, "partitions": tried}, notes)
