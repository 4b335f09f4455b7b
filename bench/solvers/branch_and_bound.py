"""Branch and bound for network selection as in HOA (Standley et al., ``network_selection/main.cpp``).

``get_best_networks(candidates, running, budget)``: keep the candidates that fit the remaining budget and improve
at least one task over the running per-task best (the dominance filter), sort them by their largest single-task
improvement, then pop them from the largest improvement down: add one, recurse on the candidates not yet popped,
remove it, keep the better result. Every combination is enumerated up to this filter, so the answer is exact and
the cost grows steeply with the number of tasks and groups (transfer-gain-mip Table 6 "BB"). TAG and
transfer-gain-mip's "Ours-BB" use the same search.

Departures, for the harness's problem definition: the number of groups ``k`` is a second budget (HOA has only
the cost budget); a solution must cover every task (HOA scores uncovered tasks with a sentinel loss of 99); and a
``time_limit`` (seconds) stops the search with the best selection found, reported as ``feasible`` (not proved).
"""

from __future__ import annotations

import math
import time

import numpy as np

from bench.errors import BenchError
from bench.solvers.base import Raw, SelectProblem, Solver


class SolverTimeout(BenchError):
    """A solver ran out of time before finding any valid grouping."""


class BranchAndBound(Solver):
    name = "branch_and_bound"
    problems = ("select",)
    exact = True
    defaults = {"time_limit": None}
    parameters = {"time_limit": [None, 10.0]}
    test_parameters = {"time_limit": 30.0}

    def _solve(self, problem: SelectProblem, seed: int) -> Raw:
        n = problem.n
        index = {t: i for i, t in enumerate(problem.tasks)}
        perf = np.full((len(problem.candidates), n), -np.inf)
        for c, cand in enumerate(problem.candidates):
            for t in cand.group:
                perf[c, index[t]] = cand.utility[t]
        cost = np.array([cand.cost for cand in problem.candidates])
        deadline = math.inf if self.time_limit is None else time.perf_counter() + float(self.time_limit)
        budget = math.inf if problem.budget is None else problem.budget + 1e-9
        best = {"value": -math.inf, "chosen": None}
        nodes = 0
        timed_out = False

        def search(pool: list[int], running: np.ndarray, budget_left: float, groups_left: int, chosen: list[int]):
            nonlocal nodes, timed_out
            nodes += 1
            if nodes % 1024 == 0 and time.perf_counter() > deadline:
                timed_out = True
            if timed_out:
                return
            if np.all(np.isfinite(running)):
                value = float(running.sum())
                if value > best["value"] + 1e-12:
                    best["value"], best["chosen"] = value, list(chosen)
            if groups_left == 0 or not pool:
                return
            idx = np.array(pool)
            with np.errstate(invalid="ignore"):  # -inf - -inf: a task neither covers
                gain = perf[idx] - running
            improves = (gain > 0).any(axis=1) & (cost[idx] <= budget_left)
            idx, gain = idx[improves], gain[improves]
            if not len(idx):
                return
            order = np.argsort(gain.max(axis=1), kind="stable")
            remaining = list(idx[order])
            while remaining:
                c = remaining.pop()
                chosen.append(c)
                search(remaining.copy(), np.maximum(running, perf[c]), budget_left - cost[c], groups_left - 1, chosen)
                chosen.pop()
                if timed_out:
                    return

        search(list(range(len(problem.candidates))), np.full(n, -np.inf), budget, problem.max_groups, [])
        if best["chosen"] is None:
            if timed_out:
                raise SolverTimeout(f"solver '{self.id}' found no covering selection within {self.time_limit} s")
            raise problem.infeasible()
        status = "feasible" if timed_out else "optimal"
        return Raw([problem.candidates[c].group for c in best["chosen"]], status, {"nodes": nodes})
