"""Ground-truth sweeps (bench.sweep, python -m bench sweep): groups, summary rows, resume from the cache."""

from __future__ import annotations

import csv
import math

import pytest

from bench.cli import main
from bench.dataset import Problem
from bench.errors import UsageError
from bench.sweep import run_sweep, summarize, sweep_groups
from bench.types import GroupResult, Task


class Additive(Problem):
    """Task ``t_i`` scores ``base_i - sum of partner bonuses`` on test and that minus 0.1 on validation."""

    def __init__(self, n=4):
        names = [f"t{i}" for i in range(n)]
        super().__init__([Task(t, metric="mse", extra_metrics=("auc",)) for t in names], "synthetic", {"n": n})
        self.calls = []

    def train(self, group, seed, callbacks=(), device="cpu"):
        group = self.check_group(group)
        self.calls.append(group)
        test = {t: 10.0 + int(t[1:]) - sum(0.5 * int(u[1:]) for u in group if u != t) for t in group}
        val = {t: v - 0.1 for t, v in test.items()}
        if ("t0", "t2") == group:  # validation prefers this pair for t0, test prefers (t0, t3)
            val["t0"] = 0.0
        auc = {t: 50.0 + len(group) for t in group}
        return GroupResult(group, seed, val, test, wall_time_s=0.01, extra={"test": {"auc": auc}})


def test_sweep_groups_sizes_and_errors():
    problem = Additive(4)
    groups = sweep_groups(problem, [1, 2, "n"])
    assert len(groups) == 4 + 6 + 1 and groups[-1] == ("t0", "t1", "t2", "t3")
    with pytest.raises(UsageError, match="outside 1..4"):
        sweep_groups(problem, [5])


def test_summary_rows_follow_their_definitions():
    problem = Additive(4)
    results = {g: problem.train(g, 0) for g in sweep_groups(problem, [1, 2, "n"])}
    rows = summarize(problem, results)

    def row(text):
        (found,) = [r for r in rows if text in r["row"]]
        return found

    assert row("STL")["total"] == sum(10.0 + i for i in range(4))
    pair_mean = sum(sum(10.0 + i - 0.5 * j for j in range(4) if j != i) / 3 for i in range(4))
    assert math.isclose(row("all pairs")["total"], pair_mean)
    # t0: validation picks (t0, t2) (test 9.0), the oracle picks (t0, t3) (test 8.5); the other tasks agree
    assert math.isclose(row("chosen on val")["total"] - row("oracle")["total"], 0.5)
    assert math.isclose(row("Simple MTL")["total"], sum(10.0 + i - 0.5 * (6 - i) for i in range(4)))
    assert row("STL")["mean_auc"] == 51.0 and row("Simple MTL")["mean_auc"] == 54.0


def test_run_sweep_writes_files_and_resumes_from_the_cache(tmp_path):
    problem = Additive(3)
    problem.cacheable = True
    paths = run_sweep(problem, "additive", [1, 2], 0, tmp_path / "cache", "cpu", tmp_path / "out")
    assert [p.name for p in paths] == ["groups.csv", "summary.csv", "summary.md", "records.jsonl"]
    with paths[0].open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 + 2 * 3
    pair = next(r for r in rows if r["group"] == "t0+t1" and r["task"] == "t0")
    assert math.isclose(float(pair["gain_test"]), (10.0 - 9.5) / 10.0)
    first_calls = len(problem.calls)
    run_sweep(problem, "additive", [1, 2], 0, tmp_path / "cache", "cpu", tmp_path / "out2")
    assert len(problem.calls) == first_calls  # everything came from the cache
    assert "6 groups" in (tmp_path / "out2" / "summary.md").read_text()


def test_cli_sweep_end_to_end_and_bad_sizes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    out = tmp_path / "out"
    code = main(["sweep", "--dataset", "synthetic[clusters=[2,1]]", "--sizes", "1,2,n", "--profile", "smoke",
                 "--cache", str(tmp_path / "c"), "--out", str(out)])
    assert code == 0
    text = (out / "summary.md").read_text()
    assert "STL (size 1)" in text and "all pairs" in text and "Simple MTL" in text
    assert main(["sweep", "--dataset", "synthetic", "--sizes", "9", "--profile", "smoke",
                 "--cache", str(tmp_path / "c"), "--out", str(out)]) == 2
    assert "outside 1..6" in capsys.readouterr().err


def test_perf_batched_reports_a_same_run_ratio_and_equal_results(tmp_path):
    out = tmp_path / "perf"
    assert main(["perf", "batched", "--datasets", "synthetic[clusters=[2,2]]", "--profile", "smoke", "--single", "2",
                 "--out", str(out)]) == 0
    with (out / "batched_speed.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["groups"] == "6" and row["single_groups"] == "2"
    assert float(row["speedup"]) > 0 and float(row["max_rel_diff_test"]) < 1e-4
    assert "bench perf batched" in (out / "batched_speed.md").read_text()


def test_sweep_records_compare_against_table1_with_auc_as_a_mean(tmp_path):
    """The sweep's records.jsonl feeds `bench compare`: totals sum over tasks, the AUC row is a mean over tasks."""
    from bench.compare import compare
    from bench.tables import aggregate, load_records

    problem = Additive(4)
    problem.cacheable = True
    run_sweep(problem, "additive", [1, 2, "n"], 0, tmp_path / "cache", "cpu", tmp_path / "out", profile="smoke")
    run_sweep(problem, "additive", [1, 2, "n"], 0, tmp_path / "cache", "cpu", tmp_path / "out", profile="smoke")
    records = load_records(tmp_path / "out")
    assert sorted(r["method"] for r in records) == ["naive_mtl", "pairwise_mean", "pairwise_optimal",
                                                    "pairwise_oracle", "stl"]  # the rerun replaced, not appended
    stl = next(r for r in records if r["method"] == "stl")
    assert stl["total"] == sum(10.0 + i for i in range(4)) and stl["extra_per_task"]["auc"]["t0"] == 51.0
    rows = {(r.method, r.metric): r for r in aggregate(records, extra_metrics=True)}
    assert rows[("naive_mtl", "auc")].total_mean == 4 * 54.0 and rows[("naive_mtl", "auc")].higher_is_better
    assert ("stl", "auc") not in {(r.method, r.metric) for r in aggregate(records)}
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "t1.csv").write_text(
        "# source: test\n# dataset: additive\n# metric: mse\n# higher_is_better: false\n# total: sum\n"
        "dataset,n_groups,method,label,total,metric,aggregate,unit,higher_is_better\n"
        "additive,,stl,STL,40,mse,sum,,\n"
        "additive,,naive_mtl,Simple MTL,50%,auc,mean,percent,true\n")
    compare(tmp_path / "out", ref)
    with (tmp_path / "out" / "compare" / "t1.csv").open() as fh:
        got = {(r["method"], r["metric"]): r for r in csv.DictReader(fh) if r["cell"] == "total"}
    assert math.isclose(float(got[("stl", "mse")]["ours_mean"]), 46.0)
    assert math.isclose(float(got[("naive_mtl", "auc")]["ours_mean"]), 54.0)  # 4 x 54 / 4 tasks
    assert math.isclose(float(got[("naive_mtl", "auc")]["diff"]), 4.0)
    # a further metric is listed only beside a published row: no "ours only" AUC sum for the oracle pairs
    text = (tmp_path / "out" / "compare" / "t1.md").read_text()
    oracle = [line for line in text.splitlines() if "pairwise_oracle" in line]
    assert oracle and not any("auc" in line for line in oracle) and "metric mismatch" not in text
