"""The Formulation 9 solvers (``miqp_highs``, ``miqp_gurobi``) against brute force over labelled groups.

transfer-gain-mip Appendix D's worked example (``n = 6``, ``m = 3``, budgets) is not optimal: its ``X*`` scores
2.3833, while the best grouping of Formulation 8 scores 3.05 (``{T2,T3,T4}, {T1,T2,T6}, {T4,T5}``; groups may
overlap) and the best of the partition variant 2.8333 (``{T5}, {T1,T2,T6}, {T3,T4}``), both within the budgets.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from conftest import APPENDIX_D_CAPACITY, APPENDIX_D_MEMORY, APPENDIX_D_S, APPENDIX_D_TASKS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import registry
from bench.errors import UsageError
from bench.solvers import miqp_gurobi
from bench.solvers.base import MIQPProblem
from bench.solvers.miqp_gurobi import MiqpGurobi
from bench.solvers.miqp_highs import MiqpHighs, gurobi_size, highs_size

SOLVERS = [MiqpHighs(), MiqpGurobi()]
TOL = 1e-5  # HiGHS stops within an absolute gap of 1e-6 of the model objective

PAPER_S = np.array(APPENDIX_D_S)  # eq. 11
PAPER_B = np.repeat(np.array(APPENDIX_D_MEMORY, dtype=float)[:, None], 3, axis=1)  # eq. 10
PAPER_b = np.array(APPENDIX_D_CAPACITY, dtype=float)
PAPER_TASKS = APPENDIX_D_TASKS
PAPER_X_STAR = [("T1", "T2", "T4"), ("T3", "T6"), ("T5",)]  # eq. 12


def brute_force(problem: MIQPProblem) -> tuple[float, list[int]] | None:
    """The best labelled tuple of distinct groups (bit masks) by enumeration, or ``None`` when there is none."""
    m, full = problem.m, (1 << problem.n) - 1
    groups = {mask: tuple(t for i, t in enumerate(problem.tasks) if mask >> i & 1) for mask in range(1, full + 1)}
    allowed = [[mask for mask, g in groups.items() if problem.fits(g, j)] for j in range(m)]
    value = {mask: problem.group_value(g) for mask, g in groups.items()}
    best: list = [-math.inf, None]

    def extend(chosen: list[int], cover: int, total: float) -> None:
        if len(chosen) == m:
            if cover == full and total > best[0]:
                best[:] = [total, list(chosen)]
            return
        for mask in allowed[len(chosen)]:
            if mask in chosen or (problem.partition and cover & mask):
                continue
            chosen.append(mask)
            extend(chosen, cover | mask, total + value[mask])
            chosen.pop()

    extend([], 0, 0.0)
    return None if best[1] is None else (best[0], best[1])


def paper_problem(partition: bool) -> MIQPProblem:
    return MIQPProblem(PAPER_TASKS, PAPER_S, 3, PAPER_B, PAPER_b, partition=partition)


# --------------------------------------------------------------------------------------------------------------
# (a) the worked example of Appendix D


@pytest.mark.parametrize("partition,optimum", [(False, 3.05), (True, 2.8333333333333335)])
def test_paper_example_is_not_optimal(partition, optimum):
    problem = paper_problem(partition)
    problem.check(PAPER_X_STAR)  # the paper's X* is feasible for both variants ...
    assert problem.objective(PAPER_X_STAR) == pytest.approx(2.383333333, abs=1e-6)
    best, _ = brute_force(problem)
    assert best == pytest.approx(optimum, abs=1e-12)  # ... but not optimal
    for solver in SOLVERS:
        sol = solver.solve(problem)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(optimum, abs=TOL)
        problem.check(sol.groups)


# --------------------------------------------------------------------------------------------------------------
# (b) random small instances against brute force


@st.composite
def miqp_problems(draw) -> MIQPProblem:
    n = draw(st.integers(2, 5))
    partition = draw(st.booleans())
    m = draw(st.integers(1, min(3, n) if partition else 3))
    S = np.array(draw(st.lists(st.integers(-8, 8), min_size=n * n, max_size=n * n)), dtype=float).reshape(n, n) / 4
    kwargs = {}
    if draw(st.booleans()):  # budgets
        B = draw(st.lists(st.integers(0, 4), min_size=n * m, max_size=n * m))
        kwargs["B"] = np.array(B, dtype=float).reshape(n, m)
        kwargs["b"] = np.array(draw(st.lists(st.integers(0, 10), min_size=m, max_size=m)), dtype=float)
    if draw(st.booleans()):  # per-group size bounds
        lo = draw(st.lists(st.integers(1, n), min_size=m, max_size=m))
        kwargs["min_size"] = lo
        kwargs["max_size"] = [draw(st.integers(a, n)) for a in lo]
    return MIQPProblem(tuple(f"t{i}" for i in range(n)), S, m, partition=partition, **kwargs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(miqp_problems())
def test_random_instances_match_brute_force(problem):
    expected = brute_force(problem)
    for solver in SOLVERS:
        if expected is None:
            with pytest.raises(UsageError, match="^infeasible:"):
                solver.solve(problem)
            continue
        sol = solver.solve(problem)
        problem.check(sol.groups)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(expected[0], abs=TOL), (solver.id, sol.groups)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.id)
def test_infeasible_constraints_raise_a_usage_error(solver):
    sizes = MIQPProblem(("a", "b", "c"), np.eye(3), 2, min_size=2, partition=True)  # 2 + 2 > 3 tasks
    budget = MIQPProblem(("a", "b"), np.eye(2), 1, B=np.array([[2.0], [2.0]]), b=np.array([3.0]))
    for problem in (sizes, budget):
        with pytest.raises(UsageError, match="^infeasible: no grouping"):
            solver.solve(problem)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.id)
def test_deterministic_and_model_sizes_as_counted(solver):
    S = np.random.default_rng(1).normal(size=(6, 6))
    problem = MIQPProblem(tuple("abcdef"), S, 4, max_size=4)
    first, second = solver.solve(problem), solver.solve(problem)
    assert first.groups == second.groups and first.objective == second.objective
    counted = gurobi_size(problem) if first.info["backend"] == "gurobi" else highs_size(problem)
    assert (first.info["variables"], first.info["constraints"]) == counted


def test_bad_parameters():
    problem = paper_problem(False)
    with pytest.raises(UsageError, match="time_limit"):
        MiqpHighs(time_limit=0.0).solve(problem)
    with pytest.raises(UsageError, match="threads"):
        MiqpGurobi(threads=-1).solve(problem)


# --------------------------------------------------------------------------------------------------------------
# (c) fallback from Gurobi to HiGHS, (d) Gurobi itself


def test_falls_back_to_highs_without_gurobipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "gurobipy", None)  # makes `import gurobipy` raise ImportError
    problem = paper_problem(False)
    sol = MiqpGurobi().solve(problem)
    ref = MiqpHighs().solve(problem)
    assert sol.info["backend"] == "highs" and sol.groups == ref.groups and sol.objective == ref.objective
    assert any("gurobipy is not installed" in note and "miqp_highs" in note for note in sol.notes)


def _over_quadratic_licence() -> MIQPProblem:
    # 14 tasks, 2 groups: 2 (14 + 1 + 91) = 212 variables, above the 200 a quadratic model may have
    S = np.random.default_rng(2).normal(size=(14, 14)) + 2 * np.eye(14)
    return MIQPProblem(tuple(f"t{i}" for i in range(14)), S, 2, partition=True)


def test_falls_back_to_highs_above_the_licence_limits():
    pytest.importorskip("gurobipy")  # without it the fallback is for that reason (test above)
    problem = _over_quadratic_licence()
    assert gurobi_size(problem)[0] > miqp_gurobi.LICENCE_QUADRATIC_VARIABLES
    sol = MiqpGurobi().solve(problem)
    assert sol.info["backend"] == "highs" and sol.status == "optimal"
    assert any(f"needs {gurobi_size(problem)[0]} variables" in note and "miqp_highs" in note for note in sol.notes)
    assert sol.objective == pytest.approx(MiqpHighs().solve(problem).objective, abs=TOL)


def test_gurobi_refusing_the_model_falls_back(monkeypatch):
    pytest.importorskip("gurobipy")
    monkeypatch.setattr(miqp_gurobi, "LICENCE_QUADRATIC_VARIABLES", 10**6)  # build it and let Gurobi refuse it
    sol = MiqpGurobi().solve(_over_quadratic_licence())
    if sol.info["backend"] == "gurobi":
        pytest.skip("this Gurobi licence is not size-limited")
    assert any("error 10010" in note for note in sol.notes)


def test_gurobi_solves_small_models_itself(capfd):
    pytest.importorskip("gurobipy")
    sol = MiqpGurobi().solve(paper_problem(True))
    assert sol.info["backend"] == "gurobi" and sol.notes == () and sol.status == "optimal"
    out, err = capfd.readouterr()
    assert out == err == ""  # no licence banner, no log


def test_regression_highs_presolve_wrong_optimum():
    """Found by the property test: with HiGHS's presolve on, the linearised model answered -0.25 as "optimal".

    Task t1 may only join group 1 (its budget in group 2 is 0), so the best is {t0, t1} and {t0}: -0.125.
    """
    problem = MIQPProblem(("t0", "t1"), np.array([[0.0, 0.0], [0.0, -0.25]]), 2,
                          np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([0.0, 0.0]))
    for solver in SOLVERS:
        sol = solver.solve(problem)
        assert sol.objective == pytest.approx(-0.125) and sol.status == "optimal", solver.id
    assert registry.create("solver", "dp").solve(problem).objective == pytest.approx(-0.125)
