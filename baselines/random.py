"""Random grouping: the mean over ``repeats`` random partitions of the tasks into exactly k non-empty groups.

transfer-gain-mip Section C.2: "tasks are grouped randomly and results are taken the average for 10 repeats".
Choice made here: each partition is drawn **uniformly among all partitions into exactly k non-empty blocks**
(sampled sequentially with the Stirling recurrence S(n, k) = k S(n-1, k) + S(n-1, k-1)); the papers do not say
which distribution they used. The record's ``per_task`` and ``total`` are the means over the repeats.
"""

from __future__ import annotations

from functools import lru_cache

from bench.errors import Unsupported
from bench.method import Context, Method
from bench.types import Grouping


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


class Random(Method):
    name = "random"
    semantics = "partition"
    defaults = {"repeats": 10}
    test_parameters = {"repeats": 3}

    def solve(self, model, n_groups: int, ctx: Context) -> list[Grouping]:
        gen = ctx.rng(self.name, n_groups)
        return [Grouping.of(random_partition(ctx.tasks, n_groups, gen), "partition") for _ in range(self.repeats)]
