"""Optimal: exhaustive network selection over the ground-truth results of every candidate group.

Every candidate group is trained (or looked up) and the best selection of at most k groups is found exactly
(groups may overlap, each task is served by its best chosen group) by the exact solver named in ``solver``; by
default (``None``) ``dp`` up to 16 tasks and ``select_highs`` beyond (``dp`` enumerates subsets of at most 16
tasks; both prove the optimum, and the record's ``solved_by`` names the one that ran).

Choice made here: by default the oracle chooses *and serves* on the **test** values (``select_on=test``), so its
total is the largest test total any selection of at most k groups can reach: an upper bound for every method
that selects among the same groups. ``select_on=val`` gives the selection a validation-driven method would make
if it knew every group's validation result. transfer-gain-mip Table 2 lists this baseline as "Optimal"; where its
published total is below the exact optimum (Taskonomy, 4 groups: 0.833 published, 0.917 exact), our table keeps
the exact value and ``bench compare`` shows the difference.

It refuses (a recorded skip, not a failure) when the candidates would need more than ``max_trainings``
trainings; a published table's lookups are not trainings and are not limited. On a published table that lists
some groups only, the candidates are the listed groups (MIMIC-III: the best selection among its 3,185 published
combinations).
"""

from __future__ import annotations

from bench.errors import Unsupported, UsageError
from bench.method import Context, Method
from bench.selection import candidates
from bench.solvers.base import SelectProblem
from bench.solvers.dp import MAX_TASKS as DP_MAX_TASKS
from bench.types import Grouping


class Optimal(Method):
    name = "optimal"
    semantics = "select"
    defaults = {"select_on": "test", "max_trainings": 1023, "solver": None}
    test_parameters = {"select_on": "val"}

    @property
    def serve_by(self) -> str:
        return self.select_on

    def collect(self, ctx: Context):
        if self.select_on not in ("val", "test"):
            raise UsageError(f"optimal: select_on must be 'val' or 'test', got {self.select_on!r}")
        count = ctx.problem.n_candidate_groups()
        if count > self.max_trainings and ctx.problem.cacheable:  # a table's lookups cost nothing
            raise Unsupported(
                f"optimal needs {count} group results for {ctx.problem.n_tasks} tasks, more than "
                f"max_trainings={self.max_trainings}; raise it with optimal[max_trainings=N] if you mean it"
            )
        return ctx.train_many(ctx.problem.candidate_groups())

    def solver_for(self, n_tasks: int) -> str:
        """The solver's id: ``solver``, or by default the exact solver for ``n_tasks`` tasks."""
        if self.solver is not None:
            return self.solver
        return "dp" if n_tasks <= DP_MAX_TASKS else "select_highs"

    def solve(self, results, n_groups: int, ctx: Context) -> Grouping:
        problem = SelectProblem(ctx.tasks, tuple(candidates(results, ctx.problem.tasks, self.select_on)), n_groups)
        solver = ctx.create("solver", self.solver_for(len(ctx.tasks)))
        if not solver.exact:
            raise UsageError(f"optimal needs an exact solver, '{solver.id}' is a heuristic")
        return solver.solve(problem, ctx.seed).grouping
