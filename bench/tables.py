"""Result tables from ``OUT/records.jsonl``, laid out like the papers' grouping tables.

The layout follows transfer-gain-mip Tables 2, 3 and 5 (Taskonomy, CelebA, ETTm1): per dataset one table, first
the rows that do not depend on the split count (STL, Naive-MTL, ...), then one block per split count ("2 groups",
"3 groups", ...), baselines before methods; one column per task and a total column. Each cell is the mean ± the
population standard deviation over seeds.

Files written by :func:`write_tables` under ``OUT/tables/``: ``<dataset>.csv`` (every task, full precision),
``<dataset>.md`` and ``summary.md`` (all datasets, with their data kind and profile in each heading, plus timing).
Identical record sets give byte-identical files: everything is sorted and formatted explicitly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from bench.errors import UsageError
from bench.metrics import HIGHER_IS_BETTER

RECORDS_FILE = "records.jsonl"
TIMINGS = ("t_signal_s", "t_fit_s", "t_solve_s", "t_train_s")
MAX_MD_TASKS = 12  # wider tables are unreadable in markdown; the CSV keeps every task
SPLIT_INDEPENDENT = "split-independent"
_LEADING = ("stl", "naive_mtl")  # the order in which the papers list the split-independent rows
_REQUIRED = ("status", "dataset", "method")
_REQUIRED_OK = ("tasks", "per_task", "total")


@dataclass(frozen=True)
class Row:
    """One table row: a (dataset, method, n_groups) aggregated over seeds (``n_groups`` None: split-independent)."""

    dataset: str
    method: str
    kind: str
    n_groups: int | None
    data: str
    metric: str
    higher_is_better: bool
    tasks: tuple[str, ...]
    mean: Mapping[str, float | None]
    std: Mapping[str, float | None]
    total_mean: float
    total_std: float
    n_seeds: int
    seeds: tuple[int, ...]
    t_signal_s: float | None
    t_fit_s: float | None
    t_solve_s: float | None
    t_train_s: float | None
    n_trainings: float | None
    profile: str = ""
    extra: bool = False  # a further metric of the records (``extra_per_task``), not the one the method selected on


def load_records(out_dir: str | Path) -> list[dict]:
    """Every well-formed record of ``OUT/records.jsonl``, in file order; malformed lines are skipped with a warning.

    A line is malformed when it is not a JSON object or lacks the fields tables rely on; the usual case is a
    truncated last line left by an interrupted run.
    """
    path = Path(out_dir) / RECORDS_FILE
    records: list[dict] = []
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                warnings.warn(f"{path}:{number}: skipping a malformed line ({exc.msg}); a truncated write?",
                              stacklevel=2)
                continue
            required = _REQUIRED + (_REQUIRED_OK if isinstance(record, dict) and record.get("status") == "ok" else ())
            missing = [k for k in required if k not in record] if isinstance(record, dict) else ["(not an object)"]
            if missing:
                warnings.warn(f"{path}:{number}: skipping a record without {', '.join(missing)}", stacklevel=2)
                continue
            records.append(record)
    if not records:
        raise UsageError(f"no records in {path}; run `python -m bench run ... --out OUT` first")
    return records


def split_key(record: Mapping) -> int | None:
    """The split count a record belongs to; None for components whose grouping ignores it (STL, Naive-MTL)."""
    return None if record.get("uses_splits") is False else record.get("n_groups")


def deduplicate(records: Iterable[Mapping]) -> list[Mapping]:
    """One record per (dataset, method, n_groups, seed): a rerun's later line replaces the earlier one."""
    latest: dict[tuple, Mapping] = {}
    for record in records:
        key = (record["dataset"], record["method"], split_key(record), record.get("seed"))
        latest.pop(key, None)  # re-insert so that dict order stays "order of last appearance"
        latest[key] = record
    return list(latest.values())


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values)


def _joined(records: Iterable[Mapping], field: str) -> str:
    """The distinct values of a field, e.g. ``real`` or ``real+synthetic`` when runs were mixed (never hidden)."""
    return "+".join(sorted({str(r.get(field, "?")) for r in records}))


def _base_name(method: str) -> str:
    return method.split("[", 1)[0]


def row_order(row: Row) -> tuple:
    """Split-independent rows first (stl, naive_mtl, others), then blocks by split count, baselines first."""
    if row.n_groups is None:
        lead = _LEADING.index(_base_name(row.method)) if _base_name(row.method) in _LEADING else len(_LEADING)
        return (0, 0, lead, row.method)
    return (1, row.n_groups, 0 if row.kind == "baseline" else 1, row.method)


def aggregate(records: Iterable[Mapping], extra_metrics: bool = False) -> list[Row]:
    """Mean and population std over seeds of every (dataset, method, n_groups); only ``ok`` records count.

    Duplicates are resolved first (last line wins). Rows come sorted by dataset, then in table order. With
    ``extra_metrics``, each (dataset, method, n_groups) also gets one row per further metric of its records'
    ``extra_per_task`` (AUC, error: the test value in the group serving each task); such a row's total is the sum
    over the tasks where the metric is defined (``bench compare`` reads it as a mean where the paper prints one).
    """
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for record in deduplicate(records):
        if record["status"] == "ok":
            groups[(record["dataset"], record["method"], split_key(record))].append(record)
    rows = []
    for (dataset, method, n_groups), recs in groups.items():
        recs = sorted(recs, key=lambda r: r.get("seed", 0))  # a fixed summation order: reproducible means
        last = recs[-1]
        tasks = tuple(last["tasks"])
        timing = {k: _mean_std([float(r[k]) for r in recs if r.get(k) is not None])[0]
                  for k in TIMINGS + ("n_trainings",)}
        common = dict(dataset=dataset, method=method, kind=last.get("kind", "method"), n_groups=n_groups,
                      data=_joined(recs, "data"), tasks=tasks, n_seeds=len(recs),
                      seeds=tuple(r.get("seed", 0) for r in recs), profile=_joined(recs, "profile"), **timing)
        values = {"": [r["per_task"] for r in recs]}
        if extra_metrics:
            for metric in sorted({m for r in recs for m in (r.get("extra_per_task") or {})}):
                values[metric] = [(r.get("extra_per_task") or {}).get(metric, {}) for r in recs]
        for metric, per_record in values.items():
            mean, std = {}, {}
            for task in tasks:
                mean[task], std[task] = _mean_std([float(v[task]) for v in per_record if v.get(task) is not None])
            if metric:
                totals = [sum(float(v[t]) for t in tasks if v.get(t) is not None) for v in per_record]
                head = dict(metric=metric, higher_is_better=metric in HIGHER_IS_BETTER, extra=True)
            else:
                totals = [float(r["total"]) for r in recs]
                head = dict(metric=last.get("metric", "value"),
                            higher_is_better=bool(last.get("higher_is_better", False)))
            total_mean, total_std = _mean_std(totals)
            rows.append(Row(**common, **head, mean=mean, std=std, total_mean=total_mean, total_std=total_std))
    return sorted(rows, key=lambda r: (r.dataset, row_order(r)))


# --- formatting (shared with bench.compare) ---------------------------------------------------------------------


def fmt(value: float | None, signed: bool = False) -> str:
    """Three decimals; ``—`` for a missing value; never ``-0.000``."""
    if value is None:
        return "—"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text.replace("-0.000", "+0.000" if signed else "0.000")


def fmt_mean_std(mean: float | None, std: float | None, n_seeds: int) -> str:
    if mean is None or n_seeds <= 1:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def total_header(metric: str, higher_is_better: bool) -> str:
    return f"Total {metric} ({'↑' if higher_is_better else '↓'})"


def block_label(n_groups: int | None) -> str:
    return SPLIT_INDEPENDENT if n_groups is None else f"{n_groups} groups"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    return tabulate(body, headers=header, tablefmt="github", disable_numparse=True)


def sanitise(name: str) -> str:
    """A file name for a dataset id: characters other than ``[A-Za-z0-9_.-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _csv_value(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


# --- files -----------------------------------------------------------------------------------------------------


def _dataset_csv(rows: list[Row]) -> str:
    tasks = rows[0].tasks
    header = ["dataset", "n_groups", "method", "kind", "data", "n_seeds"]
    header += [c for t in tasks for c in (t, f"{t}_std")] + ["total", "total_std", *TIMINGS, "n_trainings"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        cells = [r.dataset, r.n_groups, r.method, r.kind, r.data, r.n_seeds]
        cells += [v for t in tasks for v in (r.mean.get(t), r.std.get(t))]
        cells += [r.total_mean, r.total_std, *(getattr(r, k) for k in TIMINGS), r.n_trainings]
        writer.writerow([_csv_value(c) for c in cells])
    return buffer.getvalue()


def _unsuccessful(records: list[Mapping]) -> list[str]:
    lines = []
    for r in sorted(records, key=lambda r: (split_key(r) or 0, r["method"], r.get("seed", 0), r["status"])):
        where = block_label(split_key(r))
        reason = " ".join(str(r.get("reason", "no reason recorded")).split())
        lines.append(f"- `{r['method']}`, {where}, seed {r.get('seed')}: **{r['status']}** — {reason}")
    return lines


def dataset_markdown(dataset: str, rows: list[Row], records: list[Mapping], level: int = 2) -> str:
    """The markdown section of one dataset: heading, results table, unsuccessful runs, timing table."""
    data, profile = _joined(records, "data"), _joined(records, "profile")
    out = [f"{'#' * level} {dataset} (data: {data}, profile: {profile})", ""]
    if "synthetic" in data:
        out += ["> **data=synthetic**: a generated stand-in, not the published data; not comparable to the papers.",
                ""]
    if rows:
        tasks, first = rows[0].tasks, rows[0]
        shown = tasks if len(tasks) <= MAX_MD_TASKS else ()
        if not shown:
            out += [f"{len(tasks)} tasks: only the total is shown here; per-task values are in the CSV file.", ""]
        out += [f"Metric: {first.metric} per task ({'higher' if first.higher_is_better else 'lower'} is better); "
                "mean ± std (population) over seeds.", ""]
        header = ["block", "method", *shown, total_header(first.metric, first.higher_is_better), "n_seeds", "data"]
        body, previous = [], object()
        for r in rows:
            label = block_label(r.n_groups) if r.n_groups != previous else ""  # label a block's first row only
            previous = r.n_groups
            cells = [fmt_mean_std(r.mean.get(t), r.std.get(t), r.n_seeds) for t in shown]
            body.append([label, r.method, *cells, fmt_mean_std(r.total_mean, r.total_std, r.n_seeds),
                         str(r.n_seeds), r.data])
        out += [markdown_table(header, body), ""]
    else:
        out += ["No successful runs.", ""]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        out += ["Not in the table (skipped or failed):", "", *_unsuccessful(failed), ""]
    unproved = [f"- `{r['method']}`, {r['n_groups']} groups, seed {r['seed']}: {solver} stopped by its limit"
                for r in records if r["status"] == "ok"
                for solver, status in (r.get("solved_by") or []) if status == "feasible"]
    if unproved:
        out += ["In the table, but the solver did not prove optimality (a valid grouping at its time limit):", "",
                *unproved, ""]
    if rows:
        header = ["method", "n_groups", *TIMINGS, "n_trainings"]
        body = [[r.method, "" if r.n_groups is None else str(r.n_groups),
                 *("" if getattr(r, k) is None else f"{getattr(r, k):.3f}" for k in TIMINGS),
                 "" if r.n_trainings is None else f"{r.n_trainings:g}"] for r in rows]
        out += [f"{'#' * (level + 1)} Timing of {dataset} (mean seconds over seeds)", "",
                markdown_table(header, body), ""]
    return "\n".join(out)


def file_stems(datasets: Iterable[str]) -> dict[str, str]:
    """dataset id -> file stem; two ids that sanitise alike get a short hash so that neither overwrites the other."""
    stems, used = {}, {"summary"}
    for dataset in sorted(datasets):
        stem = sanitise(dataset)
        if stem in used:
            stem = f"{stem}_{hashlib.sha1(dataset.encode()).hexdigest()[:8]}"
        used.add(stem)
        stems[dataset] = stem
    return stems


def write_tables(out_dir: str | Path) -> list[Path]:
    """Write ``OUT/tables/<dataset>.csv``, ``<dataset>.md`` and ``summary.md``; return the paths written."""
    out_dir = Path(out_dir)
    records = deduplicate(load_records(out_dir))
    rows = aggregate(records)
    by_dataset: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        by_dataset[record["dataset"]].append(record)
    target = out_dir / "tables"
    target.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for dataset, stem in file_stems(by_dataset).items():
        dataset_rows = [r for r in rows if r.dataset == dataset]
        if dataset_rows:
            path = target / f"{stem}.csv"
            path.write_text(_dataset_csv(dataset_rows), encoding="utf-8", newline="")
            written.append(path)
        path = target / f"{stem}.md"
        path.write_text(dataset_markdown(dataset, dataset_rows, by_dataset[dataset], level=1), encoding="utf-8")
        written.append(path)
        sections.append(dataset_markdown(dataset, dataset_rows, by_dataset[dataset], level=2))
    summary = target / "summary.md"
    summary.write_text("# Results\n\n" + "\n".join(sections), encoding="utf-8")
    written.append(summary)
    return written
