"""Exact network selection over an explicit list of candidates, for any number of tasks: a mixed-integer program
solved by HiGHS (``scipy.optimize.milp``) at zero gap.

``dp`` enumerates subsets of tasks (at most 16 tasks); this solver works on the candidate list instead, so it
serves problems with many tasks and a bounded list of candidates: a published gain table that lists only some
groups (MIMIC-III: 3,185 of the 2^27 - 1 groups of 27 tasks), or a beam-grown pool.

Model (a capacitated facility-location program). Binary ``y_c``: candidate ``c`` is chosen; continuous
``x_tc`` in [0, 1] for each member ``t`` of ``c``: task ``t`` is served by ``c``.

    maximise    sum_{c, t in c} u(c, t) x_tc
    subject to  sum_{c ∋ t} x_tc = 1            for every task t (every task is served)
                x_tc <= y_c                       (only by a chosen candidate)
                sum_c y_c <= k,  sum_c cost_c y_c <= budget   (where given)

For a fixed choice ``y`` the best ``x`` serves each task by its best chosen candidate, the harness's selection
objective (:func:`bench.solvers.base.select_value`), and some optimal ``x`` is integral, so the program's optimum
is the selection optimum. Candidates listed twice count with their last entry, as in that objective. The
returned groups are the chosen candidates that serve a task best (a chosen candidate that serves none is dropped:
it changes neither the objective nor the constraints it satisfied).

``status`` is ``optimal`` when HiGHS proves optimality and ``feasible`` when ``time_limit`` (default 600 s) stops
it with an incumbent; without one it raises :class:`~bench.errors.Unsupported`. HOA's 3-group selection over
MIMIC-III's listed groups takes about 90 s to prove on 2 cores.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint
from scipy.sparse import coo_array, csr_array

from bench.solvers.base import Raw, SelectProblem, Solver
from bench.solvers.miqp_highs import check_time_limit, milp_zero_gap


def select_model(problem: SelectProblem):
    """``(cands, c, constraints, bounds, integrality)`` of the program above; variables are the ``y_c`` (one per
    distinct candidate, in ``cands`` order) followed by the ``x_tc`` (each candidate's members in turn)."""
    index = {t: i for i, t in enumerate(problem.tasks)}
    cands = list({c.group: c for c in problem.candidates}.values())  # the last entry of a group counts
    members = [(ci, index[t]) for ci, cand in enumerate(cands) for t in cand.group]
    C, E, n = len(cands), len(members), problem.n
    cost = np.zeros(C + E)
    cost[C:] = [-cands[ci].utility[problem.tasks[t]] for ci, t in members]
    e = np.arange(E)
    ci = np.array([m[0] for m in members], dtype=np.int64)
    ti = np.array([m[1] for m in members], dtype=np.int64)
    cover = coo_array((np.ones(E), (ti, C + e)), shape=(n, C + E))
    link = coo_array((np.r_[np.ones(E), -np.ones(E)], (np.r_[e, e], np.r_[C + e, ci])), shape=(E, C + E))
    constraints = [LinearConstraint(csr_array(cover), 1.0, 1.0), LinearConstraint(csr_array(link), -np.inf, 0.0)]
    if problem.k is not None:
        constraints.append(LinearConstraint(np.r_[np.ones(C), np.zeros(E)][None, :], -np.inf, float(problem.k)))
    if problem.budget is not None:
        row = np.r_[[c.cost for c in cands], np.zeros(E)][None, :]
        constraints.append(LinearConstraint(row, -np.inf, problem.budget + 1e-9))
    integrality = np.r_[np.ones(C), np.zeros(E)]
    return cands, cost, constraints, Bounds(0.0, 1.0), integrality


class SelectHighs(Solver):
    """Network selection over the listed candidates as a MILP solved by HiGHS (see the module docstring)."""

    name = "select_highs"
    version = "1"
    problems = ("select",)
    exact = True
    defaults = {"time_limit": 600.0}
    profile_defaults = {"smoke": {"time_limit": 30.0}}
    test_parameters = {"time_limit": 30.0}

    def _solve(self, problem: SelectProblem, seed: int) -> Raw:
        time_limit = check_time_limit(self.time_limit, self.name)
        cands, cost, constraints, bounds, integrality = select_model(problem)
        res = milp_zero_gap(cost, constraints, bounds, integrality, time_limit, self.name, problem.infeasible)
        chosen = [i for i in range(len(cands)) if res.x[i] > 0.5]
        best: dict[str, tuple[float, int]] = {}
        for rank, i in enumerate(chosen):  # each task's best chosen candidate (first in list order on ties)
            for t in cands[i].group:
                u = cands[i].utility[t]
                if t not in best or u > best[t][0]:
                    best[t] = (u, rank)
        serving = sorted({rank for _, rank in best.values()})
        info = {"backend": "highs", "candidates": len(cands), "variables": len(cost),
                "model_objective": float(-res.fun), "nodes": int(getattr(res, "mip_node_count", 0) or 0)}
        bound = getattr(res, "mip_dual_bound", None)
        if bound is not None and math.isfinite(bound):
            info["bound"] = float(-bound)
        return Raw([cands[chosen[r]].group for r in serving], "optimal" if res.status == 0 else "feasible", info)
