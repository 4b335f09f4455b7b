"""Conformance tests generated from the registry: every dataset, method and baseline gets the same checks.

A plugin added as one file is picked up here without edits.
"""

from __future__ import annotations

import pickle

import pytest

from bench import registry
from bench.dataset import PROFILES
from bench.errors import UsageError
from bench.runner import Cell, Settings, run_cell

DATASETS = sorted(registry.components("dataset"))
METHODS = sorted({**registry.components("method"), **registry.components("baseline")})


def _configured(kinds, name):
    cls = registry.create(kinds, name).__class__
    return cls(**cls.test_parameters)


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


@pytest.mark.parametrize("name", DATASETS)
class TestDataset:
    def test_declares_every_profile_and_a_docstring(self, name):
        cls = registry.components("dataset")[name]
        assert set(PROFILES) <= set(cls.profiles)
        assert (cls.__doc__ or "").strip() or (pickle.__doc__ and cls.__module__)

    def test_id_round_trip_and_pickle(self, name):
        dataset = _configured("dataset", name)
        assert registry.create("dataset", dataset.id) == dataset
        assert pickle.loads(pickle.dumps(dataset)) == dataset

    def test_smoke_problem_is_valid_and_deterministic(self, name):
        problem = _configured("dataset", name).load("smoke")
        assert problem.n_tasks >= 2 and problem.data in ("real", "synthetic")
        group = problem.task_names[:2]
        first, second = problem.train(group, seed=0), problem.train(group, seed=0)
        assert set(first.val) == set(first.test) == set(group)
        assert dict(first.val) == dict(second.val) and dict(first.test) == dict(second.test)

    def test_clear_errors(self, name):
        dataset = _configured("dataset", name)
        with pytest.raises(UsageError, match="profile"):
            dataset.load("huge")
        problem = dataset.load("smoke")
        with pytest.raises(UsageError, match="unknown tasks"):
            problem.train(("no_such_task",), seed=0)
        with pytest.raises(UsageError):
            registry.create("dataset", f"{name}[no_such_parameter=1]")


@pytest.mark.parametrize("name", METHODS)
class TestMethod:
    def test_id_round_trip_and_pickle(self, name):
        method = _configured(("method", "baseline"), name)
        assert registry.create_method(method.id) == method
        assert pickle.loads(pickle.dumps(method)) == method
        assert method.semantics in ("select", "partition")

    def test_runs_on_a_small_problem_deterministically(self, name, tmp_path):
        method = _configured(("method", "baseline"), name)
        cell = Cell("synthetic[clusters=[2,2]]", method.id, 0, (2, 3))
        runs = []
        for attempt in range(2):
            settings = Settings(str(tmp_path / f"out{attempt}"), str(tmp_path / f"cache{attempt}"), profile="smoke")
            runs.append(run_cell(cell, settings))
        for records in runs:
            assert records and all(r["status"] == "ok" for r in records), records
        for a, b in zip(*runs):
            assert a["groups"] == b["groups"] and a["per_task"] == b["per_task"]
        for r in runs[0]:
            used = [t for g in r["groups"] for t in g]
            assert set(used) == set(r["tasks"])
            if r["n_groups"] is not None:
                assert len(r["groups"]) <= r["n_groups"]
            if r["semantics"] == "partition":
                assert len(used) == len(set(used))
            assert r["total"] == pytest.approx(sum(r["per_task"].values()))
