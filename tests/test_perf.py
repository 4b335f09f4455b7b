"""The solver report (``bench perf solvers``) on tiny sizes: layout, agreement checks, the target verdict."""

from __future__ import annotations

import math

import pytest

from bench import perf
from bench.cli import main


def test_table6_rows_and_agreement():
    rows = perf.table6(ns=(4,), splits=(2, 3, 5), time_limit=20.0)
    assert [(r["tasks"], r["splits"]) for r in rows] == [(4, 2), (4, 3)]  # 5 splits > 4 tasks: not applicable
    for row in rows:
        for label in ("BB", "DP select", "MP HiGHS", "DP MIQP"):
            assert row[label] != "×" and row[f"{label} s"] >= 0
        assert row["BB objective"] == pytest.approx(row["DP select objective"])
        assert row["MP HiGHS objective"] == pytest.approx(row["DP MIQP objective"])


def test_table6_marks_a_time_limit(monkeypatch):
    rows = perf.table6(ns=(9,), splits=(4,), time_limit=0.05)
    assert rows[0]["BB"] == "×" and rows[0]["DP select"] != "×"


def test_scaling_target_and_gaps(tmp_path):
    rows = perf.scaling(ns=(4, 5), ks=(2, 6), repeats=1)
    assert [(r["tasks"], r["groups"]) for r in rows] == [(4, 2), (5, 2)]
    worst = perf.target_met(rows)
    assert set(worst) == {"select", "partition", "miqp"} and all(math.isfinite(v) for v in worst.values())
    gaps = perf.gaps(ns=(5,), ks=(2,), seeds=(0,), heuristics=("random", "local_search", "random_search"))
    by = {r["solver"]: r for r in gaps}
    assert set(by) == {"random", "local_search", "random_search", "beam"}
    assert all(r["mean gap %"] >= -1e-9 for r in gaps)  # never better than the exact optimum
    paths = perf._write(rows, tmp_path, "solver_scaling", "t", "n")
    assert all(p.exists() for p in paths) and "tasks" in paths[1].read_text()


def test_perf_cli_checks_options(capsys):
    assert main(["perf", "solvers", "--time-limit", "0"]) == 2
    assert "--time-limit must be positive" in capsys.readouterr().err
