"""Published gain tables that list some groups only (MIMIC-III: 3,185 of the 2^27 - 1 groups of 27 tasks): every
method that draws or enumerates groups draws them from the listed ones, and exact network selection runs over
them for any number of tasks."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from bench import registry
from bench.predictors.base import random_groups
from bench.runner import Cell, Settings, load_problem, run_cell
from bench.selection import candidates
from bench.solvers.base import SelectProblem

PARTIAL = '''
"""A 9-task gain table listing its singletons, pairs, the all-task group and 12 groups of 3 to 6 tasks."""
from bench.tabulated import GainTableDataset


class PartialTab(GainTableDataset):
    name = "partial_tab"
    folder = "none"
    mask_file = test_file = "none.csv"
    task_names = tuple(f"p{i}" for i in range(9))
    stand_in_clusters = (3, 3, 3)
    stand_in_listed = (12, 3, 6)
'''


@pytest.fixture()
def partial(tmp_path, monkeypatch):
    root = tmp_path / "plugins"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "partial_tab.py").write_text(textwrap.dedent(PARTIAL))
    wide = PARTIAL.replace("partial_tab", "partial_tab18").replace("range(9)", "range(18)").replace("(3, 3, 3)",
                                                                                                  "(6, 6, 6)")
    (root / "datasets" / "partial_tab18.py").write_text(textwrap.dedent(wide))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(root))
    registry.reload()
    yield load_problem("partial_tab", "smoke", None)
    monkeypatch.delenv("BENCH_PLUGIN_PATH")
    registry.reload()


def test_the_mimic_stand_in_lists_what_the_published_table_lists():
    problem = load_problem("mimic27_tab", "smoke", None)
    listed = problem.listed_groups()
    sizes = [len(g) for g in listed]
    assert len(listed) == len(set(listed)) == problem.n_candidate_groups() == 3185
    assert sizes.count(1) == 27 and sizes.count(2) == 351 and sizes.count(27) == 1
    assert all(6 <= s <= 22 for s in sizes if s not in (1, 2, 27))
    assert load_problem("taskonomy", "smoke", None).listed_groups() is None
    assert load_problem("synthetic", "smoke", None).listed_groups() is None


def test_random_groups_from_a_listed_pool_are_listed_distinct_and_prefix_stable():
    tasks = tuple("abcdef")
    listed = [("a",), ("a", "b"), ("c", "d"), ("a", "b", "c"), ("b", "d", "e", "f"), ("a", "c", "e"), tuple(tasks)]
    drawn = random_groups(tasks, 10, np.random.default_rng(3), min_size=2, max_size=4, exclude=[("c", "d")],
                          listed=listed)
    assert sorted(drawn) == [("a", "b"), ("a", "b", "c"), ("a", "c", "e"), ("b", "d", "e", "f")]
    assert random_groups(tasks, 2, np.random.default_rng(3), min_size=2, max_size=4, exclude=[("c", "d")],
                         listed=listed) == drawn[:2]


@pytest.mark.parametrize("method", ["optimal[solver=select_highs,select_on=val]", "hoa[solver=select_highs]",
                                    "mtg_net[predictor=mtg_net[hidden=8,layers=1,max_epochs=15]]",
                                    "surrogate[selection=network,solver=dp]"])
def test_methods_on_a_partial_table_measure_and_choose_listed_groups_only(partial, tmp_path, method):
    """Training groups (the surrogate's draws, HOA's pairs, MTG-Net's active pool) and the chosen groups are all
    listed: a lookup of any other group would make the run a skip."""
    listed = set(partial.listed_groups())
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    records = run_cell(Cell("partial_tab", method, 0, (2, 3)), settings)
    assert [r["status"] for r in records] == ["ok", "ok"], records
    for record in records:
        assert {tuple(g) for g in record["groups"]} <= listed
    assert records[0]["n_trainings"] > 0


def test_random_partitions_are_skipped_with_the_reason(partial, tmp_path):
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    records = run_cell(Cell("partial_tab", "random", 0, (3,)), settings)
    assert {r["status"] for r in records} == {"skipped"}
    assert "is not in the published table" in records[0]["reason"]


def test_optimal_on_a_table_is_not_limited_by_max_trainings_and_is_exact_beyond_16_tasks(partial, tmp_path):
    """A table's lookups are not trainings; on 18 tasks the default exact solver is select_highs (dp enumerates at
    most 16), and its optimum equals exhaustive enumeration over the listed groups."""
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    (record,) = run_cell(Cell("partial_tab18", "optimal[max_trainings=10]", 0, (2,)), settings)
    assert record["status"] == "ok", record
    assert record["solved_by"] == [["select_highs[time_limit=30.0]", "optimal"]]
    problem = load_problem("partial_tab18", "smoke", None)
    results = {g: problem.train(g, 0) for g in problem.listed_groups()}
    select = SelectProblem(problem.task_names, tuple(candidates(results, problem.tasks, "test")), 2)
    best = registry.create("solver", "exhaustive").solve(select, 0)
    chosen = [tuple(g) for g in record["groups"]]
    assert select.objective(chosen) == pytest.approx(best.objective, abs=1e-9)
    # a dataset that trains its groups is limited
    (skipped,) = run_cell(Cell("synthetic[clusters=[2,2]]", "optimal[max_trainings=10]", 0, (2,)), settings)
    assert skipped["status"] == "skipped" and "max_trainings=10" in skipped["reason"]
