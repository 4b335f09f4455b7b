"""``python -m bench group``: every input path, the JSON contract, the worked example of transfer-gain-mip
Appendix D as a golden test, and a clear error with exit status 2 for every kind of bad input."""

from __future__ import annotations

import json

import pytest
from conftest import APPENDIX_D_CAPACITY, APPENDIX_D_MEMORY, APPENDIX_D_S, APPENDIX_D_TASKS

from bench.cli import main

# transfer-gain-mip Appendix D, eq. (10) and (11)
S_ROWS = APPENDIX_D_S
TASKS = list(APPENDIX_D_TASKS)
MEMORY = APPENDIX_D_MEMORY


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def files(tmp_path):
    S = _write(tmp_path / "S.csv", [",".join(TASKS)] + [",".join(map(str, r)) for r in S_ROWS])
    B = _write(tmp_path / "B.csv", ["task,G1,G2,G3"] + [f"{t},{m},{m},{m}" for t, m in zip(TASKS, MEMORY)])
    b = _write(tmp_path / "b.csv", [str(c) for c in APPENDIX_D_CAPACITY])
    G = _write(tmp_path / "G.csv", ["group,a,b,c,cost", "a,1,,,0.5", "b,,1,,0.5", "c,,,1,0.5",
                                    "a+b,2,2,,1", "a+b+c,1.5,1.5,1.5,1"])
    return {"S": S, "B": B, "b": b, "G": G, "dir": tmp_path}


def _run(capsys, *argv):
    code = main(["group", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    for key in ("groups", "objective", "status", "solver", "solve_time_s"):
        assert key in data
    return data


@pytest.mark.parametrize("solver", ["dp", "exhaustive", "miqp_highs", "miqp_gurobi"])
def test_worked_example_appendix_d(files, capsys, solver):
    """The paper's X* (groups {T1,T2,T4}, {T3,T6}, {T5}) scores 2.383; it is not optimal.

    Under Formulation 8 (overlap allowed) the exact optimum within the memory budgets is 3.05, and even the
    partition variant reaches 2.8333 ({T1,T2,T6} 1.0333, {T3,T4} 1.0, {T5} 0.8; memory 10, 7, 6). We pin the
    exact optima; the paper's answer is recorded here as the published value.
    """
    if solver == "miqp_gurobi":
        pytest.importorskip("gurobipy")
    common = ["--affinity", files["S"], "--splits", "3", "--budget-matrix", files["B"], "--capacity", files["b"],
              "--solver", solver]
    data = _json(capsys, *common, "--semantics", "miqp")
    assert data["objective"] == pytest.approx(3.05) and data["status"] == "optimal"
    part = _json(capsys, *common, "--semantics", "miqp-partition")
    assert part["objective"] == pytest.approx(2.833333333, abs=1e-6)
    assert sorted(map(tuple, part["groups"])) == [("T1", "T2", "T6"), ("T3", "T4"), ("T5",)]
    published = 0.5 + 0.6 + 0.5 + 2 * (0.3 + 0.2 + 0.1)  # X*'s first group, as in Appendix D.3
    paper = published / 3 + 1.3 / 2 + 0.8
    assert paper == pytest.approx(2.3833, abs=1e-4) and paper < part["objective"] - 0.4
    for labelled, cap in zip(data["groups"], [10, 10, 8]):
        assert sum(MEMORY[TASKS.index(t)] for t in labelled) <= cap


def test_select_and_partition_from_affinity(files, capsys):
    sel = _json(capsys, "--affinity", files["S"], "--splits", "3")
    part = _json(capsys, "--affinity", files["S"], "--splits", "3", "--semantics", "partition")
    assert sel["problem"] == "select" and part["problem"] == "partition"
    assert sel["objective"] >= part["objective"] - 1e-12  # a partition is one possible selection
    assert len(part["groups"]) == 3 and sorted(t for g in part["groups"] for t in g) == TASKS
    bounded = _json(capsys, "--affinity", files["S"], "--splits", "2", "--semantics", "partition",
                    "--min-size", "3")
    assert sorted(len(g) for g in bounded["groups"]) == [3, 3]


def test_group_scores_with_costs_and_losses(files, capsys):
    data = _json(capsys, "--group-scores", files["G"], "--splits", "3", "--budget", "1.5")
    assert sorted(map(tuple, data["groups"])) == [("a", "b"), ("c",)] and data["objective"] == pytest.approx(5)
    # the same table read as losses: the all-task group is best for every task
    loss = _json(capsys, "--group-scores", files["G"], "--splits", "1", "--minimize")
    assert loss["groups"] == [["a", "b", "c"]] and loss["objective"] == pytest.approx(4.5)
    assert loss["sense"] == "min"
    part = _json(capsys, "--group-scores", files["G"], "--splits", "2", "--semantics", "partition")
    assert sorted(map(tuple, part["groups"])) == [("a", "b"), ("c",)]


def test_table_output_and_heuristic(files, capsys):
    code, out, _ = _run(capsys, "--affinity", files["S"], "--splits", "2", "--semantics", "partition",
                        "--solver", "hierarchical")
    assert code == 0 and "status heuristic" in out and "T1" in out


def test_row_names_are_reordered(files, capsys):
    rows = list(zip(TASKS, S_ROWS))[::-1]
    path = _write(files["dir"] / "named.csv", ["," + ",".join(TASKS)] +
                  [t + "," + ",".join(map(str, r)) for t, r in rows])
    a = _json(capsys, "--affinity", path, "--splits", "3", "--semantics", "partition")
    b = _json(capsys, "--affinity", files["S"], "--splits", "3", "--semantics", "partition")
    assert a["objective"] == pytest.approx(b["objective"])


BAD = {
    "non_square": (["a,b,c", "1,2,3", "4,5,6"], "square"),
    "non_numeric": (["a,b", "1,x", "3,4"], "'x' is not a number"),
    "ragged": (["a,b", "1,2", "3"], "row 3 has 1 values, expected 2"),
    "empty": ([""], "empty"),
    "bad_row_names": ([",a,b", "a,1,2", "z,3,4"], "row names"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_affinity_files(files, capsys, case):
    lines, message = BAD[case]
    path = _write(files["dir"] / f"{case}.csv", lines)
    code, _, err = _run(capsys, "--affinity", path, "--splits", "1")
    assert code == 2 and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--splits", "7"], "between 1 and the number of tasks (6)"),
    (["--splits", "0"], "between 1 and the number of tasks"),
    (["--splits", "two"], "--splits takes an integer"),
    (["--splits", "2", "--semantics", "clusters"], "unknown semantics 'clusters'"),
    (["--splits", "2", "--solver", "dpp"], "Did you mean"),
    (["--splits", "2", "--semantics", "partition", "--solver", "beam"], "solves select problems, not partition"),
    (["--splits", "2", "--format", "xml"], "--format must be table or json"),
    (["--splits", "2", "--min-size", "4"], "no partition"),
    (["--splits", "2", "--max-size", "9"], "larger than the number of tasks"),
    (["--splits", "3", "--semantics", "miqp", "--budget-matrix", "{B}"], "go together"),
    (["--splits", "3", "--semantics", "miqp", "--budget-matrix", "{B}", "--capacity", "{tiny}"], "infeasible"),
    (["--splits", "2", "--budget-matrix", "{B}", "--capacity", "{b}"], "constraints of the MIQP"),
    (["--splits", "2", "--semantics", "miqp", "--budget-matrix", "{B}", "--capacity", "{b}"], "must be 6 x 2"),
])
def test_bad_options(files, capsys, argv, message):
    files["tiny"] = _write(files["dir"] / "tiny.csv", ["1", "1", "1"])
    argv = [a.format(**files) for a in argv]
    if "--semantics" not in argv and "--min-size" in argv:
        argv += ["--semantics", "partition"]
    code, _, err = _run(capsys, "--affinity", files["S"], *argv)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("lines, message", [
    (["grp,a,b", "a,1,"], "first column must be 'group'"),
    (["group,a,b", "a+z,1,"], "unknown tasks ['z']"),
    (["group,a,b", "a+b,1,"], "member task 'b' of group 'a+b' has no score"),
    (["group,a,b", "a,1,2"], "task 'b' has a score but is not in group 'a'"),
    (["group,a,b", "a,1,", "a,2,"], "listed twice"),
    (["group,a,b", "a,1,"], "no allowed candidate group contains tasks ['b']"),
])
def test_bad_group_scores(files, capsys, lines, message):
    path = _write(files["dir"] / "bad_g.csv", lines)
    code, _, err = _run(capsys, "--group-scores", path, "--splits", "1")
    assert code == 2 and message in err, err


def test_miqp_needs_a_matrix_and_missing_files(files, capsys):
    code, _, err = _run(capsys, "--group-scores", files["G"], "--splits", "2", "--semantics", "miqp")
    assert code == 2 and "needs a pairwise matrix" in err
    code, _, err = _run(capsys, "--affinity", str(files["dir"] / "nope.csv"), "--splits", "2")
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as exc:  # neither input: argparse's own usage error, also status 2
        main(["group", "--splits", "2"])
    assert exc.value.code == 2
