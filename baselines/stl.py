"""STL: every task trained alone (one single-task network per task)."""

from __future__ import annotations

from bench.method import Context, Method
from bench.types import Grouping


class Stl(Method):
    name = "stl"
    semantics = "partition"
    uses_splits = False

    def solve(self, model, n_groups: int, ctx: Context) -> Grouping:
        return Grouping.of([[t] for t in ctx.tasks], "partition")
