"""Random grouping: the mean over ``repeats`` random groupings of the tasks into k groups.

``draw`` says how a random grouping is drawn:

- ``partition`` (default): transfer-gain-mip Section C.2, "tasks are grouped randomly and results are taken the
  average for 10 repeats". Choice made here: each partition is drawn **uniformly among all partitions into exactly
  k non-empty blocks** (sampled sequentially with the Stirling recurrence S(n, k) = k S(n-1, k) + S(n-1, k-1)); the
  papers do not say which distribution they used.
- ``groups``: MTG-Net's random baseline (implementations.md 3.4; the ``rand_traj`` loops of the reference's
  grouping notebooks): ``k`` distinct groups drawn uniformly from the groups the problem can evaluate (a published
  table's rows: its listed groups, singletons included; elsewhere every non-empty subset of the tasks), drawn again
  until together they cover every task; overlapping groups, each task served by its best chosen group on
  validation. It runs on tables that list some groups only (MIMIC-III), where a partition's groups are mostly not
  listed. After ``max_draws`` draws in a row without a cover the run is a recorded skip (on a complete table of
  many tasks a cover by k random subsets is that unlikely). One difference from the reference: its notebooks take
  a task's validation argmax over every drawn row, a non-member row counting as gain 0 (so a task whose member
  rows all lose on validation falls back to its single-task model); here a task is served by a group holding it,
  as for every network-selection method of the harness.

The record's ``per_task`` and ``total`` are the means over the repeats.
"""

from __future__ import annotations

import numpy as np

from bench.errors import Unsupported, UsageError
from bench.method import Context, Method
from bench.solvers.random import random_partition, stirling2  # noqa: F401  (re-exported)
from bench.types import Group, Grouping, make_group

DRAWS = ("partition", "groups")


class Random(Method):
    name = "random"
    defaults = {"repeats": 10, "draw": "partition", "max_draws": 100_000}
    test_parameters = {"repeats": 3}

    @property
    def semantics(self) -> str:  # type: ignore[override]
        return "select" if self.draw == "groups" else "partition"

    def check(self) -> None:
        if self.draw not in DRAWS:
            raise UsageError(f"{self.id}: draw must be one of {', '.join(DRAWS)}, got {self.draw!r}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise UsageError(f"{self.id}: repeats must be a positive number of groupings, got {self.repeats!r}")
        if not isinstance(self.max_draws, int) or self.max_draws < 1:
            raise UsageError(f"{self.id}: max_draws must be a positive number, got {self.max_draws!r}")

    def solve(self, model, n_groups: int, ctx: Context) -> list[Grouping]:
        gen = ctx.rng(self.name, n_groups)
        if self.draw == "groups":
            return [Grouping.of(groups, "select") for groups in self.covers(ctx, n_groups, gen)]
        return [Grouping.of(random_partition(ctx.tasks, n_groups, gen), "partition") for _ in range(self.repeats)]

    def covers(self, ctx: Context, k: int, gen: np.random.Generator) -> list[list[Group]]:
        """``repeats`` covers, each of ``k`` distinct uniformly drawn evaluable groups (see the module docstring)."""
        tasks = ctx.tasks
        n = len(tasks)
        listed = ctx.problem.listed_groups()
        index = {t: i for i, t in enumerate(tasks)}
        full = (1 << n) - 1
        if listed is not None:
            rows = [make_group(g) for g in listed]
            masks = np.array([sum(1 << index[t] for t in g) for g in rows], dtype=object)
            if k > len(rows):
                raise Unsupported(f"{self.id}: {k} distinct groups cannot be drawn from the {len(rows)} listed ones")
        elif k > full:
            raise Unsupported(f"{self.id}: {k} distinct groups cannot be drawn from the {full} groups of {n} tasks")
        out: list[list[Group]] = []
        draws = 0  # since the last cover
        while len(out) < self.repeats:
            if draws == self.max_draws:
                raise Unsupported(f"{self.id}: no {k} random groups covered all {n} tasks in {self.max_draws} draws "
                                  f"(draw=groups suits published tables; raise max_draws if you mean it)")
            draws += 1
            if listed is not None:
                chosen = gen.choice(len(rows), size=k, replace=False)
                if int(np.bitwise_or.reduce(masks[chosen])) == full:
                    out.append([rows[i] for i in chosen])
                    draws = 0
                continue
            picked: set[int] = set()
            while len(picked) < k:  # k distinct non-empty subsets, each uniform
                mask = int.from_bytes(gen.bytes((n + 7) // 8), "little") & full
                if mask:
                    picked.add(mask)
            cover = 0
            for mask in picked:
                cover |= mask
            if cover == full:
                out.append([tuple(t for t in tasks if 1 << index[t] & m) for m in sorted(picked)])
                draws = 0
        return out
