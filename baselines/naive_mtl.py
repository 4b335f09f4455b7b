"""Naive-MTL: all tasks in one group (one shared network, summed task losses)."""

from __future__ import annotations

from bench.method import Context, Method
from bench.types import Grouping


class NaiveMtl(Method):
    name = "naive_mtl"
    semantics = "partition"
    uses_splits = False

    def solve(self, model, n_groups: int, ctx: Context) -> Grouping:
        return Grouping.of([ctx.tasks], "partition")
