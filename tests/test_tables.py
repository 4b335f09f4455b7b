"""Result tables (bench.tables): aggregation over seeds, reruns, layout and files, from hand-written records."""

from __future__ import annotations

import csv
import json
import math

import pytest

from bench.errors import UsageError
from bench.tables import aggregate, fmt_mean_std, load_records, sanitise, write_tables

TASKS = ("a", "b", "c")


def record(method="optimal", n_groups=2, seed=0, per_task=None, *, dataset="toy", kind="baseline",
           uses_splits=True, status="ok", data="real", tasks=TASKS, **extra):
    per_task = per_task if per_task is not None else {t: 1.0 for t in tasks}
    rec = {
        "status": status, "dataset": dataset, "method": method, "kind": kind, "uses_splits": uses_splits,
        "n_groups": n_groups if uses_splits else None, "seed": seed, "profile": "mini", "data": data,
        "tasks": list(tasks), "metric": "mse", "higher_is_better": False, "groups": [list(tasks)],
        "per_task": per_task, "total": sum(per_task.values()),
        "t_signal_s": 1.0, "t_fit_s": 2.0, "t_solve_s": 3.0, "t_train_s": 4.0, "n_trainings": 5,
    }
    rec.update(extra)
    return rec


def write(tmp_path, records, tail=""):
    with open(tmp_path / "records.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.write(tail)
    return tmp_path


def test_mean_and_population_std_over_seeds():
    recs = [record(seed=0, per_task={"a": 1.0, "b": 2.0, "c": 3.0}),
            record(seed=1, per_task={"a": 3.0, "b": 2.0, "c": 5.0})]
    (row,) = aggregate(recs)
    assert row.n_seeds == 2 and row.seeds == (0, 1)
    assert row.mean == {"a": 2.0, "b": 2.0, "c": 4.0}
    assert row.std == {"a": 1.0, "b": 0.0, "c": 1.0}  # ddof=0
    assert row.total_mean == 8.0 and row.total_std == 2.0  # totals 6 and 10
    assert row.t_train_s == 4.0 and row.n_trainings == 5.0


def test_one_seed_has_zero_std():
    (row,) = aggregate([record()])
    assert row.std == {t: 0.0 for t in TASKS} and row.total_std == 0.0


def test_last_duplicate_wins():
    recs = [record(seed=0, per_task={"a": 9.0, "b": 9.0, "c": 9.0}), record(seed=0)]
    (row,) = aggregate(recs)
    assert row.n_seeds == 1 and row.total_mean == 3.0


def test_failed_rerun_replaces_ok_line_and_is_listed(tmp_path):
    recs = [record(method="cs"), record(method="cs", status="failed", reason="solver crashed"), record()]
    write(tmp_path, recs)
    assert [r.method for r in aggregate(load_records(tmp_path))] == ["optimal"]
    write_tables(tmp_path)
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert "`cs`, 2 groups, seed 0: **failed** — solver crashed" in md


def test_split_independent_records_group_across_n_groups():
    # a runner that writes n_groups for stl anyway still lands in the one split-independent row
    recs = [record("stl", None, kind="baseline", uses_splits=False), record("stl", 3, uses_splits=False, seed=1)]
    recs[1]["n_groups"] = 3
    (row,) = aggregate(recs)
    assert row.n_groups is None and row.n_seeds == 2


def test_truncated_last_line_is_skipped_with_warning(tmp_path):
    write(tmp_path, [record()], tail='{"status": "ok", "data')
    with pytest.warns(UserWarning, match="malformed"):
        records = load_records(tmp_path)
    assert len(records) == 1


def test_missing_or_empty_records_raise_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no records"):
        load_records(tmp_path)
    write(tmp_path, [])
    with pytest.raises(UsageError, match="python -m bench run"):
        write_tables(tmp_path)


def test_block_and_row_order():
    recs = [
        record("zeta", 3, kind="method"), record("alpha", 2, kind="method"), record("random", 2),
        record("optimal", 2), record("naive_mtl", kind="baseline", uses_splits=False),
        record("custom_indep", kind="method", uses_splits=False), record("stl", uses_splits=False),
        record("optimal", 3), record("other", 10, kind="method"),
    ]
    order = [(r.n_groups, r.method) for r in aggregate(recs)]
    assert order == [(None, "stl"), (None, "naive_mtl"), (None, "custom_indep"), (2, "optimal"), (2, "random"),
                     (2, "alpha"), (3, "optimal"), (3, "zeta"), (10, "other")]


def test_mean_std_formatting():
    assert fmt_mean_std(0.69384, 0.01234, 3) == "0.694 ± 0.012"
    assert fmt_mean_std(0.69384, 0.0, 1) == "0.694"
    assert fmt_mean_std(-0.00001, 0.0, 1) == "0.000"
    assert fmt_mean_std(None, None, 0) == "—"


def test_markdown_layout(tmp_path):
    recs = [record("stl", uses_splits=False), record("optimal", 2, seed=0), record("optimal", 2, seed=1),
            record("etap", 2, kind="method"), record("skipper", 3, status="skipped", reason="too large")]
    write(tmp_path, recs)
    write_tables(tmp_path)
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "## toy (data: real, profile: mini)" in md
    assert "Total mse (↓)" in md and "1.000 ± 0.000" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[1].split("|")[1].strip() == "split-independent"
    assert lines[2].split("|")[1].strip() == "2 groups" and "optimal" in lines[2]
    assert lines[3].split("|")[1].strip() == "" and "etap" in lines[3]  # a block is labelled once
    assert "`skipper`, 3 groups, seed 0: **skipped** — too large" in md
    assert "Timing of toy" in md


def test_synthetic_data_shown_in_heading(tmp_path):
    write(tmp_path, [record(dataset="synthetic[clusters=[2,2]]", data="synthetic")])
    paths = write_tables(tmp_path)
    assert {p.name for p in paths} == {"synthetic_clusters__2_2__.csv", "synthetic_clusters__2_2__.md", "summary.md"}
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "## synthetic[clusters=[2,2]] (data: synthetic, profile: mini)" in md
    assert "data=synthetic" in md


def test_csv_columns_and_values(tmp_path):
    write(tmp_path, [record("stl", uses_splits=False), record(seed=0), record(seed=1, per_task={"a": 3.0, "b": 1.0,
                                                                                                 "c": 1.0})])
    write_tables(tmp_path)
    with open(tmp_path / "tables" / "toy.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["dataset", "n_groups", "method", "kind", "data", "n_seeds", "a", "a_std", "b", "b_std",
                             "c", "c_std", "total", "total_std", "t_signal_s", "t_fit_s", "t_solve_s", "t_train_s",
                             "n_trainings"]
    assert rows[0]["n_groups"] == "" and rows[0]["method"] == "stl"
    assert rows[1]["n_groups"] == "2" and float(rows[1]["a"]) == 2.0 and float(rows[1]["a_std"]) == 1.0
    assert math.isclose(float(rows[1]["total"]), 4.0)


def test_byte_identical_on_rerun(tmp_path):
    recs = [record(m, n, seed=s, per_task={"a": 0.1 * s, "b": 1 / 3, "c": n or 0})
            for m in ("optimal", "random", "etap") for n in (2, 3) for s in (0, 1, 2)]
    recs.append(record("naive_mtl", uses_splits=False))
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    write(first, recs)
    write(second, list(reversed(recs)))  # line order does not matter without duplicates
    files_one, files_two = write_tables(first), write_tables(second)
    assert [p.name for p in files_one] == [p.name for p in files_two]
    for a, b in zip(files_one, files_two):
        assert a.read_bytes() == b.read_bytes(), a.name
    again = [p.read_bytes() for p in write_tables(first)]
    assert again == [p.read_bytes() for p in files_one]


def test_many_tasks_show_only_total_in_markdown(tmp_path):
    tasks = tuple(f"t{i:02d}" for i in range(13))
    write(tmp_path, [record(tasks=tasks)])
    write_tables(tmp_path)
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert "13 tasks: only the total is shown" in md
    table_header = next(line for line in md.splitlines() if line.startswith("| block"))
    assert "t00" not in table_header and "Total mse" in table_header
    header = (tmp_path / "tables" / "toy.csv").read_text().splitlines()[0].split(",")
    assert all(t in header and f"{t}_std" in header for t in tasks)


def test_sanitise():
    assert sanitise("random[repeats=3]") == "random_repeats_3_"
    assert sanitise("a.b-c_d") == "a.b-c_d"


def test_groupings_a_solver_did_not_prove_optimal_are_listed(tmp_path):
    write(tmp_path, [record("hoa", 2, solved_by=[["select_highs", "optimal"]]),
                     record("hoa", 3, solved_by=[["select_highs", "feasible"]]), record("stl", uses_splits=False)])
    write_tables(tmp_path)
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "did not prove optimality" in md
    assert "`hoa`, 3 groups, seed 0: select_highs stopped by its limit" in md and "`hoa`, 2 groups" not in md
