"""``python -m bench group``: group tasks from an affinity matrix or from per-group scores a user already has.

Inputs (CSV):

- ``--affinity S.csv``: a square matrix with the task names as header; ``S[i, j]`` is the effect of task ``j`` on
  task ``i`` (row = recipient, TAG's convention; larger is better). A first column of row names is allowed (it
  must name the same tasks; rows are reordered to the header's order).
- ``--group-scores G.csv``: one row per candidate group: a ``group`` column with task names joined by ``+``, then
  one column per task holding the task's score in that group, empty where the task is not a member; an optional
  ``cost`` column (network selection under ``--budget``).
- ``--budget-matrix B.csv`` (tasks x groups, optional row names and header) and ``--capacity b.csv`` (one value per
  group) for the MIQP.

Problems built (see :mod:`bench.solvers.base`): ``select`` from an affinity matrix has every group allowed by the
size bounds as a candidate, each member scored as in TAG's network selection (mean affinity from the other
members; a singleton scores the diagonal); from group scores, the listed groups. ``partition`` from an affinity
matrix uses the same aggregation per group; from group scores, a group scores the sum of its members' scores and
only listed groups are allowed. ``miqp`` is transfer-gain-mip Formulation 8 on the affinity matrix (groups may
overlap) and ``miqp-partition`` its partition variant (every task in exactly one group).
``--minimize`` says that the scores are losses (smaller is better); they are negated for the solver and the
objective is reported back in the input's units.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from bench.errors import UsageError
from bench.solvers.base import (
    Candidate,
    MIQPProblem,
    PairwiseScore,
    PartitionProblem,
    SelectProblem,
    TableScore,
)
from bench.types import make_group

SEMANTICS = ("select", "partition", "miqp", "miqp-partition")
MAX_SELECT_TASKS = 16


def _rows(path: str | Path, what: str) -> list[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    with path.open(newline="") as fh:
        rows = [[c.strip() for c in row] for row in csv.reader(fh) if any(c.strip() for c in row)]
    if not rows:
        raise UsageError(f"{what} file {path} is empty")
    return rows


def _number(text: str, path, row: int, col: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{path}: row {row}, column {col!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{path}: row {row}, column {col!r}: {text!r} is not a finite number")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_matrix(path: str | Path, what: str) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, np.ndarray]:
    """A numeric matrix with an optional header line (column names) and an optional first column of row names."""
    rows = _rows(path, what)
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise UsageError(f"{path}: the {what} has a header but no rows")
    labelled = not _is_number(rows[0][0])
    if header is not None and labelled and len(header) == len(rows[0]):
        header = header[1:]  # the corner cell above the row names
    row_names = tuple(row[0] for row in rows) if labelled else None
    body = [row[1:] if labelled else row for row in rows]
    width = len(header) if header is not None else len(body[0])
    if header is not None and (len(set(header)) != len(header) or "" in header):
        raise UsageError(f"{path}: the header must name every column once, got {list(header)}")
    for r, row in enumerate(body, start=2 if header is not None else 1):
        if len(row) != width:
            raise UsageError(f"{path}: row {r} has {len(row)} values, expected {width}")
    cols = header if header is not None else [str(c + 1) for c in range(width)]
    values = np.array([[_number(v, path, r, cols[c]) for c, v in enumerate(row)] for r, row in enumerate(body, 2)],
                      dtype=np.float64).reshape(len(body), width)
    return (tuple(header) if header is not None else None), row_names, values


def _reorder_rows(path, values: np.ndarray, row_names, tasks) -> np.ndarray:
    if row_names is None:
        return values
    if sorted(row_names) != sorted(tasks) or len(set(row_names)) != len(row_names):
        raise UsageError(f"{path}: the row names {list(row_names)} must be the task names {list(tasks)}")
    return values[[row_names.index(t) for t in tasks]]


def read_affinity(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    header, row_names, S = read_matrix(path, "affinity")
    if header is None:
        raise UsageError(f"{path}: the affinity matrix needs a header line with the task names")
    if S.shape[0] != len(header):
        raise UsageError(f"{path}: the affinity matrix must be square (one row per task in the header), "
                         f"got {S.shape[0]} rows for {len(header)} tasks")
    return header, _reorder_rows(path, S, row_names, header)


def read_budget_matrix(path: str | Path, tasks: tuple[str, ...]) -> np.ndarray:
    _, row_names, B = read_matrix(path, "budget matrix")
    if B.shape[0] != len(tasks):
        raise UsageError(f"{path}: the budget matrix needs one row per task ({len(tasks)}), got {B.shape[0]}")
    return _reorder_rows(path, B, row_names, tasks)


def read_group_scores(path: str | Path) -> tuple[tuple[str, ...], list[tuple[tuple[str, ...], dict, float]]]:
    rows = _rows(path, "group scores")
    header = rows[0]
    if not header or header[0] != "group":
        raise UsageError(f"{path}: the first column must be 'group' (task names joined by '+'), got {header[:1]}")
    has_cost = "cost" in header
    tasks = tuple(h for h in header[1:] if h != "cost")
    if len(set(tasks)) != len(tasks) or "" in tasks:
        raise UsageError(f"{path}: the header must name every task column once, got {list(tasks)}")
    entries, seen = [], set()
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UsageError(f"{path}: row {r} has {len(row)} fields, expected {len(header)}")
        cells = dict(zip(header, row))
        members = [t for t in cells["group"].split("+") if t]
        unknown = sorted(set(members) - set(tasks))
        if unknown or not members:
            raise UsageError(f"{path}: row {r}: group {cells['group']!r} names unknown tasks {unknown}; "
                             f"the task columns are {list(tasks)}")
        group = make_group(members)
        if group in seen:
            raise UsageError(f"{path}: row {r}: group {cells['group']!r} is listed twice")
        seen.add(group)
        scores = {}
        for t in tasks:
            if t in group:
                if cells[t] == "":
                    raise UsageError(f"{path}: row {r}: member task {t!r} of group {cells['group']!r} has no score")
                scores[t] = _number(cells[t], path, r, t)
            elif cells[t] != "":
                raise UsageError(f"{path}: row {r}: task {t!r} has a score but is not in group {cells['group']!r} "
                                 "(leave non-members empty)")
        cost = _number(cells["cost"], path, r, "cost") if has_cost else 1.0
        entries.append((group, scores, cost))
    if not entries:
        raise UsageError(f"{path}: no candidate groups listed")
    return tasks, entries


def read_vector(path: str | Path, what: str) -> np.ndarray:
    """Numbers in one row or one column; a first line holding any non-number is a header and is skipped."""
    rows = _rows(path, what)
    if any(c != "" and not _is_number(c) for c in rows[0]):
        rows = rows[1:]
    return np.array([_number(c, path, r, what) for r, row in enumerate(rows, start=1) for c in row if c != ""])


def build_problem(*, splits: int, semantics: str, affinity: str | None = None, group_scores: str | None = None,
                  budget_matrix: str | None = None, capacity: str | None = None, budget: float | None = None,
                  min_size: int = 1, max_size: int | None = None, minimize: bool = False):
    """The grouping problem the ``bench group`` options describe (every input checked, errors say what is wrong)."""
    if semantics not in SEMANTICS:
        raise UsageError(f"unknown semantics {semantics!r}; allowed: {', '.join(SEMANTICS)}")
    if (affinity is None) == (group_scores is None):
        raise UsageError("give exactly one of --affinity S.csv and --group-scores G.csv")
    if (budget_matrix is None) != (capacity is None):
        raise UsageError("--budget-matrix and --capacity go together")
    if budget_matrix is not None and not semantics.startswith("miqp"):
        raise UsageError("--budget-matrix/--capacity are constraints of the MIQP (use --semantics miqp); "
                         "network selection takes a cost column in G.csv and --budget")
    if budget is not None and semantics != "select":
        raise UsageError("--budget limits the total cost of a network selection (--semantics select)")
    sign = -1.0 if minimize else 1.0
    if affinity is not None:
        tasks, S = read_affinity(affinity)
        S = sign * S
    else:
        tasks, entries = read_group_scores(group_scores)
    n = len(tasks)
    if splits < 1 or splits > n:
        raise UsageError(f"--splits must be between 1 and the number of tasks ({n}), got {splits}")
    if max_size is not None and max_size > n:
        raise UsageError(f"--max-size {max_size} is larger than the number of tasks ({n})")

    if semantics.startswith("miqp"):
        if affinity is None:
            raise UsageError("the MIQP needs a pairwise matrix: use --affinity S.csv, not --group-scores")
        B = b = None
        if budget_matrix is not None:
            B = read_budget_matrix(budget_matrix, tasks)
            b = read_vector(capacity, "capacities")
        return MIQPProblem(tasks, S, splits, B, b, min_size, max_size, partition=semantics == "miqp-partition")
    if semantics == "partition":
        if affinity is not None:
            score = PairwiseScore(S, tasks)
        else:
            score = TableScore({g: sign * sum(s.values()) for g, s, _ in entries}, tasks)
        return PartitionProblem(tasks, splits, score, min_size, max_size)
    if affinity is not None:
        if n > MAX_SELECT_TASKS:
            raise UsageError(f"network selection from an affinity matrix makes every one of the 2^n groups a "
                             f"candidate; at most {MAX_SELECT_TASKS} tasks, got {n} (use --semantics partition)")
        cands = PairwiseScore(S, tasks).candidates(min_size, max_size)
    else:
        cands = tuple(Candidate(g, {t: sign * v for t, v in s.items()}, c) for g, s, c in entries)
    return SelectProblem(tasks, cands, splits, budget, min_size, max_size)
