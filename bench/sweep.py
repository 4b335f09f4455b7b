"""Ground-truth sweeps: every group of some sizes trained (stacked, cached), and the pairwise-MTL summary.

``python -m bench sweep --dataset landmine --sizes 1,2,n`` trains every single-task model, every pair and the
all-task model (``n``), through the same cache as ``bench run`` (so a later run, predictor evaluation or
reproduction reuses them and an interrupted sweep resumes where it stopped), and writes:

- ``groups.csv``: one row per (group, member task): validation and test metric, validation loss, extra metrics,
  and the gain against the task's single-task model on each split (:mod:`bench.gains`);
- ``summary.csv`` / ``summary.md``: the first columns of affinity-predictor-local-search **Table 1**, the sum
  over tasks of: STL (``|g| = 1``); pairwise MTL over all pairs (each task's metric averaged over the pairs it is
  in); pairwise MTL "optimal" (each task in its best pair, chosen on validation, reported on test: the choice made
  here, as the paper does not say which split picks the pair; the same chosen on test, an oracle, is reported
  beside it); and all-task MTL (``|g| = n``). Extra metrics (AUC, error) are averaged over tasks instead;
- ``records.jsonl``: the same rows as records of the runner's schema (:func:`sweep_records`: ids ``stl``,
  ``naive_mtl``, ``pairwise_mean``, ``pairwise_optimal``, ``pairwise_oracle``), so that ``bench compare OUT`` sets
  them beside the published Table 1, and a ``bench run --out OUT`` adds the grouping methods to the same tables.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cache import ResultCache
from bench.dataset import Problem
from bench.errors import UsageError
from bench.gains import task_gain
from bench.provenance import pin, provenance
from bench.selection import mean_defined
from bench.tables import RECORDS_FILE, markdown_table
from bench.types import Group, GroupResult, group_label

MAX_GROUPS = 100_000


def sweep_groups(problem: Problem, sizes: Sequence[int | str]) -> list[Group]:
    """All groups of the given sizes (``n`` or ``all``: the group of every task), smallest first."""
    n = problem.n_tasks
    out: list[Group] = []
    for size in sizes:
        k = n if size in ("n", "all") else int(size)
        if not 1 <= k <= n:
            raise UsageError(f"group size {size} is outside 1..{n} (this problem has {n} tasks)")
        count = math.comb(n, k)
        if count > MAX_GROUPS:
            raise UsageError(f"{count} groups of size {k} from {n} tasks is more than {MAX_GROUPS}; "
                             "sweep smaller sizes")
        out += [tuple(g) for g in itertools.combinations(problem.task_names, k)]
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Statistic:
    """One Table 1 row computed from the sweep: per task, the test and validation value and further test metrics
    (``extra[metric][task]``, None where undefined); ``method`` is the id it is recorded under."""

    label: str
    method: str
    per_task: dict[str, float]
    per_task_val: dict[str, float]
    extra: dict[str, dict[str, float | None]]
    groups: int


def statistics(problem: Problem, results: Mapping[Group, GroupResult]) -> list[Statistic]:
    """The Table 1 rows (see the module docstring) that the trained sizes allow."""
    tasks = {t.name: t for t in problem.tasks}
    names = problem.task_names
    extras = sorted({m for t in problem.tasks for m in t.extra_metrics})
    out: list[Statistic] = []

    def served(label: str, method: str, by: Mapping[str, GroupResult | None], n_groups: int) -> None:
        if any(by[t] is None for t in names):
            return
        out.append(Statistic(label, method, {t: float(by[t].test[t]) for t in names},
                             {t: float(by[t].val[t]) for t in names},
                             {m: {t: by[t].extra_value(m, t) for t in names} for m in extras}, n_groups))

    served("STL (size 1)", "stl", {t: results.get((t,)) for t in names}, len(names))
    pairs = [g for g in results if len(g) == 2]
    if pairs and all(any(t in g for g in pairs) for t in names):
        by_task = {t: [results[g] for g in pairs if t in g] for t in names}
        out.append(Statistic(
            "Pairwise MTL, all pairs (size 2)", "pairwise_mean",
            {t: float(np.mean([r.test[t] for r in by_task[t]])) for t in names},
            {t: float(np.mean([r.val[t] for r in by_task[t]])) for t in names},
            {m: {t: mean_defined([r.extra_value(m, t) for r in by_task[t]]) for t in names} for m in extras},
            len(pairs)))

        def best(t: str, split: str) -> GroupResult:
            return max(by_task[t], key=lambda r: tasks[t].utility(getattr(r, split)[t]))

        served("Pairwise MTL, optimal pair chosen on val (size 2)", "pairwise_optimal",
               {t: best(t, "val") for t in names}, len(pairs))
        served("Pairwise MTL, optimal pair chosen on test: oracle (size 2)", "pairwise_oracle",
               {t: best(t, "test") for t in names}, len(pairs))
    full = tuple(names)
    if full in results and len(full) > 2:
        served(f"Simple MTL, all tasks (size {len(full)})", "naive_mtl", dict.fromkeys(names, results[full]), 1)
    return out


def summarize(problem: Problem, results: Mapping[Group, GroupResult]) -> list[dict]:
    """The Table 1 rows as flat dicts: totals over tasks, extra metrics averaged over the tasks where defined."""
    metric = problem.tasks[0].metric
    rows = []
    for stat in statistics(problem, results):
        row = {"row": stat.label, "metric": metric, "total": float(sum(stat.per_task.values())),
               "total_val": float(sum(stat.per_task_val.values())), "groups": stat.groups}
        for name, values in stat.extra.items():
            mean = mean_defined(list(values.values()))
            row[f"mean_{name}"] = math.nan if mean is None else mean
        rows.append(row)
    return rows


def sweep_records(problem: Problem, dataset_id: str, profile: str, seed: int,
                  results: Mapping[Group, GroupResult], device: str) -> list[dict]:
    """The statistics as runner records (``records.jsonl`` schema, split-independent, ``kind`` ``sweep``), so that
    ``bench table`` and ``bench compare`` read a sweep folder like a run folder. ``stl`` and ``naive_mtl`` equal
    the records ``bench run`` makes for those baselines (the same cached trainings); the ``pairwise_*`` ids are
    statistics, not methods."""
    facts = provenance(device)
    records = []
    for stat in statistics(problem, results):
        groups = [g for g in results if len(g) == (1 if stat.method == "stl" else 2 if "pairwise" in stat.method
                                                   else problem.n_tasks)]
        records.append({
            "dataset": dataset_id, "method": stat.method, "kind": "sweep", "label": stat.label,
            "semantics": "statistic", "uses_splits": False, "n_groups": None, "seed": seed, "profile": profile,
            "data": problem.data, "tasks": list(problem.task_names), "metric": problem.tasks[0].metric,
            "higher_is_better": problem.tasks[0].higher_is_better, "status": "ok",
            "per_task": stat.per_task, "per_task_val": stat.per_task_val, "extra_per_task": stat.extra or None,
            "total": float(sum(stat.per_task.values())), "n_trainings": len(groups),
            "t_train_s": float(sum(results[g].wall_time_s for g in groups)), "provenance": facts})
    return records


def write_records(records: Sequence[dict], out: Path) -> None:
    """Merge into the records of ``out``: a record replaces an earlier one of the same (dataset, method,
    n_groups, seed); the file is rewritten atomically."""
    from bench.runner import read_records, rewrite_records

    new = {(r["dataset"], r["method"], r["n_groups"], r["seed"]) for r in records}
    kept = [r for r in read_records(out)
            if (r.get("dataset"), r.get("method"), r.get("n_groups"), r.get("seed")) not in new]
    rewrite_records(out, [*kept, *records])


def write_groups_csv(problem: Problem, results: Mapping[Group, GroupResult], path: Path) -> None:
    tasks = {t.name: t for t in problem.tasks}
    extras = sorted({m for t in problem.tasks for m in t.extra_metrics})
    header = ["group", "size", "task", "val", "test", "val_loss", "gain_val", "gain_test",
              *[f"test_{m}" for m in extras], "epochs_run", "best_epoch", "wall_time_s"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for group, r in results.items():
            for t in group:
                stl = results.get((t,))
                gains = [task_gain(tasks[t], getattr(r, s)[t], getattr(stl, s)[t]) if stl is not None else ""
                         for s in ("val", "test")]
                extra = [r.extra.get("test", {}).get(m, {}).get(t, "") for m in extras]
                w.writerow([group_label(group), len(group), t, r.val[t], r.test[t], r.val_loss.get(t, ""), *gains,
                            *extra, r.epochs_run, r.best_epoch, round(r.wall_time_s, 6)])


def run_sweep(problem: Problem, dataset_id: str, sizes: Sequence[int | str], seed: int, cache_dir: Path,
              device: str, out: Path, say: Callable[[str], None] = lambda line: None,
              profile: str = "") -> list[Path]:
    """Train the groups (cache first), write ``groups.csv``, ``summary.{csv,md}`` and ``records.jsonl`` (merged
    with the records already there) under ``out``."""
    from bench.runner import _Trainings

    pin(device)  # the records name the code the sweep started with
    groups = sweep_groups(problem, sizes)
    out.mkdir(parents=True, exist_ok=True)
    trainings = _Trainings(problem, ResultCache(cache_dir), device)
    start = time.perf_counter()
    results: dict[Group, GroupResult] = {}
    for size in sorted({len(g) for g in groups}):
        batch = [g for g in groups if len(g) == size]
        say(f"size {size}: {len(batch)} groups")
        results.update(trainings.many(batch, seed))
    wall = time.perf_counter() - start
    write_groups_csv(problem, results, out / "groups.csv")
    rows = summarize(problem, results)
    first = ["row", "metric", "total", "total_val", "groups"]
    fields = first + sorted({k for r in rows for k in r} - set(first))
    with (out / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    hits = sum(r.cached for r in results.values())
    lines = [f"# Ground-truth sweep: {dataset_id} ({problem.n_tasks} tasks, data={problem.data}), seed {seed}",
             "",
             f"{len(results)} groups (sizes {', '.join(str(s) for s in sizes)}); {hits} from the cache; "
             f"this sweep took {wall:.1f} s, the trainings' own cost (as measured when computed) "
             f"{trainings.cost:.1f} s; device {device}.",
             "",
             "Sum over tasks of each task's test metric (affinity-predictor-local-search Table 1 layout); "
             "`total_val` is the same on validation.",
             "",
             markdown_table(fields, [[_fmt(r.get(k, "")) for k in fields] for r in rows])]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    write_records(sweep_records(problem, dataset_id, profile, seed, results, device), out)
    return [out / "groups.csv", out / "summary.csv", out / "summary.md", out / RECORDS_FILE]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
