"""Optimal: exhaustive network selection over the ground-truth results of every candidate group.

Every candidate group is trained (or looked up) and the best selection of at most k groups is found exactly
(by the solver named in ``solver``, the exact ``dp`` by default; groups may overlap, each task is served by its best
chosen group).

Choice made here: by default the oracle chooses *and serves* on the **test** values (``select_on=test``), so its
total is the largest test total any selection of at most k groups can reach: an upper bound for every method
that selects among the same groups. ``select_on=val`` gives the selection a validation-driven method would make
if it knew every group's validation result. transfer-gain-mip Table 2 lists this baseline as "Optimal"; where its
published total is below the exact optimum (Taskonomy, 4 groups: 0.833 published, 0.917 exact), our table keeps
the exact value and ``bench compare`` shows the difference.

It refuses (a recorded skip, not a failure) when the candidates would need more than ``max_trainings``
trainings. On a published table that lists some groups only, the candidates are the listed groups (MIMIC-III:
``optimal[max_trainings=3185,solver=select_highs]``, the best selection among the published combinations; ``dp``
enumerates subsets of at most 16 tasks).
"""

from __future__ import annotations

from bench.errors import Unsupported, UsageError
from bench.method import Context, Method
from bench.selection import candidates
from bench.solvers.base import SelectProblem
from bench.types import Grouping


class Optimal(Method):
    name = "optimal"
    semantics = "select"
    defaults = {"select_on": "test", "max_trainings": 1023, "solver": "dp"}
    test_parameters = {"select_on": "val"}

    @property
    def serve_by(self) -> str:
        return self.select_on

    def collect(self, ctx: Context):
        if self.select_on not in ("val", "test"):
            raise UsageError(f"optimal: select_on must be 'val' or 'test', got {self.select_on!r}")
        count = ctx.problem.n_candidate_groups()
        if count > self.max_trainings:
            raise Unsupported(
                f"optimal needs {count} group results for {ctx.problem.n_tasks} tasks, more than "
                f"max_trainings={self.max_trainings}; raise it with optimal[max_trainings=N] if you mean it"
                + (" (and solver=select_highs: dp enumerates at most 16 tasks)" if ctx.problem.n_tasks > 16 else "")
            )
        return ctx.train_many(ctx.problem.candidate_groups())

    def solve(self, results, n_groups: int, ctx: Context) -> Grouping:
        problem = SelectProblem(ctx.tasks, tuple(candidates(results, ctx.problem.tasks, self.select_on)), n_groups)
        solver = ctx.create("solver", self.solver)
        if not solver.exact:
            raise UsageError(f"optimal needs an exact solver, '{self.solver}' is a heuristic")
        return solver.solve(problem, ctx.seed).grouping
