"""The command line: every usage error exits 2 with a message that says what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import registry
from bench.cli import main

REPO = registry.PROJECT_ROOT


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _runargs(tmp_path, *extra):
    return ("run", "--datasets", "synthetic[clusters=[2,2]]", "--methods", "stl", "--splits", "2", "--seeds", "0",
            "--profile", "smoke", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *extra)


ERRORS = [
    (("run", "--suite", "everything"), "unknown suite 'everything'.*Valid suites: .*all, .*smoke"),
    (("run", "--datasets", "synthetc"), "Did you mean 'synthetic'"),
    (("run", "--datasets", "synthetic", "--methods", "optimall"), "Did you mean 'optimal'"),
    (("run", "--methods", "random[repeat=2]"), "Did you mean 'repeats'"),
    (("run", "--methods", "random[repeats=abc]"), "must be int"),
    (("run", "--datasets", "synthetic[clusters"), "malformed component id"),
    (("run", "--splits", "two"), "comma-separated integers"),
    (("run", "--splits", "0"), "must be >= 1"),
    (("run", "--splits", ","), "at least one integer"),
    (("run", "--seeds", "-1"), "must be >= 0"),
    (("run", "--profile", "huge"), "invalid choice"),
    (("run", "--jobs", "x"), "positive integer"),
    (("run", "--jobs", "0"), "at least 1"),
    (("run", "--device", "tpu"), "allowed: cpu, cuda, auto"),
    (("run", "--data-root", "/no/such/dir"), "is not a directory"),
    (("perf", "signals", "--scale", "huge"), "unknown scale\\(s\\) \\['huge'\\]; allowed: small, wide or all"),
    (("list", "everything"), "allowed: datasets, methods, baselines, solvers, signals, predictors, suites"),
    (("table", "/no/such/dir"), "is not a directory"),
    (("compare", "/no/such/dir"), "is not a directory"),
    (("frobnicate",), "invalid choice"),
    ((), "required"),
]


@pytest.mark.parametrize("argv,message", ERRORS, ids=[" ".join(a) or "no-args" for a, _ in ERRORS])
def test_usage_errors_exit_2(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert __import__("re").search(message, err), err


def test_cuda_asked_for_without_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, err = _run(capsys, *_runargs(tmp_path, "--device", "cuda"))
    assert code == 2 and "no CUDA device is available" in err


def test_missing_real_files_name_the_file_and_the_source(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = _run(capsys, "run", "--datasets", "taskonomy", "--methods", "stl", "--data-root", str(empty),
                        "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert code == 2
    assert "taskonomy_x.csv" in err and "github.com/ShawnKS/MTG-Net" in err
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_malformed_real_file(capsys, tmp_path):
    folder = tmp_path / "data" / "mtgnet_collected_gain" / "taskonomy"
    folder.mkdir(parents=True)
    (folder / "taskonomy_x.csv").write_text("1,0,0\n")
    (folder / "taskonomy.csv").write_text("0 0 0\n")
    code, _, err = _run(capsys, "run", "--datasets", "taskonomy", "--methods", "stl", "--data-root",
                        str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert code == 2 and "taskonomy_x.csv" in err and "expected 5 columns" in err


def test_table_and_compare_without_records(capsys, tmp_path):
    code, _, err = _run(capsys, "table", str(tmp_path))
    assert code == 2 and "no records" in err
    code, _, err = _run(capsys, "compare", str(tmp_path))
    assert code == 2 and "no records" in err


def test_compare_without_a_matching_reference(capsys, tmp_path):
    assert _run(capsys, *_runargs(tmp_path))[0] == 0
    code, _, err = _run(capsys, "compare", str(tmp_path / "out"))
    assert code == 2 and "taskonomy" in err


def test_list(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    for name in ["synthetic", "taskonomy", "optimal", "random", "stl", "naive_mtl", "all", "smoke"]:
        assert name in out
    code, out, _ = _run(capsys, "list", "baselines")
    assert code == 0 and "optimal" in out and "synthetic" not in out


def test_run_writes_records_and_tables(capsys, tmp_path):
    code, _, err = _run(capsys, *_runargs(tmp_path))
    assert code == 0, err
    assert (tmp_path / "out" / "records.jsonl").exists()
    assert (tmp_path / "out" / "tables" / "summary.md").exists()
    assert "1 ok, 0 skipped, 0 failed" in err
    code, out, _ = _run(capsys, "table", str(tmp_path / "out"))
    assert code == 0 and "summary.md" in out


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "list", "suites"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0 and "all" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--splits", "x"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert proc.returncode == 2 and "comma-separated integers" in proc.stderr


def test_stand_in_says_where_to_get_the_real_data(capsys, tmp_path):
    code, _, err = _run(capsys, "run", "--datasets", "taskonomy", "--methods", "stl", "--seeds", "0",
                        "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert code == 0
    assert "note: taskonomy: no data root given, using a synthetic stand-in" in err
    assert "github.com/ShawnKS/MTG-Net" in err
