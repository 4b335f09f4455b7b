"""Random grouping: the mean over ``repeats`` random partitions of the tasks into exactly k non-empty groups.

transfer-gain-mip Section C.2: "tasks are grouped randomly and results are taken the average for 10 repeats".
Choice made here: each partition is drawn **uniformly among all partitions into exactly k non-empty blocks**
(sampled sequentially with the Stirling recurrence S(n, k) = k S(n-1, k) + S(n-1, k-1)); the papers do not say
which distribution they used. The record's ``per_task`` and ``total`` are the means over the repeats.
"""

from __future__ import annotations

from bench.method import Context, Method
from bench.solvers.random import random_partition, stirling2  # noqa: F401  (re-exported)
from bench.types import Grouping


class Random(Method):
    name = "random"
    semantics = "partition"
    defaults = {"repeats": 10}
    test_parameters = {"repeats": 3}

    def solve(self, model, n_groups: int, ctx: Context) -> list[Grouping]:
        gen = ctx.rng(self.name, n_groups)
        return [Grouping.of(random_partition(ctx.tasks, n_groups, gen), "partition") for _ in range(self.repeats)]
