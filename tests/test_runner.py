"""The runner: records, cache reuse, resume after a kill, concurrent runs, parallel jobs, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import registry
from bench.dataset import TrainedProblem
from bench.runner import Settings, load_problem, read_records, run_suite
from bench.selection import evaluate
from bench.types import Grouping

REPO = registry.PROJECT_ROOT
REQUIRED = {"dataset", "method", "n_groups", "seed", "groups", "per_task", "total", "data", "t_signal_s", "t_fit_s",
            "t_solve_s", "t_train_s", "provenance"}
SYN = "synthetic[clusters=[2,2]]"


def _settings(tmp_path, out="out", cache="cache"):
    return Settings(str(tmp_path / out), str(tmp_path / cache), profile="smoke")


def _by_key(records):
    return {(r["dataset"], r["method"], r["n_groups"], r["seed"]): r for r in records}


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


def test_records_have_the_promised_fields(tmp_path):
    summary = run_suite([SYN, "taskonomy"], ["stl", "naive_mtl", "random", "optimal"], [2, 3], [0],
                        _settings(tmp_path), show_progress=False)
    assert summary.failed == 0 and summary.ok == 12
    records = read_records(tmp_path / "out")
    for r in records:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["data"] == "synthetic"
        assert {"git_sha", "packages", "device", "host"} <= set(r["provenance"])
        # served_by: each task -> the position in groups of the group that serves it
        assert all(t in r["groups"][i] for t, i in r["served_by"].items())
    by = _by_key(records)
    assert by[(SYN, "stl", None, 0)]["groups"] == [["t0"], ["t1"], ["t2"], ["t3"]]
    assert by[(SYN, "optimal", 2, 0)]["n_trainings"] == 15  # 2^4 - 1 candidate groups
    assert by[(SYN, "random", 2, 0)]["n_trainings"] == 0
    # the oracle is at least as good as the planted clusters (a feasible selection), which beat STL and MTL
    problem = load_problem(SYN, "smoke", None)
    planted = Grouping.of(problem.planted_groups, "partition")
    results = {g: problem.train(g, 0) for g in planted.groups}
    planted_total = evaluate(planted, results, problem.tasks, serve_by="test").total
    assert by[(SYN, "optimal", 2, 0)]["total"] <= planted_total + 1e-9
    assert planted_total < by[(SYN, "stl", None, 0)]["total"]
    assert by[(SYN, "optimal", 2, 0)]["total"] < by[(SYN, "stl", None, 0)]["total"]
    assert by[(SYN, "optimal", 2, 0)]["total"] < by[(SYN, "naive_mtl", None, 0)]["total"]


def test_timings_count_cached_trainings_at_their_original_cost(tmp_path):
    run_suite([SYN], ["optimal"], [2], [0], _settings(tmp_path, "a"), show_progress=False)
    run_suite([SYN], ["optimal"], [2], [0], _settings(tmp_path, "b"), show_progress=False)
    first, second = read_records(tmp_path / "a")[0], read_records(tmp_path / "b")[0]
    assert second["cache_hits"] == first["cache_hits"] + 15  # every candidate is a hit the second time
    assert second["t_signal_s"] == pytest.approx(first["t_signal_s"], rel=0.5)
    assert second["wall_s"] < first["wall_s"]


def test_second_identical_run_trains_nothing(tmp_path, monkeypatch):
    methods = ["stl", "naive_mtl", "random", "optimal"]
    run_suite([SYN], methods, [2, 3], [0, 1], _settings(tmp_path, "a"), show_progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a group was trained although the cache holds it")

    monkeypatch.setattr(TrainedProblem, "train", refuse)
    summary = run_suite([SYN], methods, [2, 3], [0, 1], _settings(tmp_path, "b"), show_progress=False)
    assert summary.failed == 0 and summary.ok == 12
    a, b = _by_key(read_records(tmp_path / "a")), _by_key(read_records(tmp_path / "b"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["per_task"] == b[key]["per_task"] and a[key]["groups"] == b[key]["groups"]


def test_rerun_in_the_same_out_reuses_records(tmp_path):
    settings = _settings(tmp_path)
    run_suite([SYN], ["stl", "random"], [2], [0], settings, show_progress=False)
    summary = run_suite([SYN], ["stl", "random"], [2], [0, 1], settings, show_progress=False)
    assert summary.reused == 2 and summary.ok == 2
    assert len(read_records(tmp_path / "out")) == 4


def test_a_torn_last_line_is_dropped(tmp_path):
    settings = _settings(tmp_path)
    run_suite([SYN], ["stl"], [2], [0], settings, show_progress=False)
    with open(tmp_path / "out" / "records.jsonl", "a") as fh:
        fh.write('{"run_key": "abc", "status": "o')
    assert len(read_records(tmp_path / "out")) == 1
    run_suite([SYN], ["stl", "naive_mtl"], [2], [0], settings, show_progress=False)
    lines = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def _bench(args, tmp_path, **kwargs):
    env = {**os.environ, "BENCH_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    env.pop("BENCH_DATA_ROOT", None)
    return subprocess.Popen([sys.executable, "-m", "bench", "run", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


SUITE_ARGS = ["--datasets", "synthetic", "--methods", "stl,naive_mtl,random,optimal", "--splits", "2,3",
              "--seeds", "0,1,2", "--profile", "smoke"]


def test_resume_after_a_kill(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _bench([*SUITE_ARGS, "--out", str(out), "--cache", str(cache)], tmp_path)
    records = out / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_records(out))
    assert 4 <= done_before < 18, "the kill came too late to test resuming"
    resumed = _bench([*SUITE_ARGS, "--out", str(out), "--cache", str(cache)], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{done_before} reused" in err
    final = read_records(out)
    assert len(final) == 18 and len({r["run_key"] for r in final}) == 18
    assert all(r["status"] == "ok" for r in final)
    # the same numbers as an uninterrupted run
    fresh = _bench([*SUITE_ARGS, "--out", str(tmp_path / "fresh"), "--cache", str(tmp_path / "cache2")], tmp_path)
    _, err = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, err
    a, b = _by_key(final), _by_key(read_records(tmp_path / "fresh"))
    assert {k: v["per_task"] for k, v in a.items()} == {k: v["per_task"] for k, v in b.items()}


def test_concurrent_runs_share_a_cache(tmp_path):
    cache = tmp_path / "cache"
    procs = [_bench([*SUITE_ARGS, "--seeds", "0", "--out", str(tmp_path / f"out{i}"), "--cache", str(cache)],
                    tmp_path) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    a, b = (_by_key(read_records(tmp_path / f"out{i}")) for i in range(2))
    assert {k: v["per_task"] for k, v in a.items()} == {k: v["per_task"] for k, v in b.items()}
    entries = list(cache.glob("*/*.json"))
    assert len(entries) == 63  # every group of the 6-task problem once, no duplicates, no temp files
    assert not list(cache.glob("*/.tmp-*"))
    hits = sum(r["cache_hits"] for r in [*a.values(), *b.values()])
    assert hits > 63  # the second run read what the first trained (and vice versa)


def test_parallel_jobs_give_the_same_records(tmp_path):
    methods = ["stl", "naive_mtl", "random", "optimal"]
    run_suite([SYN], methods, [2], [0, 1], _settings(tmp_path, "seq", "c1"), show_progress=False)
    run_suite([SYN], methods, [2], [0, 1], _settings(tmp_path, "par", "c2"), jobs=2, show_progress=False)
    a, b = _by_key(read_records(tmp_path / "seq")), _by_key(read_records(tmp_path / "par"))
    assert {k: v["per_task"] for k, v in a.items()} == {k: v["per_task"] for k, v in b.items()}


FAILING = '''
"""A method that fails (test plugin)."""
from bench.errors import Unsupported
from bench.method import Method


class {cls}(Method):
    name = "{name}"

    def solve(self, model, n_groups, ctx):
        raise {exc}("{message}")
'''


@pytest.fixture
def extra_plugins(tmp_path, monkeypatch):
    root = tmp_path / "plugins"
    (root / "methods").mkdir(parents=True)
    (root / "methods" / "crashes.py").write_text(
        FAILING.format(cls="Crashes", name="crashes", exc="RuntimeError", message="boom"))
    (root / "methods" / "refuses.py").write_text(
        FAILING.format(cls="Refuses", name="refuses", exc="Unsupported", message="too large"))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(root))
    registry.reload()
    yield root
    monkeypatch.delenv("BENCH_PLUGIN_PATH")
    registry.reload()


def test_failures_are_recorded_and_retried_skips_are_not(tmp_path, extra_plugins):
    settings = _settings(tmp_path)
    summary = run_suite([SYN], ["stl", "crashes", "refuses"], [2, 3], [0], settings, show_progress=False)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 2, 2)
    assert summary.exit_code == 1
    by = _by_key(read_records(tmp_path / "out"))
    assert by[(SYN, "crashes", 2, 0)]["reason"] == "RuntimeError: boom"
    assert "Traceback" in by[(SYN, "crashes", 2, 0)]["traceback"]
    assert by[(SYN, "refuses", 3, 0)]["status"] == "skipped"
    again = run_suite([SYN], ["stl", "crashes", "refuses"], [2, 3], [0], settings, show_progress=False)
    assert again.reused == 3 and again.failed == 2  # failed runs are tried again, finished ones are not


def test_split_counts_above_the_number_of_tasks_are_skipped(tmp_path):
    run_suite([SYN], ["random"], [2, 5], [0], _settings(tmp_path), show_progress=False)
    by = _by_key(read_records(tmp_path / "out"))
    assert by[(SYN, "random", 5, 0)]["status"] == "skipped"
    assert "exceeds the 4 tasks" in by[(SYN, "random", 5, 0)]["reason"]


def test_readme_example_method_runs(tmp_path, monkeypatch):
    """The one-file method shown in the README works as printed."""
    text = (REPO / "README.md").read_text()
    code = text.split("# methods/pair_average.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "plugins" / "methods").mkdir(parents=True)
    (tmp_path / "plugins" / "methods" / "pair_average.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(tmp_path / "plugins"))
    registry.reload()
    try:
        summary = run_suite([SYN], ["pair_average"], [2], [0], _settings(tmp_path), show_progress=False)
    finally:
        monkeypatch.delenv("BENCH_PLUGIN_PATH")
        registry.reload()
    assert summary.ok == 1
    record = read_records(tmp_path / "out")[0]
    assert record["n_trainings"] == 10  # 4 singletons + 6 pairs


def test_paths_are_not_left_behind(tmp_path):
    run_suite([SYN], ["stl"], [2], [0], _settings(tmp_path), show_progress=False)
    assert sorted(p.name for p in Path(tmp_path / "out").iterdir()) == ["records.jsonl"]


def test_ci_runs_the_readme_test_command():
    """CI must run exactly the test set-up command the README gives a fresh machine."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("Run the tests:", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    command = block.split(". .venv/bin/activate && ", 1)[1]
    assert command.replace("pip install ", "pip install -q ") in ci


def test_records_carry_the_extra_metrics_of_the_serving_groups(tmp_path):
    """Landmine's stand-in: log-loss selects and totals, the AUC of each task's serving group rides along."""
    run_suite(["landmine"], ["stl", "naive_mtl"], [2], [0], _settings(tmp_path), show_progress=False)
    by = _by_key(read_records(tmp_path / "out"))
    stl, mtl = by[("landmine", "stl", None, 0)], by[("landmine", "naive_mtl", None, 0)]
    assert stl["metric"] == "logloss" and set(stl["extra_per_task"]) == {"auc"}
    problem = load_problem("landmine", "smoke", None)
    alone = problem.train(("f01",), 0)
    assert stl["extra_per_task"]["auc"]["f01"] == pytest.approx(alone.extra["test"]["auc"]["f01"])
    assert stl["per_task"]["f01"] == pytest.approx(alone.test["f01"])
    assert all(v is None or 0.0 <= v <= 100.0 for v in mtl["extra_per_task"]["auc"].values())


def test_records_name_the_parts_with_the_profiles_values(tmp_path):
    """mtg_net on the smoke profile runs the predictor's smoke budget, and the record says so."""
    run_suite(["taskonomy"], ["mtg_net", "tag_mp"], [2], [0], _settings(tmp_path), show_progress=False)
    by = _by_key(read_records(tmp_path / "out"))
    assert by[("taskonomy", "mtg_net", 2, 0)]["parts"] == {
        "predictor": "mtg_net[active_budget=4,max_epochs=100]", "solver": "beam"}
    assert by[("taskonomy", "tag_mp", 2, 0)]["status"] == "skipped"  # a lookup table has no training to observe
    mini = Settings(str(tmp_path / "mini"), str(tmp_path / "cache"), profile="mini")
    run_suite(["taskonomy"], ['mtg_net[predictor="mtg_net[active_budget=2]"]'], [2], [0], mini, show_progress=False)
    (record,) = read_records(tmp_path / "mini")
    assert record["parts"] == {"predictor": "mtg_net[active_budget=2]", "solver": "beam"}


def test_records_name_the_code_the_suite_started_with(tmp_path, monkeypatch):
    """A commit made while a suite runs does not reach its records: provenance is taken when the suite starts."""
    import bench.provenance
    import bench.runner

    state = {"sha": "at-start"}
    monkeypatch.setattr(bench.provenance, "_PINNED", {})  # restored afterwards, with the real provenance
    monkeypatch.setattr(bench.provenance, "_measure", lambda device: {"git_sha": state["sha"], "device": device})
    original = bench.runner.run_cell

    def commit_then_run(*args, **kwargs):
        state["sha"] = "committed-later"
        return original(*args, **kwargs)

    monkeypatch.setattr(bench.runner, "run_cell", commit_then_run)
    run_suite([SYN], ["stl", "naive_mtl"], [2], [0], _settings(tmp_path), show_progress=False)
    assert {r["provenance"]["git_sha"] for r in read_records(tmp_path / "out")} == {"at-start"}
