"""transfer-gain-mip Formulation 9 (Appendix B) as written, solved with Gurobi (the paper's solver).

The model, over binary ``X`` (``n`` tasks x ``m`` labelled groups), continuous ``y`` and binary ``Z``::

    max  sum_j sum_i sum_k S_ik y_j Z_ijk
    s.t. X' 1 >= 1,  X 1 >= 1 (X 1 = 1 in the partition variant),  (B o X)' 1 <= b,  m1 <= X' 1 <= m2,
         (X' 1) o y = 1,  Z_ijk = X_ij X_kj,  ||X_j1 - X_j2||^2 >= 1 (j1 != j2),  X binary

``Z`` uses two identities of binaries to stay small: ``Z_iij = X_ij`` (the diagonal is ``X`` itself) and
``Z_ijk = Z_kji`` (one variable per pair ``i < k``), so the objective reads
``sum_j y_j (sum_i S_ii X_ij + sum_{i<k} (S_ik + S_ki) Z_ijk)``. ``y_j``'s bound ``[0, 1]`` is tightened to
``[1/m2_j, 1/m1_j]``, which ``(X' 1) o y = 1`` implies. The products ``y X``, ``y Z``, ``X X`` and the distinctness
constraint ``sum_i (X_ij1 - X_ij2)^2 >= 1`` stay quadratic (``NonConvex=2``). The linear rows on ``X`` are shared
with :mod:`bench.solvers.miqp_highs` (:func:`~bench.solvers.miqp_highs.assignment_rows`), including its only
symmetry breaking: groups with identical ``B`` column, ``b``, ``m1`` and ``m2`` are interchangeable and ordered
strictly by their columns read as binary numbers, which also makes them distinct, so distinctness constraints are
only stated between groups whose data differ, and not at all in the partition variant (disjoint non-empty columns
are distinct). Neither changes the optimum (see miqp_highs).

**Size-limited licence and fallback.** The licence that ships with ``pip install gurobipy`` solves models of at
most 2000 variables and 2000 constraints (linear and quadratic together), and of at most **200 variables once the
model has a quadratic term**, which Formulation 9 always has (measured with gurobipy 13.0.3; one more raises
``GurobiError`` 10010). The model needs ``m (n + 1 + n(n-1)/2)`` variables, e.g. 132 for ``n = 6, m = 6`` but
230 for ``n = 9, m = 5``. When gurobipy is missing or the model is above these limits (counted before building,
and error 10010 caught in case a licence counts differently) the same Formulation 9, exactly linearised, is solved
by HiGHS (:mod:`bench.solvers.miqp_highs`); the result says so in ``notes`` and ``info["backend"]``.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError, UsageError
from bench.solvers.base import MIQPProblem, Raw, Solver
from bench.solvers.miqp_highs import (
    assignment_rows,
    check_time_limit,
    column_pairs,
    groups_from_x,
    gurobi_size,
    infeasible,
    no_incumbent,
    solve_highs,
    task_pairs,
    y_bounds,
)

LICENCE_CONSTRAINTS = 2000
LICENCE_QUADRATIC_VARIABLES = 200
"""The size-limited licence's limits that bind here (2000 variables, but only 200 once a model is quadratic)."""
MODEL_TOO_LARGE = 10010  # GurobiError.errno for "Model too large for size-limited license"


class _Fallback(Exception):
    """Gurobi cannot take this model; the message says why (it becomes the note of the HiGHS result)."""


def _solve_gurobi(problem: MIQPProblem, time_limit: float, threads: int, seed: int) -> Raw:
    import gurobipy as gp
    from gurobipy import GRB

    n, m, S = problem.n, problem.m, problem.S
    pairs = task_pairs(n)
    yL, yU = y_bounds(problem)
    with gp.Env(empty=True) as env:
        env.setParam("OutputFlag", 0)  # before start(): no licence banner, no log
        env.start()
        with gp.Model("formulation9", env=env) as model:
            model.Params.TimeLimit = time_limit
            model.Params.Threads = threads
            model.Params.MIPGap = 0.0
            model.Params.NonConvex = 2
            model.Params.Seed = seed % 2_000_000_000
            x = model.addVars(m, n, vtype=GRB.BINARY, name="X")  # x[j, i] is X_ij
            X = lambda i, j: x[j, i]  # noqa: E731
            y = model.addVars(m, lb=yL.tolist(), ub=yU.tolist(), name="y")
            Z = model.addVars(m, len(pairs), vtype=GRB.BINARY, name="Z")
            A, lo, hi = assignment_rows(problem)
            for r in range(len(A)):  # over the flat group-major X of assignment_rows
                expr = gp.quicksum(float(A[r, c]) * X(c % n, c // n) for c in A[r].nonzero()[0])
                if lo[r] == hi[r]:
                    model.addConstr(expr == lo[r])
                    continue
                if lo[r] > -np.inf:  # a ranged row becomes two constraints (addRange would add a variable)
                    model.addConstr(expr >= lo[r])
                if hi[r] < np.inf:
                    model.addConstr(expr <= hi[r])
            objective = gp.QuadExpr()
            for j in range(m):
                model.addConstr(y[j] * gp.quicksum(X(i, j) for i in range(n)) == 1)  # (X' 1) o y = 1
                for p, (i, k) in enumerate(pairs):
                    model.addConstr(Z[j, p] == X(i, j) * X(k, j))
                group = gp.quicksum(S[i, i] * X(i, j) for i in range(n))
                group += gp.quicksum((S[i, k] + S[k, i]) * Z[j, p] for p, (i, k) in enumerate(pairs))
                objective += y[j] * group
            for j1, j2 in column_pairs(problem):
                model.addConstr(gp.quicksum((X(i, j1) - X(i, j2)) * (X(i, j1) - X(i, j2)) for i in range(n)) >= 1)
            model.setObjective(objective, GRB.MAXIMIZE)
            model.update()
            try:
                model.optimize()
            except gp.GurobiError as exc:
                if exc.errno == MODEL_TOO_LARGE:
                    raise _Fallback(f"Gurobi refused the model ({model.NumVars} variables, "
                                    f"{model.NumConstrs + model.NumQConstrs} constraints) as too large for its "
                                    f"licence (error {MODEL_TOO_LARGE}); solved with HiGHS (miqp_highs) instead")
                raise
            if model.Status in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):  # every variable is bounded: not unbounded
                raise infeasible(problem)
            if model.SolCount == 0:
                if model.Status == GRB.TIME_LIMIT:
                    raise no_incumbent("miqp_gurobi", time_limit)
                raise BenchError(f"Gurobi stopped with status {model.Status} and no solution")
            optimal = model.Status == GRB.OPTIMAL  # with MIPGap = 0: proved at zero gap (MIPGapAbs 1e-10)
            info = {"backend": "gurobi", "variables": model.NumVars, "constraints":
                    model.NumConstrs + model.NumQConstrs, "model_objective": float(model.ObjVal),
                    "bound": float(model.ObjBound), "gap": float(model.MIPGap), "nodes": int(model.NodeCount)}
            flat = [x[j, i].X for j in range(m) for i in range(n)]  # group-major, as groups_from_x reads it
            return Raw(groups_from_x(problem, flat), "optimal" if optimal else "feasible", info)


class MiqpGurobi(Solver):
    """transfer-gain-mip Formulation 9 (Appendix B) as written, solved by Gurobi with ``MIPGap = 0``.

    ``status`` is ``optimal`` when Gurobi proves optimality at zero gap and ``feasible`` when the time limit stops
    it with an incumbent; without one it raises :class:`~bench.errors.Unsupported`. Infeasible constraints raise a
    ``UsageError`` starting "infeasible:". Falls back to HiGHS (``miqp_highs``) when gurobipy is missing or the
    model is above the size-limited licence (module docstring), with a note saying why.
    """

    name = "miqp_gurobi"
    version = "1"
    problems = ("miqp",)
    exact = True
    defaults = {"time_limit": 60.0, "threads": 1}
    profile_defaults = {"smoke": {"time_limit": 10.0}}
    test_parameters = {"time_limit": 30.0}

    def _solve(self, problem: MIQPProblem, seed: int) -> Raw:
        time_limit = check_time_limit(self.time_limit, self.name)
        if self.threads < 0:
            raise UsageError(f"threads of solver '{self.name}' must be 0 (Gurobi chooses) or a positive count, "
                             f"got {self.threads}")
        try:
            try:
                import gurobipy  # noqa: F401
            except ImportError:
                raise _Fallback("gurobipy is not installed; solved with HiGHS (miqp_highs) instead") from None
            n_vars, n_cons = gurobi_size(problem)
            if n_vars > LICENCE_QUADRATIC_VARIABLES or n_cons > LICENCE_CONSTRAINTS:
                raise _Fallback(f"the model needs {n_vars} variables and {n_cons} constraints, above the "
                                f"size-limited licence's {LICENCE_QUADRATIC_VARIABLES} variables for a quadratic "
                                f"model (and {LICENCE_CONSTRAINTS} constraints); solved with HiGHS (miqp_highs) "
                                "instead")
            return _solve_gurobi(problem, time_limit, int(self.threads), seed)
        except _Fallback as why:
            raw = solve_highs(problem, time_limit, self.name)
            raw.notes = (*raw.notes, str(why))
            return raw
