"""Exact solvers against exhaustive enumeration, on many random small instances of every problem and constraint
combination (network selection with k / costs and budget / size bounds; partitions from a matrix or a table of
allowed groups with size bounds; the MIQP with and without budgets, size bounds and the partition variant)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench import registry
from bench.errors import UsageError
from bench.solvers.base import (
    Candidate,
    Infeasible,
    MIQPProblem,
    PairwiseScore,
    PartitionProblem,
    SelectProblem,
    TableScore,
)

EXHAUSTIVE = registry.create("solver", "exhaustive")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_value = st.one_of(st.integers(-3, 3).map(float), st.floats(-2, 2, allow_nan=False, width=32).map(float))


def _all_groups(tasks):
    return [tuple(c) for r in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, r)]


def _outcome(solver, problem):
    """``("ok", objective)`` or ``("infeasible", None)``."""
    try:
        sol = solver.solve(problem)
    except Infeasible:
        return "infeasible", None
    assert sol.status == "optimal"
    problem.check(sol.groups)
    assert sol.objective == pytest.approx(problem.objective(sol.groups))
    return "ok", sol.objective


def _same(problem, *solvers):
    ref_kind, ref = _outcome(EXHAUSTIVE, problem)
    for solver in solvers:
        kind, value = _outcome(solver, problem)
        assert kind == ref_kind, (solver.id, kind, ref_kind)
        if ref is not None:
            assert value == pytest.approx(ref, abs=1e-7), solver.id


@st.composite
def select_problems(draw):
    n = draw(st.integers(1, 6))
    tasks = [f"t{i}" for i in range(n)]
    multi = [g for g in _all_groups(tasks) if len(g) > 1]
    extra = draw(st.lists(st.sampled_from(multi), unique=True, max_size=min(len(multi), 10))) if multi else []
    costs = draw(st.sampled_from([None, (1.0,), (0.5, 1.0), (0.5, 1.0, 1.5)]))
    cands = []
    for g in [(t,) for t in tasks] + extra:
        cost = draw(st.sampled_from(costs)) if costs else 1.0
        cands.append(Candidate(g, {t: draw(_value) for t in g}, cost))
    k = draw(st.one_of(st.none(), st.integers(1, 4))) if costs else draw(st.integers(1, 4))
    budget = draw(st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.5])) if costs or k is None else None
    lo = draw(st.integers(1, 2))
    hi = draw(st.integers(lo, max(lo, n)))
    try:
        return SelectProblem(tuple(tasks), tuple(cands), k, budget, lo, hi)
    except UsageError:
        assume(False)


@SETTINGS
@given(select_problems())
def test_select_dp_branch_and_bound_and_milp_match_exhaustive(problem):
    _same(problem, registry.create("solver", "dp"), registry.create("solver", "branch_and_bound"),
          registry.create("solver", "select_highs"))


@pytest.mark.parametrize("seed", range(4))
def test_select_milp_beyond_dp_matches_branch_and_bound(seed):
    """20 tasks (more than ``dp`` enumerates), a listed pool as in a partial gain table: every singleton, 40 pairs,
    20 random larger groups and the all-task group, some with half cost; the MILP equals HOA's exhaustive branch
    and bound."""
    gen = np.random.default_rng(seed)
    tasks = tuple(f"t{i:02d}" for i in range(20))
    pairs = list(itertools.combinations(tasks, 2))
    groups = [(t,) for t in tasks] + [pairs[i] for i in gen.choice(len(pairs), 40, replace=False)]
    groups += [tuple(sorted(gen.choice(tasks, int(gen.integers(3, 12)), replace=False))) for _ in range(20)]
    groups.append(tasks)
    cands = tuple(Candidate(g, {t: float(gen.normal()) + 0.3 * len(g) for t in g},
                            0.5 if len(g) > 1 and gen.random() < 0.2 else 1.0) for g in groups)
    for k, budget in ((2, None), (3, None), (3, 2.5)):
        problem = SelectProblem(tasks, cands, k, budget)
        milp_sol = registry.create("solver", "select_highs").solve(problem)
        bb = registry.create("solver", "branch_and_bound").solve(problem)
        assert milp_sol.status == bb.status == "optimal"
        assert milp_sol.objective == pytest.approx(bb.objective, abs=1e-7)
        assert len(milp_sol.groups) <= k


@st.composite
def partition_problems(draw):
    n = draw(st.integers(1, 7))
    tasks = tuple(f"t{i}" for i in range(n))
    if draw(st.booleans()):
        S = np.array(draw(st.lists(_value, min_size=n * n, max_size=n * n))).reshape(n, n)
        score = PairwiseScore(S, tasks)
    else:
        groups = draw(st.lists(st.sampled_from(_all_groups(tasks)), unique=True, min_size=1, max_size=25))
        score = TableScore({g: draw(_value) for g in groups}, tasks)
    k = draw(st.integers(1, n))
    lo = draw(st.integers(1, 2))
    hi = draw(st.integers(lo, max(lo, n)))
    try:
        return PartitionProblem(tasks, k, score, lo, hi)
    except UsageError:
        assume(False)


@SETTINGS
@given(partition_problems())
def test_partition_dp_matches_exhaustive(problem):
    _same(problem, registry.create("solver", "dp"))


@st.composite
def miqp_problems(draw, max_n=5):
    n = draw(st.integers(1, max_n))
    tasks = tuple(f"t{i}" for i in range(n))
    S = np.array(draw(st.lists(_value, min_size=n * n, max_size=n * n))).reshape(n, n)
    partition = draw(st.booleans())
    m = draw(st.integers(1, min(4, n if partition else (1 << n) - 1)))
    B = b = None
    if draw(st.booleans()):
        B = np.array(draw(st.lists(st.integers(1, 5), min_size=n * m, max_size=n * m)), dtype=float).reshape(n, m)
        b = np.array(draw(st.lists(st.integers(2, 12), min_size=m, max_size=m)), dtype=float)
    lo = draw(st.lists(st.integers(1, 2), min_size=m, max_size=m)) if draw(st.booleans()) else 1
    hi = draw(st.one_of(st.none(), st.integers(2, max(2, n))))
    try:
        return MIQPProblem(tasks, S, m, B, b, lo, hi, partition)
    except UsageError:
        assume(False)


@SETTINGS
@given(miqp_problems())
def test_miqp_dp_matches_exhaustive(problem):
    _same(problem, registry.create("solver", "dp"))


def test_select_prefers_overlap_when_it_pays():
    tasks = ("a", "b", "c")
    cands = (
        Candidate(("a",), {"a": 0.0}), Candidate(("b",), {"b": 0.0}), Candidate(("c",), {"c": 0.0}),
        Candidate(("a", "b"), {"a": 1.0, "b": 0.1}),
        Candidate(("b", "c"), {"b": 1.0, "c": 1.0}),
        Candidate(("a", "b", "c"), {"a": 0.5, "b": 0.5, "c": 0.5}),
    )
    dp = registry.create("solver", "dp")
    sol = dp.solve(SelectProblem(tasks, cands, 2))
    assert sol.groups == (("a", "b"), ("b", "c")) and sol.objective == pytest.approx(3.0)
    assert sol.grouping.semantics == "select"
    sol = dp.solve(SelectProblem(tasks, cands, 1))
    assert sol.groups == (("a", "b", "c"),) and sol.objective == pytest.approx(1.5)


def test_hoa_half_size_networks_under_a_budget():
    """HOA: single-task half-size networks cost 0.5, full networks 1; budget in units of one full network."""
    tasks = ("a", "b", "c")
    half = tuple(Candidate((t,), {t: 1.0}, 0.5) for t in tasks)
    pair = Candidate(("a", "b"), {"a": 2.0, "b": 2.0}, 1.0)
    full = Candidate(tasks, {"a": 1.5, "b": 1.5, "c": 1.5}, 1.0)
    problem = SelectProblem(tasks, half + (pair, full), None, 1.5)
    for name in ("dp", "branch_and_bound", "exhaustive"):
        sol = registry.create("solver", name).solve(problem)
        assert set(sol.groups) == {("a", "b"), ("c",)} and sol.objective == pytest.approx(5.0), name
    with pytest.raises(Infeasible, match="budget"):
        registry.create("solver", "dp").solve(SelectProblem(tasks, half, None, 1.0))


def test_value_never_decreases_with_k():
    rng = np.random.default_rng(3)
    tasks = tuple(f"t{i}" for i in range(7))
    score = PairwiseScore(rng.normal(size=(7, 7)), tasks)
    cands = score.candidates()
    values = [registry.create("solver", "dp").solve(SelectProblem(tasks, cands, k)).objective for k in range(1, 8)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    best = sum(max(c.utility[t] for c in cands if t in c.group) for t in tasks)
    assert values[-1] == pytest.approx(best)


def test_dp_handles_sixteen_tasks():
    tasks = tuple(f"t{i:02d}" for i in range(16))
    S = np.kron(np.eye(4), np.ones((4, 4))) - 0.5  # four planted blocks of four
    sol = registry.create("solver", "dp").solve(PartitionProblem(tasks, 4, PairwiseScore(S, tasks)))
    assert sorted(sol.groups) == [tasks[i:i + 4] for i in range(0, 16, 4)]
    with pytest.raises(Exception, match="limited to 16 tasks"):
        registry.create("solver", "dp").solve(PartitionProblem(tasks + ("x",), 2, PairwiseScore(
            np.zeros((17, 17)), tasks + ("x",))))


def test_branch_and_bound_time_limit_reports_feasible():
    rng = np.random.default_rng(0)
    tasks = tuple(f"t{i}" for i in range(9))
    score = PairwiseScore(rng.normal(size=(9, 9)), tasks)
    cands = score.candidates()
    sol = registry.create("solver", "branch_and_bound[time_limit=0.2]").solve(SelectProblem(tasks, cands, 4))
    assert sol.status == "feasible"
    exact = registry.create("solver", "dp").solve(SelectProblem(tasks, cands, 4))
    assert sol.objective <= exact.objective + 1e-9


def test_solver_refuses_other_problems():
    tasks = ("a", "b")
    problem = PartitionProblem(tasks, 1, PairwiseScore(np.zeros((2, 2)), tasks))
    with pytest.raises(UsageError, match="solves select problems, not partition"):
        registry.create("solver", "branch_and_bound").solve(problem)


def test_select_milp_counts_a_group_listed_twice_by_its_last_entry():
    tasks = ("a", "b", "c")
    cands = (Candidate(("a",), {"a": 0.0}), Candidate(("b",), {"b": 0.0}), Candidate(("c",), {"c": 0.0}),
             Candidate(("a", "b"), {"a": 5.0, "b": 5.0}), Candidate(("b", "c"), {"b": 1.0, "c": 1.0}),
             Candidate(("a", "b"), {"a": -1.0, "b": -1.0}))
    problem = SelectProblem(tasks, cands, 2)
    milp_sol = registry.create("solver", "select_highs").solve(problem)
    assert milp_sol.objective == pytest.approx(EXHAUSTIVE.solve(problem).objective) == pytest.approx(2.0)
    assert milp_sol.groups == (("a",), ("b", "c"))
