"""``python -m bench affinity``: the matrix as CSV (task names as header) that ``bench group --affinity`` reads."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bench.cli import main



def test_writes_a_matrix_bench_group_reads(plugins, tmp_path, capsys):
    out = tmp_path / "S.csv"
    code = main(["affinity", "--dataset", "synthetic[clusters=[2,3]]", "--signal", "planted", "--profile", "smoke",
                 "--out", str(out)])
    assert code == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["t0", "t1", "t2", "t3", "t4"]
    S = np.array(rows[1:], dtype=float)
    assert S.shape == (5, 5) and S[0, 1] == 1.0 and S[0, 2] == -1.0
    capsys.readouterr()
    assert main(["group", "--affinity", str(out), "--splits", "2", "--semantics", "partition", "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert sorted(groups) == [["t0", "t1"], ["t2", "t3", "t4"]]


@pytest.mark.parametrize("argv, message", [
    (["--signal", "no_such_signal"], "unknown signal 'no_such_signal'"),
    (["--signal", "planted", "--dataset", "no_such_dataset"], "unknown dataset"),
    (["--signal", "planted", "--seed", "x"], "--seed takes an integer"),
    (["--signal", "planted", "--out", "matrix.txt"], "--out must name a .csv file"),
])
def test_bad_input_is_one_line_with_exit_status_2(plugins, tmp_path, capsys, argv, message):
    base = {"--dataset": "synthetic", "--out": str(tmp_path / "S.csv")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["affinity", "--profile", "smoke"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_lookup_table_has_no_training_to_observe(tmp_path, capsys):
    code = main(["affinity", "--dataset", "taskonomy", "--signal", "tag", "--out", str(tmp_path / "S.csv")])
    assert code == 1
    assert "needs a dataset that trains models" in capsys.readouterr().err
    assert not (tmp_path / "S.csv").exists()
