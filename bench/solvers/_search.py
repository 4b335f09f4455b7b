"""Shared pieces of the partition searches ``local_search`` and ``random_search``.

The searches of affinity-predictor-local-search (Section 5.1 and its random-search baseline, Section 6.2.1) count
their cost in MTL trainings, i.e. in distinct groups whose loss is measured. :class:`GroupOracle` memoises that
measurement and counts the distinct groups asked; :func:`sample_partition` draws the random partitions both
searches start from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from math import comb

import numpy as np

from bench.errors import UsageError
from bench.types import Group, make_group

Partition = tuple[Group, ...]

RANDOM_TRIES = 1000
"""Uniform draws tried before :func:`sample_partition` falls back to its size-first construction."""


class GroupOracle:
    """A group's value (larger is better) from an expensive callback, asked at most once per distinct group.

    ``calls`` is the number of distinct groups evaluated: one MTL training each in the paper's accounting. The
    callback may return ``-inf`` for a group that is not allowed; ``nan`` and ``+inf`` are refused.
    """

    def __init__(self, fn: Callable[[Group], float]) -> None:
        self._fn = fn
        self.values: dict[Group, float] = {}

    def __call__(self, group: Iterable[str]) -> float:
        group = make_group(group)
        if group not in self.values:
            value = float(self._fn(group))
            if math.isnan(value) or value == math.inf:
                raise UsageError(f"the oracle returned {value} for group {'+'.join(group)}; a group's value must be "
                                 f"a finite number, or -inf for a group that is not allowed")
            self.values[group] = value
        return self.values[group]

    @property
    def calls(self) -> int:
        return len(self.values)

    def known(self, group: Group) -> bool:
        return group in self.values

    def partition_value(self, partition: Iterable[Group]) -> float:
        return float(sum(self(g) for g in partition))


def fits(partition: Sequence[Group], k: int, min_size: int, max_size: int) -> bool:
    return len(partition) == k and all(min_size <= len(g) <= max_size for g in partition)


def reachable_groups(n: int, k: int, min_size: int, max_size: int) -> int:
    """How many distinct groups occur in some partition of ``n`` tasks into ``k`` blocks of allowed sizes."""
    rest = k - 1
    return sum(comb(n, s) for s in range(min_size, max_size + 1)
               if rest * min_size <= n - s <= rest * max_size and (rest > 0 or s == n))


def sample_partition(tasks: Sequence[str], k: int, rng: np.random.Generator, min_size: int = 1,
                     max_size: int | None = None) -> Partition:
    """A random partition of ``tasks`` into exactly ``k`` groups with sizes in ``[min_size, max_size]``.

    Uniform over all such partitions: uniform partitions into ``k`` blocks
    (:func:`bench.solvers.random.random_partition`) are redrawn until the sizes fit. If ``RANDOM_TRIES`` draws all
    break the bounds (very tight bounds), the sizes are drawn first (every group at ``min_size``, the rest of the
    tasks spread one by one over groups below ``max_size``) and a random permutation of the tasks fills them: a
    valid but no longer uniform partition.
    """
    from bench.solvers.random import random_partition  # imported late: a sibling solver module

    n = len(tasks)
    max_size = n if max_size is None else max_size
    if not (1 <= k <= n and k * min_size <= n <= k * max_size):
        raise UsageError(f"no partition of {n} tasks into {k} groups has every size between {min_size} and "
                         f"{max_size}")
    for _ in range(RANDOM_TRIES):
        blocks = tuple(make_group(b) for b in random_partition(tasks, k, rng))
        if all(min_size <= len(b) <= max_size for b in blocks):
            return blocks
    sizes = np.full(k, min_size)
    for _ in range(n - k * min_size):
        open_ = np.flatnonzero(sizes < max_size)
        sizes[open_[rng.integers(len(open_))]] += 1
    order = [tasks[i] for i in rng.permutation(n)]
    cuts = np.cumsum(sizes)[:-1]
    return tuple(make_group(part) for part in np.split(np.array(order, dtype=object), cuts))
