"""Selection semantics (bench.selection): scoring a grouping, plus the Taskonomy golden values of the Optimal
baseline (exact solvers are tested against exhaustive enumeration in tests/solvers/test_exact.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from conftest import requires_shared_data

from bench import registry
from bench.errors import DataNotFound, UsageError
from bench.method import Context
from bench.selection import candidates as make_candidates
from bench.selection import evaluate
from bench.solvers.base import SelectProblem
from bench.types import GroupResult, Grouping, Task

# ------------------------------------------------------------------------------------------------- evaluate


def _result(group, val, test):
    return GroupResult(group=tuple(group), seed=0, val=val, test=test)


TASKS = [Task("a"), Task("b"), Task("c")]  # mse: lower is better


def test_evaluate_serves_by_val_and_reports_test():
    results = {
        ("a",): _result(("a",), {"a": 1.0}, {"a": 1.0}),
        ("b",): _result(("b",), {"b": 2.0}, {"b": 2.0}),
        ("c",): _result(("c",), {"c": 3.0}, {"c": 3.0}),
        ("a", "b"): _result(("a", "b"), {"a": 0.5, "b": 2.5}, {"a": 9.0, "b": 0.1}),
    }
    grouping = Grouping.of([("a", "b"), ("a",), ("b",), ("c",)], "select")
    ev = evaluate(grouping, results, TASKS)
    # a: val 0.5 in a+b beats 1.0 alone -> reports a+b's test 9.0 (even though alone is better on test)
    assert ev.served_by == {"a": ("a", "b"), "b": ("b",), "c": ("c",)}
    assert ev.per_task == {"a": 9.0, "b": 2.0, "c": 3.0}
    assert ev.per_task_val == {"a": 0.5, "b": 2.0, "c": 3.0}
    assert ev.total == pytest.approx(14.0)
    oracle = evaluate(grouping, results, TASKS, serve_by="test")
    assert oracle.served_by == {"a": ("a",), "b": ("a", "b"), "c": ("c",)}
    assert oracle.total == pytest.approx(1.0 + 0.1 + 3.0)


def test_evaluate_reports_extra_metrics_of_the_serving_group():
    tasks = [Task("a", extra_metrics=("auc",)), Task("b", extra_metrics=("auc",))]
    results = {
        ("a",): GroupResult(("a",), 0, {"a": 1.0}, {"a": 1.0}, extra={"test": {"auc": {"a": 60.0}}}),
        ("b",): GroupResult(("b",), 0, {"b": 1.0}, {"b": 1.0}, extra={"test": {"auc": {"b": math.nan}}}),
        ("a", "b"): GroupResult(("a", "b"), 0, {"a": 0.5, "b": 2.0}, {"a": 0.7, "b": 2.0},
                                extra={"test": {"auc": {"a": 80.0, "b": 70.0}}}),
    }
    ev = evaluate(Grouping.of([("a", "b"), ("b",)], "select"), results, tasks)
    # a is served by a+b (val 0.5), b alone (val 1.0 < 2.0), whose AUC is undefined (one class): None
    assert ev.extra == {"auc": {"a": 80.0, "b": None}}
    assert evaluate(Grouping.of([("a", "b")], "select"), results, TASKS[:2]).extra == {}


def test_evaluate_higher_is_better():
    tasks = [Task("a", kind="gain", metric="gain", higher_is_better=True)]
    results = {("a",): _result(("a",), {"a": 0.0}, {"a": 0.0})}
    grouping = Grouping.of([("a",)])
    assert evaluate(grouping, results, tasks).total == 0.0
    tasks2 = [Task("a", kind="gain", metric="gain", higher_is_better=True), Task("b", kind="gain", metric="gain",
                                                                                 higher_is_better=True)]
    results = {
        ("a",): _result(("a",), {"a": 0.0}, {"a": 0.0}),
        ("b",): _result(("b",), {"b": 0.0}, {"b": 0.0}),
        ("a", "b"): _result(("a", "b"), {"a": 0.2, "b": -0.1}, {"a": 0.3, "b": -0.2}),
    }
    ev = evaluate(Grouping.of([("a",), ("b",), ("a", "b")]), results, tasks2)
    assert ev.served_by == {"a": ("a", "b"), "b": ("b",)} and ev.total == pytest.approx(0.3)


def test_evaluate_ties_are_deterministic():
    results = {
        ("a", "b"): _result(("a", "b"), {"a": 1.0, "b": 1.0}, {"a": 5.0, "b": 5.0}),
        ("a", "c"): _result(("a", "c"), {"a": 1.0, "c": 1.0}, {"a": 7.0, "c": 7.0}),
        ("a", "b", "c"): _result(("a", "b", "c"), {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 3.0, "b": 3.0, "c": 3.0}),
    }
    outcomes = set()
    for order in itertools.permutations(results):
        ev = evaluate(Grouping.of(order), results, TASKS)
        outcomes.add(tuple(sorted(ev.served_by.items())))
        # the first group in canonical order (by size, then name) wins a tie
        assert ev.served_by == {"a": ("a", "b"), "b": ("a", "b"), "c": ("a", "c")}
        assert ev.total == pytest.approx(5.0 + 5.0 + 7.0)
    assert len(outcomes) == 1


def test_evaluate_validates_the_grouping():
    results = {
        ("a", "b"): _result(("a", "b"), {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}),
        ("b", "c"): _result(("b", "c"), {"b": 1.0, "c": 1.0}, {"b": 1.0, "c": 1.0}),
        ("a",): _result(("a",), {"a": 1.0}, {"a": 1.0}),
    }
    overlapping = Grouping.of([("a", "b"), ("b", "c")], "partition")
    with pytest.raises(ValueError, match="must not repeat"):
        evaluate(overlapping, results, TASKS)
    # the same groups are fine under select semantics
    assert evaluate(Grouping.of([("a", "b"), ("b", "c")], "select"), results, TASKS).total == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"uncovered"):
        evaluate(Grouping.of([("a", "b")], "partition"), results, TASKS)
    with pytest.raises(ValueError, match=r"unknown tasks \['z'\]"):
        evaluate(Grouping.of([("a", "b"), ("c", "z")], "partition"), results, TASKS)
    with pytest.raises(UsageError, match="serve_by"):
        evaluate(Grouping.of([("a", "b"), ("b", "c")]), results, TASKS, serve_by="train")


def test_grouping_validate_max_groups():
    g = Grouping.of([("a",), ("b",), ("c",)], "partition")
    g.validate(["a", "b", "c"], max_groups=3)
    with pytest.raises(ValueError, match="at most 2"):
        g.validate(["a", "b", "c"], max_groups=2)


# -------------------------------------------------------------------------------------- Taskonomy golden test


@requires_shared_data
@pytest.mark.realdata
def test_taskonomy_optimal_golden(shared_data_root):
    """Exact network selection over Taskonomy's 31 published groups, selecting and serving on test gains.

    transfer-gain-mip Table 2 publishes the Optimal totals 0.694 (k=2), 0.888 (k=3) and 0.833 (k=4). The exact
    optimum agrees for k=2 and k=3 and is *better* than the published 0.833 for k=4 (0.9174), so this test pins
    the exact optimum, not the published k=4 value. k=1 is the single group of all tasks (0.17347).
    """
    try:
        problem = registry.create("dataset", "taskonomy").load("mini", shared_data_root)
    except DataNotFound as exc:  # the root exists but holds no Taskonomy table
        pytest.skip(f"Taskonomy table not available: {exc}")
    assert problem.data == "real" and problem.n_candidate_groups() == 31
    optimal = registry.create("baseline", "optimal")  # select_on=test by default
    ctx = Context(problem, seed=0, trainer=lambda group, seed: problem.train(group, seed))
    results = optimal.collect(ctx)
    assert len(results) == 31 and len(ctx.ledger) == 31
    expected = {
        1: (0.17347, [("d", "e", "k", "n", "s")]),
        2: (0.69376, [("k", "n"), ("d", "e", "k", "n", "s")]),
        3: (0.88818, [("k", "n"), ("n", "s"), ("d", "e", "n")]),
        4: (0.91742, [("d", "n"), ("k", "n"), ("n", "s"), ("d", "e", "n")]),
    }
    published = {2: 0.694, 3: 0.888, 4: 0.833}
    candidates = tuple(make_candidates(results, problem.tasks, "test"))
    exhaustive = registry.create("solver", "exhaustive")
    for k, (total, groups) in expected.items():
        grouping = optimal.solve(results, k, ctx)
        assert grouping.groups == tuple(groups), k
        ev = evaluate(grouping, results, problem.tasks, serve_by=optimal.serve_by)
        assert ev.total == pytest.approx(total, abs=1e-9), k
        reference = exhaustive.solve(SelectProblem(problem.task_names, candidates, k))
        assert reference.objective == pytest.approx(total, abs=1e-9) and reference.status == "optimal"
        if k in (2, 3):
            assert round(ev.total, 3) == published[k]
        if k in published:
            assert ev.total >= published[k] - 5e-4
    assert not math.isclose(expected[4][0], published[4], abs_tol=1e-2)  # documented disagreement, k=4


def test_evaluate_serves_by_the_methods_own_choice():
    """``serve_by="predicted"``: each task takes the test value of the group the method named for it
    (``Grouping.served``), whatever validation says; a serving group that is not chosen or lacks the task is an
    error, and so is asking for it without one."""
    results = {
        ("a",): _result(("a",), {"a": 1.0}, {"a": 1.0}),
        ("b", "c"): _result(("b", "c"), {"b": 2.0, "c": 3.0}, {"b": 2.0, "c": 3.0}),
        ("a", "b"): _result(("a", "b"), {"a": 0.5, "b": 2.5}, {"a": 9.0, "b": 0.1}),
    }
    served = {"a": ("a",), "b": ("a", "b"), "c": ("b", "c")}
    grouping = Grouping.of([("a", "b"), ("a",), ("b", "c")], "select", served)
    ev = evaluate(grouping, results, TASKS, serve_by="predicted")
    assert ev.served_by == served and ev.per_task == {"a": 1.0, "b": 0.1, "c": 3.0}
    assert evaluate(grouping, results, TASKS).served_by["a"] == ("a", "b")  # by validation
    with pytest.raises(ValueError, match=r"serving groups of tasks \['c'\]"):
        Grouping.of([("a", "b"), ("a",), ("b", "c")], "select", {**served, "c": ("a", "b")}).validate("abc")
    with pytest.raises(UsageError, match="needs the grouping's serving groups"):
        evaluate(Grouping.of([("a", "b"), ("b", "c")]), results, TASKS, serve_by="predicted")
