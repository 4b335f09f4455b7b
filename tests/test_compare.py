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


# --- totals-only references, per-row metrics and the best-over-splits rule ---------------------------------------

TOY = """# source: a toy paper, Table 1
# status: published numbers
# dataset: toy, toy_err, toy_auc
# metric: per row (metric column)
# higher_is_better: false
# total: as printed
# n_groups_match: best
dataset,n_groups,method,label,total,total_std,metric,aggregate,unit,higher_is_better,k,note
toy,,stl,STL |g| = 1,10.5,,mse,,,,,
toy,,naive_mtl,Simple MTL,9.0,0.5,mse,,,,,
toy,,task_features_ls,Ours,8.0,0.1,mse,,,,3,
toy,,,Clustering,8.5,0.2,mse,,,,,average over partitionings
toy,,,Exhaustive,8.7,0.0,mse,,,,,
toy,,stl,STL,0.3,,error,mean,fraction,,,
toy,2,optimal,OPT,7.0,,mse,,,,,
toy_err,,stl,STL,0.33,,error,mean,fraction,,,
toy_auc,,task_features_ls,Ours,90.19%,0.01%,auc,mean,,true,,
toy_auc,,stl,STL,73.86%,,auc,mean,,true,,
"""


def trecord(dataset, method, n_groups, per_task, *, metric="mse", seed=0, higher=False):
    return record(method, n_groups, per_task, dataset=dataset, seed=seed, kind="method", metric=metric,
                  higher_is_better=higher, tasks=sorted(per_task), groups=[sorted(per_task)])


def toy_refs(tmp_path, text=TOY):
    refs = tmp_path / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "toy.csv").write_text(text, encoding="utf-8")
    return refs


def compared(tmp_path, name="toy"):
    with open(tmp_path / "compare" / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def one(rows, **match):
    (hit,) = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return hit


def test_totals_only_reference_parses(tmp_path):
    ref = load_reference(toy_refs(tmp_path) / "toy.csv")
    assert ref.tasks == () and ref.totals_only and ref.best_over_splits and not ref.higher_is_better
    assert ref.extras == ("total_std", "metric", "aggregate", "unit", "higher_is_better", "k", "note")
    assert len(ref.rows) == 10 and ref.datasets == ("toy", "toy_auc", "toy_err")
    ours = ref.rows[2]
    assert ours.cells == {"total": 8.0} and ours.stds == {"total": 0.1} and ours.k == 3 and ours.metric == "mse"
    auc = ref.rows[8]
    assert auc.cells == {"total": 90.19} and auc.stds == {"total": 0.01}  # "90.19%" reads as the number printed
    assert auc.aggregate == "mean" and auc.higher_is_better(False) and not ref.rows[0].higher_is_better(False)
    assert ref.rows[5].unit == "fraction" and ref.rows[0].aggregate == "sum" and ref.rows[3].extra["note"]


def test_compare_totals_only(tmp_path):
    write(tmp_path, [
        {**trecord("toy", "stl", None, {"a": 4.0, "b": 6.0}), "uses_splits": False},
        {**trecord("toy", "naive_mtl", None, {"a": 4.6, "b": 4.6}), "uses_splits": False},
        trecord("toy", "task_features_ls", 2, {"a": 4.2, "b": 4.2}),
        trecord("toy", "task_features_ls", 3, {"a": 4.0, "b": 4.0}, seed=0),
        trecord("toy", "task_features_ls", 3, {"a": 4.1, "b": 4.1}, seed=1),
        trecord("toy", "optimal", 2, {"a": 3.6, "b": 3.6}),
        {**trecord("toy_err", "stl", None, {"a": 20.0, "b": 40.0}, metric="error"), "uses_splits": False},
        trecord("toy_auc", "task_features_ls", 2, {"a": 90.0, "b": 90.0}, metric="auc", higher=True),
        trecord("toy_auc", "task_features_ls", 3, {"a": 85.0, "b": 85.0}, metric="auc", higher=True),
    ])
    compare(tmp_path, toy_refs(tmp_path))
    rows = compared(tmp_path)
    assert {r["cell"] for r in rows} == {"total"}  # totals only: no per-task cells
    stl = one(rows, dataset="toy", method="stl", metric="mse", label="STL |g| = 1")
    assert float(stl["ours_mean"]) == 10.0 and float(stl["diff"]) == pytest.approx(-0.5) and stl["n_groups"] == ""
    naive = one(rows, dataset="toy", method="naive_mtl", label="Simple MTL")
    assert float(naive["diff"]) == pytest.approx(0.2) and float(naive["published_std"]) == 0.5
    # the paper chose its number of groups: ours is our best split count (3: total 8.1 < 8.4), named beside k
    best = one(rows, dataset="toy", method="task_features_ls", label="Ours")
    assert best["ours_n_groups"] == "3" and best["paper_k"] == "3" and best["n_groups"] == ""
    assert float(best["ours_mean"]) == pytest.approx(8.1) and float(best["ours_std"]) == pytest.approx(0.1)
    assert float(best["diff"]) == pytest.approx(0.1) and best["n_seeds"] == "2"
    # our per-split rows are still listed in their own blocks
    assert {r["n_groups"] for r in rows if r["method"] == "task_features_ls" and r["label"] == ""} == {"2", "3"}
    assert one(rows, method="optimal", n_groups="2")["diff"] != ""  # exact block match
    clustering = one(rows, label="Clustering")
    assert clustering["method"] == "" and clustering["ours_mean"] == "" and clustering["diff"] == ""
    # a row in another metric than ours is not compared
    other = one(rows, dataset="toy", method="stl", metric="error")
    assert other["ours_mean"] == "" and other["diff"] == ""
    # mean over tasks, our percent error as a fraction: (20 + 40) / 2 / 100 = 0.3
    err = one(rows, dataset="toy_err", method="stl")
    assert float(err["ours_mean"]) == pytest.approx(0.3) and float(err["diff"]) == pytest.approx(-0.03)
    # AUC, higher is better: the best split count is 2 (mean 90.0)
    auc = one(rows, dataset="toy_auc", method="task_features_ls", label="Ours")
    assert auc["ours_n_groups"] == "2" and float(auc["ours_mean"]) == pytest.approx(90.0)
    assert float(auc["diff"]) == pytest.approx(-0.19)
    assert one(rows, dataset="toy_auc", method="stl")["ours_mean"] == ""
    md = (tmp_path / "compare" / "toy.md").read_text()
    assert "compared on totals" in md and "ours k" in md and "paper k" in md
    assert "STL \\|g\\| = 1" in md  # a printed "|" does not split the markdown cell
    assert "no method / 8.500 ± 0.200" in md and "ours in mse / 0.300" in md
    assert "8.100 / 8.000 ± 0.100 (+0.100)" in md and "0.300 / 0.330 (-0.030)" in md
    assert "### no split count" in md and "### 2 groups" in md and "### 3 groups" in md
    assert "toy: task_features_ls" in md  # several datasets in one table: the dataset names the row


def test_without_best_rule_rows_match_exactly(tmp_path):
    refs = toy_refs(tmp_path, TOY.replace("# n_groups_match: best\n", ""))
    write(tmp_path, [trecord("toy", "task_features_ls", 3, {"a": 4.0, "b": 4.0})])
    compare(tmp_path, refs)
    rows = compared(tmp_path)
    published = one(rows, dataset="toy", method="task_features_ls", label="Ours")
    assert published["ours_mean"] == "" and published["ours_n_groups"] == ""
    assert float(one(rows, method="task_features_ls", n_groups="3")["ours_mean"]) == 8.0
    assert "### split-independent" in (tmp_path / "compare" / "toy.md").read_text()


def test_reference_column_errors(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    header = "# dataset: toy\ndataset,n_groups,method,label,total,total_std,metric,k\n"
    (refs / "bad_k.csv").write_text(header + "toy,,ours,Ours,1.0,,mse,three\n")
    with pytest.raises(UsageError, match=r"bad_k.csv:3: column 'k' holds 'three'"):
        load_reference(refs / "bad_k.csv")
    (refs / "dup.csv").write_text(header + "toy,,stl,STL,1.0,,mse,\ntoy,,stl,STL again,2.0,,mse,\n"
                                  "toy,,stl,STL,0.3,,error,\ntoy,,,A,1,,mse,\ntoy,,,B,2,,mse,\n")
    with pytest.raises(UsageError, match=r"dup.csv:4: row repeats"):
        load_reference(refs / "dup.csv")
    (refs / "groups.csv").write_text(header + "toy,two,stl,STL,1.0,,mse,\n")
    with pytest.raises(UsageError, match=r"groups.csv:3: column 'n_groups'"):
        load_reference(refs / "groups.csv")
    (refs / "std.csv").write_text(header + "toy,,stl,STL,1.0,abc,mse,\n")
    with pytest.raises(UsageError, match=r"std.csv:3: column 'total_std' holds 'abc'"):
        load_reference(refs / "std.csv")
    # empty-method rows may repeat; <task>_std before total is the task's std, not a task
    (refs / "ok.csv").write_text("dataset,n_groups,method,label,a,a_std,total,k\n"
                                 "toy,,,A,1.5,0.1,2,\ntoy,,,B,1.0,,1,\ntoy,2,optimal,OPT,-,,3,2\n")
    ref = load_reference(refs / "ok.csv")
    assert ref.tasks == ("a",) and ref.extras == ("k",)
    assert ref.rows[0].stds == {"a": 0.1} and ref.rows[2].cells == {"a": None, "total": 3.0} and ref.rows[2].k == 2


def test_table2_task_named_k_is_a_task():
    ref = load_reference(TABLE2)
    assert "k" in ref.tasks and ref.extras == () and all(r.k is None for r in ref.rows)


def test_published_tabular_references_side_by_side(tmp_path):
    """The transcribed Table 1 and Table 3 files against tiny synthetic records of ``school`` (default folder)."""
    write(tmp_path, [
        {**trecord("school", "stl", None, {"a": 40.0, "b": 46.49}), "uses_splits": False},
        trecord("school", "divergence_sdp", 2, {"a": 66.0, "b": 66.0}),
        trecord("school", "divergence_sdp", 3, {"a": 65.0, "b": 65.2}),
        trecord("school", "task_features_ls", 4, {"a": 39.0, "b": 39.0}),
    ])
    paths = compare(tmp_path)
    assert {p.name for p in paths} == {"affinity_ls_table1_tabular.csv", "affinity_ls_table1_tabular.md",
                                       "divergence_table3_sdp_grouping.csv", "divergence_table3_sdp_grouping.md",
                                       "summary.md"}
    table3 = compared(tmp_path, "divergence_table3_sdp_grouping")
    ours = one(table3, dataset="school", method="divergence_sdp", label="Ours")
    assert ours["paper_k"] == "3" and ours["ours_n_groups"] == "3" and float(ours["published"]) == 130.19
    assert float(ours["diff"]) == pytest.approx(0.01)
    stl3 = one(table3, dataset="school", method="stl", label="STL")
    assert float(stl3["diff"]) == pytest.approx(86.49 - 131.47)
    assert one(table3, dataset="chemical", method="grad_tae")["ours_mean"] == ""
    table1 = compared(tmp_path, "affinity_ls_table1_tabular")
    assert float(one(table1, dataset="school", method="stl")["diff"]) == pytest.approx(0.0)
    tfls = one(table1, dataset="school", method="task_features_ls", n_groups="")
    assert tfls["ours_n_groups"] == "4" and float(tfls["diff"]) == pytest.approx(78.0 - 78.7)
    summary = (tmp_path / "compare" / "summary.md").read_text()
    assert "`transfer_gain_mip_table5_ettm1.csv` (dataset ettm1): not in the records" in summary


def test_table5_per_task_stds_in_long_csv(tmp_path):
    tasks = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    stl = dict(zip(tasks, (0.64, 0.37, 0.68, 0.36, 0.56, 0.29, 0.15)))
    write(tmp_path, [{**trecord("ettm1", "stl", None, stl, metric="mae"), "uses_splits": False, "tasks": list(tasks)}])
    compare(tmp_path)
    rows = compared(tmp_path, "transfer_gain_mip_table5_ettm1")
    hufl = one(rows, method="stl", cell="HUFL")
    assert float(hufl["published"]) == 0.64 and float(hufl["published_std"]) == 0.016 and float(hufl["diff"]) == 0.0
    total = one(rows, method="stl", cell="total")
    assert float(total["published"]) == 3.05 and total["published_std"] == ""
    assert float(total["ours_mean"]) == pytest.approx(3.05)
    pcgrad = one(rows, label="PCGrad", cell="total")
    assert pcgrad["method"] == "" and float(pcgrad["published"]) == 2.997
    md = (tmp_path / "compare" / "transfer_gain_mip_table5_ettm1.md").read_text()
    assert "0.640 / 0.640 ± 0.016 (+0.000)" in md and "no method / 2.997" in md
