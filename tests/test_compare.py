"""Comparison with published numbers (bench.compare) and the transcribed reference of transfer-gain-mip Table 2."""

from __future__ import annotations

import csv
import json

import pytest

from bench.compare import DEFAULT_REFERENCE_DIR, compare, load_reference, load_references
from bench.errors import UsageError

TABLE2 = DEFAULT_REFERENCE_DIR / "transfer_gain_mip_table2_taskonomy.csv"
TASKS = ("s", "d", "n", "k", "e")


def record(method, n_groups, per_task, *, seed=0, kind="baseline", dataset="taskonomy", data="real",
           status="ok", **extra):
    rec = {
        "status": status, "dataset": dataset, "method": method, "kind": kind, "uses_splits": n_groups is not None,
        "n_groups": n_groups, "seed": seed, "profile": "mini", "data": data, "tasks": list(TASKS), "metric": "gain",
        "higher_is_better": True, "groups": [list(TASKS)], "per_task": per_task, "total": sum(per_task.values()),
        "t_signal_s": 0.0, "t_fit_s": 0.0, "t_solve_s": 0.0, "t_train_s": 0.0, "n_trainings": 0,
    }
    rec.update(extra)
    return rec


def gains(total, **cells):
    """Per-task gains summing to ``total`` (the remainder goes to task ``e``)."""
    values = {t: cells.get(t, 0.0) for t in TASKS}
    values["e"] = total - sum(v for t, v in values.items() if t != "e")
    return values


def write(tmp_path, records):
    with open(tmp_path / "records.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return tmp_path


def long_rows(tmp_path):
    with open(tmp_path / "compare" / "transfer_gain_mip_table2_taskonomy.csv") as f:
        return list(csv.DictReader(f))


def cell(rows, method, n_groups, name):
    (match,) = [r for r in rows if r["method"] == method and r["n_groups"] == n_groups and r["cell"] == name]
    return match


def test_table2_reference_parses():
    ref = load_reference(TABLE2)
    assert ref.tasks == TASKS
    assert ref.metadata["dataset"] == "taskonomy" and ref.metadata["metric"] == "gain"
    assert ref.higher_is_better and "transfer-gain-mip" in ref.metadata["source"]
    # 2 split-independent rows + 3 blocks (2, 3, 4 groups) x 7 rows (Random, Optimal, CS, HOA, TAG, MTG, Ours)
    assert len(ref.rows) == 23
    assert [r.n_groups for r in ref.rows] == [None] * 2 + [2] * 7 + [3] * 7 + [4] * 7
    assert [r.method for r in ref.rows[2:9]] == ["random", "optimal", "cs", "hoa", "tag", "mtg_net",
                                                 "transfer_gain_mip"]
    assert len({r.key for r in ref.rows}) == 23
    totals = {(r.method, r.n_groups): r.cells["total"] for r in ref.rows}
    assert totals[("naive_mtl", None)] == 0.173 and totals[("surrogate", None)] == 0.050
    assert totals[("optimal", 2)] == 0.694 and totals[("optimal", 3)] == 0.888 and totals[("optimal", 4)] == 0.833
    assert totals[("transfer_gain_mip", 3)] == 0.677 and totals[("hoa", 3)] == -0.391
    optimal2 = next(r for r in ref.rows if r.key == ("taskonomy", "optimal", 2))
    assert optimal2.cells == {"s": None, "d": None, "n": -0.148, "k": 0.443, "e": None, "total": 0.694}
    assert all(r.label for r in ref.rows)


def test_load_references_default_dir():
    assert TABLE2 in [ref.path for ref in load_references()]


def test_compare_diffs_not_run_and_ours_only(tmp_path):
    write(tmp_path, [
        record("optimal", 2, gains(0.6938, n=-0.148, k=0.443)),
        record("optimal", 3, gains(0.8), seed=0), record("optimal", 3, gains(1.0), seed=1),
        record("naive_mtl", None, gains(0.17346, s=0.138)),
        record("stl", None, gains(0.0)),
        record("cs", 2, {}, status="failed", reason="boom"),
    ])
    paths = compare(tmp_path)
    assert {p.name for p in paths} == {"transfer_gain_mip_table2_taskonomy.csv",
                                       "transfer_gain_mip_table2_taskonomy.md", "summary.md"}
    rows = long_rows(tmp_path)
    total = cell(rows, "optimal", "2", "total")
    assert float(total["published"]) == 0.694
    assert float(total["diff"]) == pytest.approx(-0.0002)
    assert total["n_seeds"] == "1" and total["data"] == "real" and total["label"] == "Optimal"
    three = cell(rows, "optimal", "3", "total")
    assert float(three["ours_mean"]) == pytest.approx(0.9) and float(three["ours_std"]) == pytest.approx(0.1)
    assert float(three["diff"]) == pytest.approx(0.9 - 0.888)
    empty = cell(rows, "optimal", "2", "s")  # "-" in the paper: no published value, no difference
    assert empty["published"] == "" and empty["diff"] == "" and float(empty["ours_mean"]) == 0.0
    naive = cell(rows, "naive_mtl", "", "total")
    assert float(naive["diff"]) == pytest.approx(0.00046)
    not_run = cell(rows, "hoa", "4", "total")
    assert not_run["ours_mean"] == "" and not_run["n_seeds"] == "0" and float(not_run["published"]) == 0.809
    stl = cell(rows, "stl", "", "total")  # ours only: the paper has no STL row
    assert stl["published"] == "" and stl["label"] == "" and float(stl["ours_mean"]) == 0.0
    md = (tmp_path / "compare" / "transfer_gain_mip_table2_taskonomy.md").read_text()
    assert "transfer-gain-mip, Table 2" in md
    assert "0.694 / 0.694 (+0.000)" in md  # 0.6938 rounds to the published 0.694
    assert "0.173 / 0.173 (+0.000)" in md
    assert "not run / 0.809" in md and "failed / -0.866" in md
    assert "### split-independent" in md and "### 4 groups" in md
    assert "not comparable" not in md
    summary = (tmp_path / "compare" / "summary.md").read_text()
    assert md in summary


def test_synthetic_stand_in_is_flagged(tmp_path):
    write(tmp_path, [record("optimal", 2, gains(0.5), data="synthetic")])
    compare(tmp_path)
    md = (tmp_path / "compare" / "transfer_gain_mip_table2_taskonomy.md").read_text()
    assert "ours: data=synthetic — not comparable" in md
    assert cell(long_rows(tmp_path), "optimal", "2", "total")["data"] == "synthetic"


def test_no_matching_reference_raises(tmp_path):
    write(tmp_path, [record("optimal", 2, gains(0.5), dataset="synthetic[clusters=[2,2]]")])
    with pytest.raises(UsageError, match=r"taskonomy.*synthetic\[clusters=\[2,2\]\]"):
        compare(tmp_path)


def test_custom_reference_dir_and_bad_cells(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "toy.csv").write_text("# source: a paper, Table 9\n# dataset: toy\n# metric: mse\n"
                                  "# higher_is_better: false\ndataset,n_groups,method,label,a,total\n"
                                  "toy,2,optimal,OPT,1.5,\n")
    ref = load_reference(refs / "toy.csv")
    assert ref.tasks == ("a",) and ref.rows[0].cells == {"a": 1.5, "total": None} and not ref.higher_is_better
    (refs / "bad.csv").write_text("dataset,n_groups,method,label,a,total\ntoy,2,optimal,OPT,abc,1\n")
    with pytest.raises(UsageError, match="bad.csv:2"):
        load_references(refs)
    with pytest.raises(UsageError, match="no reference files"):
        load_references(tmp_path / "missing")
