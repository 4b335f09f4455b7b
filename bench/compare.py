"""Our results beside the published ones (``results/reference/*.csv``), cell by cell.

Each reference file transcribes one published table (e.g. transfer-gain-mip Table 2, Taskonomy) as printed; see
``results/reference/README.md``. :func:`compare` aggregates ``OUT/records.jsonl`` exactly as the tables do
(:func:`bench.tables.aggregate`) and, for every reference whose dataset id appears in the records, writes
``OUT/compare/<reference>.csv`` (long format, one line per row and cell) and ``<reference>.md`` (cells read
``ours / published (ours − published)``), plus ``OUT/compare/summary.md``. Results on a synthetic stand-in are
flagged loudly: they share the dataset id but not the data.

Matching is explicit, never guessed. A published row is set beside our row of the same dataset, method id and
split count (``n_groups``; empty = split-independent) and, where the file has a ``metric`` column, the same metric.
Two rules are opt-in and documented in the README: a file with the metadata line ``# n_groups_match: best`` sets
a published row with an empty ``n_groups`` (the paper chose the number of groups itself) beside **our best row
over the split counts we ran** (the split count is reported as ``ours_n_groups``); a row whose ``aggregate`` is
``mean`` is compared with our total divided by our number of tasks, and one whose ``unit`` is ``fraction`` with our
(percent) value divided by 100.

A reference file may have no per-task columns (header ``dataset,n_groups,method,label,total`` plus extra columns
after ``total``): it is then compared on totals only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bench
from bench.errors import UsageError
from bench.tables import (
    Row,
    aggregate,
    block_label,
    deduplicate,
    fmt,
    load_records,
    markdown_table,
    row_order,
    split_key,
    total_header,
)

DEFAULT_REFERENCE_DIR = Path(bench.__file__).resolve().parent.parent / "results" / "reference"
_FIXED = ("dataset", "n_groups", "method", "label")
LONG_HEADER = ("dataset", "n_groups", "method", "label", "cell", "published", "ours_mean", "ours_std", "n_seeds",
               "diff", "data", "published_std", "metric", "paper_k", "ours_n_groups")
NOT_COMPARABLE = "ours: data=synthetic — not comparable"
AGGREGATES = ("sum", "mean")
UNITS = ("fraction", "percent")
NO_SPLIT_COUNT = "no split count (split-independent, or the number of groups chosen by the method)"
NO_METHOD = "no method"  # status of a published row whose method column is empty (nothing of ours to compare)


@dataclass(frozen=True)
class RefRow:
    """One published row; ``cells`` maps each task and ``total`` to its value (None: empty in the paper).

    ``stds`` holds the published standard deviations (``total_std``, ``<task>_std`` columns), ``extra`` every other
    column after ``total`` as text (``metric``, ``aggregate``, ``unit``, ``k``, ``higher_is_better``, ``note``...).
    """

    dataset: str
    n_groups: int | None
    method: str
    label: str
    cells: Mapping[str, float | None]
    stds: Mapping[str, float | None] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.dataset, self.method, self.n_groups)

    @property
    def metric(self) -> str:
        """Our metric id the row is in (``metric`` column); empty: the file's metric."""
        return self.extra.get("metric", "")

    @property
    def k(self) -> int | None:
        """The number of groups the paper selected (``k`` column), when printed."""
        text = self.extra.get("k", "")
        return int(text) if text else None

    @property
    def aggregate(self) -> str:
        return self.extra.get("aggregate", "") or "sum"

    @property
    def unit(self) -> str:
        return self.extra.get("unit", "")

    def higher_is_better(self, default: bool) -> bool:
        text = self.extra.get("higher_is_better", "")
        return _truth(text) if text else default


@dataclass(frozen=True)
class Reference:
    """A published table: ``metadata`` from its ``# key: value`` lines, task columns, rows in published order."""

    path: Path
    metadata: Mapping[str, str]
    tasks: tuple[str, ...]
    rows: tuple[RefRow, ...]
    extras: tuple[str, ...] = ()

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({r.dataset for r in self.rows}))

    @property
    def higher_is_better(self) -> bool:
        return _truth(self.metadata.get("higher_is_better", ""))

    @property
    def totals_only(self) -> bool:
        """True for a table that prints totals only (no per-task columns): compared on totals."""
        return not self.tasks

    @property
    def best_over_splits(self) -> bool:
        """``# n_groups_match: best``: rows with an empty n_groups meet our best row over the split counts run."""
        return self.metadata.get("n_groups_match", "").strip().lower() == "best"

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics of the rows (``metric`` column), else the file's ``metric``."""
        per_row = sorted({r.metric for r in self.rows if r.metric})
        return tuple(per_row) if per_row else (self.metadata.get("metric", "value"),)


def _truth(text: str) -> bool:
    return text.strip().lower() in ("true", "yes", "1")


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    """A published number; empty, ``-`` or ``—`` is None; a trailing ``%`` is the unit of a cell printed so."""
    text = text.strip()
    if text in ("", "-", "—"):
        return None
    try:
        return float(text.removesuffix("%"))
    except ValueError:
        raise UsageError(f"{path}:{line}: column {column!r} holds {text!r}; expected a number or an empty cell")


def _check_extra(raw: Mapping[str, str], extras: tuple[str, ...], path: Path, line: int) -> None:
    """The extra columns with a meaning hold a valid value (only columns after ``total``: a task may be named k)."""
    checks = {
        "k": lambda v: v.isdigit(),
        "aggregate": lambda v: v in AGGREGATES,
        "unit": lambda v: v in UNITS,
        "higher_is_better": lambda v: v.lower() in ("true", "false", "yes", "no", "1", "0"),
    }
    for column, ok in checks.items():
        value = (raw.get(column) or "").strip() if column in extras else ""
        if value and not ok(value):
            raise UsageError(f"{path}:{line}: column {column!r} holds {value!r}")


def load_reference(path: str | Path) -> Reference:
    """Parse one reference file: ``# key: value`` comment lines, then a CSV (see ``results/reference/README.md``).

    The task columns are those between ``label`` and ``total`` (none: a totals-only table); the columns after
    ``total`` are extra columns, never tasks. ``total_std`` and ``<task>_std`` hold published standard deviations.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    metadata: dict[str, str] = {}
    start = 0
    while start < len(lines) and (lines[start].startswith("#") or not lines[start].strip()):
        key, sep, value = lines[start].lstrip("#").partition(":")
        if sep and key.strip():
            metadata[key.strip()] = value.strip()
        start += 1
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    columns = list(reader.fieldnames or [])
    missing = [c for c in (*_FIXED, "total") if c not in columns]
    if missing:
        raise UsageError(f"{path}: the CSV header lacks {', '.join(missing)}; expected "
                         "dataset,n_groups,method,label,[<task>...,]total[,<extra>...]")
    before = [c for c in columns[:columns.index("total")] if c not in _FIXED]
    extras = tuple(c for c in columns[columns.index("total") + 1:] if c not in _FIXED)
    tasks = tuple(c for c in before if not (c.endswith("_std") and c[:-4] in before))
    std_columns = {c[:-4]: c for c in (*before, *extras) if c.endswith("_std") and c[:-4] in (*tasks, "total")}
    rows, seen = [], {}
    for offset, raw in enumerate(reader, start=start + 2):
        n_groups = (raw["n_groups"] or "").strip()
        if n_groups and not n_groups.isdigit():
            raise UsageError(f"{path}:{offset}: column 'n_groups' holds {n_groups!r}; expected an integer or empty")
        _check_extra(raw, extras, path, offset)
        cells = {c: _number(raw[c] or "", path, offset, c) for c in (*tasks, "total")}
        stds = {c: _number(raw[s] or "", path, offset, s) for c, s in std_columns.items()}
        extra = {c: (raw[c] or "").strip() for c in extras if c not in std_columns.values()}
        row = RefRow(raw["dataset"].strip(), int(n_groups) if n_groups else None, raw["method"].strip(),
                     raw["label"].strip(), cells, stds, extra)
        if row.method:  # rows without a method id (nothing of ours to match) may repeat a key
            ident = (*row.key, row.metric)
            if ident in seen:
                raise UsageError(f"{path}:{offset}: row repeats (dataset, method, n_groups, metric) {ident} of line "
                                 f"{seen[ident]}")
            seen[ident] = offset
        rows.append(row)
    if not rows:
        raise UsageError(f"{path}: no data rows")
    return Reference(path, metadata, tasks, tuple(rows), extras)


def load_references(ref_dir: str | Path | None = None) -> list[Reference]:
    """Every ``*.csv`` of the reference folder (default: ``results/reference`` at the repository root), by name.

    Subfolders (``predictors/``, ``timing/``, ``other_models/``) are not read.
    """
    ref_dir = Path(ref_dir) if ref_dir is not None else DEFAULT_REFERENCE_DIR
    files = sorted(ref_dir.glob("*.csv")) if ref_dir.is_dir() else []
    if not files:
        raise UsageError(f"no reference files (*.csv) in {ref_dir}")
    return [load_reference(f) for f in files]


# --- matching ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One displayed line: a published row and/or our row, its block and how they were matched."""

    block: int | None
    ref_row: RefRow | None
    row: Row | None
    status: str
    ours_n_groups: int | None = None  # the split count of our row when matched by the best-over-splits rule


def _scale(ref_row: RefRow | None, row: Row, cell: str) -> float:
    """The factor that puts our value in the published row's terms (``aggregate: mean`` for the total, ``unit:
    fraction`` for every cell)."""
    factor = 1.0
    if ref_row is not None and ref_row.aggregate == "mean" and cell == "total":
        factor /= max(sum(row.mean.get(t) is not None for t in row.tasks), 1)  # the tasks where it is defined
    if ref_row is not None and ref_row.unit == "fraction":
        factor /= 100.0
    return factor


def _ours(row: Row | None, cell: str, ref_row: RefRow | None = None) -> tuple[float | None, float | None]:
    if row is None:
        return None, None
    if cell == "total":
        mean, std = row.total_mean, row.total_std
    else:
        mean, std = row.mean.get(cell), row.std.get(cell)
    factor = _scale(ref_row, row, cell)
    return (None if mean is None else mean * factor), (None if std is None else std * factor)


def _match(ref: Reference, ref_row: RefRow, rows: list[Row], statuses: Mapping[tuple, str]) -> Entry:
    """Our row for a published row (see the module docstring), or a status saying why there is none."""
    block = ref_row.n_groups
    if not ref_row.method:
        return Entry(block, ref_row, None, NO_METHOD)
    same = [r for r in rows if r.dataset == ref_row.dataset and r.method == ref_row.method]
    if ref_row.metric:
        other = sorted({r.metric for r in same if r.metric != ref_row.metric})
        same = [r for r in same if r.metric == ref_row.metric]
        if not same and other:
            return Entry(block, ref_row, None, f"ours in {'/'.join(other)}")
    exact = [r for r in same if r.n_groups == ref_row.n_groups]
    if exact:
        return Entry(block, ref_row, exact[0], "ok")
    if ref_row.n_groups is None and ref.best_over_splits and same:
        higher = ref_row.higher_is_better(ref.higher_is_better)
        best = min(same, key=lambda r: ((-1 if higher else 1) * _ours(r, "total", ref_row)[0], r.n_groups))
        return Entry(block, ref_row, best, "ok", best.n_groups)
    return Entry(block, ref_row, None, statuses.get(ref_row.key, "not run"))


def _entries(ref: Reference, rows: list[Row], statuses: Mapping[tuple, str]) -> list[Entry]:
    """Published rows with their matches, then our rows that no published row matched exactly (ours only; rows
    of a further metric such as AUC only where a published row matches them).

    Display order: blocks ascending (split-independent first), published order kept within a block.
    """
    ours = [r for r in rows if r.dataset in ref.datasets]
    entries = [_match(ref, ref_row, ours, statuses) for ref_row in ref.rows]
    exact = {id(e.row) for e in entries if e.row is not None and e.ours_n_groups is None}
    entries += [Entry(r.n_groups, None, r, "ok") for r in sorted(ours, key=lambda r: (r.dataset, row_order(r)))
                if id(r) not in exact and not r.extra]  # a further metric is shown only beside a published row
    return sorted(entries, key=lambda e: (e.block is not None, e.block or 0))


# --- output -----------------------------------------------------------------------------------------------------


def _csv_cell(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _long_csv(ref: Reference, entries: list[Entry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LONG_HEADER)
    for e in entries:
        ref_row, row = e.ref_row, e.row
        dataset = ref_row.dataset if ref_row else row.dataset
        method = ref_row.method if ref_row else row.method
        metric = (ref_row.metric if ref_row else "") or (row.metric if row else "")
        for cell in (*ref.tasks, "total"):
            published = ref_row.cells[cell] if ref_row else None
            mean, std = _ours(row, cell, ref_row)
            diff = mean - published if mean is not None and published is not None else None
            values = [dataset, e.block, method, ref_row.label if ref_row else "", cell, published, mean, std,
                      row.n_seeds if row else 0, diff, row.data if row else "",
                      ref_row.stds.get(cell) if ref_row else None, metric, ref_row.k if ref_row else None,
                      e.ours_n_groups]
            writer.writerow([_csv_cell(v) for v in values])
    return buffer.getvalue()


def _published_text(ref_row: RefRow | None, cell: str) -> str:
    if ref_row is None:
        return fmt(None)
    text = fmt(ref_row.cells[cell])
    std = ref_row.stds.get(cell)
    return f"{text} ± {fmt(std)}" if std is not None and ref_row.cells[cell] is not None else text


def _cell_text(e: Entry, cell: str) -> str:
    published = e.ref_row.cells[cell] if e.ref_row else None
    if e.row is None:
        return f"{e.status} / {_published_text(e.ref_row, cell)}"
    mean, _ = _ours(e.row, cell, e.ref_row)
    text = f"{fmt(mean)} / {_published_text(e.ref_row, cell)}"
    if mean is not None and published is not None:
        text += f" ({fmt(mean - published, signed=True)})"
    return text


def _md_escape(text: str) -> str:
    """A printed label may hold ``|`` (``|g_i| = 1``): escaped so that it does not split a markdown cell."""
    return text.replace("|", "\\|")


def _markdown(ref: Reference, entries: list[Entry], rows: list[Row]) -> str:
    meta = ref.metadata
    metric = meta.get("metric", "value")
    per_row_metric = any(r.metric for r in ref.rows)
    out = [f"## {ref.path.stem}", "",
           f"Published: {meta.get('source', '(source not stated)')} — from `results/reference/{ref.path.name}`"
           " (published numbers, not computed).", "",
           f"Cells read `ours / published (ours − published)`; ours is the mean over seeds. Metric: {metric}"
           f" ({'higher' if ref.higher_is_better else 'lower'} is better"
           f"{'; per row: the metric column' if per_row_metric else ''}); total: {meta.get('total', 'total')}.", ""]
    if ref.totals_only:
        out += ["The paper prints totals only: compared on totals.", ""]
    if ref.best_over_splits and any(e.ours_n_groups is not None for e in entries):
        out += ["Rows without a split count (the paper chose the number of groups) are set beside our best row over "
                "the split counts run; `ours k` names it.", ""]
    ours_data = sorted({r.data for r in rows})
    if any("synthetic" in d for d in ours_data):
        out += [f"> **{NOT_COMPARABLE}.** These runs used a generated stand-in that only shares the dataset id; "
                "the differences below mean nothing about the paper.", ""]
    metrics = sorted({r.metric for r in rows if not r.extra} - set(ref.metrics))
    if metrics:
        out += [f"> **metric mismatch**: ours reports {', '.join(metrics)}, the paper {', '.join(ref.metrics)}.", ""]
    show_k = any(r.k is not None for r in ref.rows)
    show_ours_k = any(e.ours_n_groups is not None for e in entries)
    total = "Total" if per_row_metric else total_header(metric, ref.higher_is_better)
    header = ["method", "label", *(["metric"] if per_row_metric else []), *ref.tasks, total,
              *(["paper k"] if show_k else []), *(["ours k"] if show_ours_k else []), "n_seeds", "data"]
    datasets = ref.datasets
    for n_groups in sorted({e.block for e in entries}, key=lambda n: (n is not None, n or 0)):
        body = []
        for e in (e for e in entries if e.block == n_groups):
            ref_row, row = e.ref_row, e.row
            cells = [_cell_text(e, c) for c in (*ref.tasks, "total")]
            data = "" if row is None else (f"{row.data} — not comparable" if "synthetic" in row.data else row.data)
            method = ref_row.method if ref_row else row.method
            if len(datasets) > 1:
                method = f"{ref_row.dataset if ref_row else row.dataset}: {method or '—'}"
            line = [method or "—", ref_row.label if ref_row else "—"]
            if per_row_metric:
                line.append((ref_row.metric if ref_row else "") or (row.metric if row else ""))
            line += cells
            if show_k:
                line.append("" if ref_row is None or ref_row.k is None else str(ref_row.k))
            if show_ours_k:
                line.append("" if e.ours_n_groups is None else str(e.ours_n_groups))
            line += [str(row.n_seeds) if row else "0", data]
            body.append([_md_escape(c) for c in line])
        heading = NO_SPLIT_COUNT if n_groups is None and ref.best_over_splits else block_label(n_groups)
        out += [f"### {heading}", "", markdown_table(header, body), ""]
    return "\n".join(out)


def compare(out_dir: str | Path, ref_dir: str | Path | None = None) -> list[Path]:
    """Write ``OUT/compare/<reference>.csv``/``.md`` for each matching reference and ``summary.md``; return them."""
    out_dir = Path(out_dir)
    records = deduplicate(load_records(out_dir))
    rows = aggregate(records, extra_metrics=True)
    references = load_references(ref_dir)
    ours_datasets = sorted({r["dataset"] for r in records})
    matching = [ref for ref in references if set(ref.datasets) & set(ours_datasets)]
    if not matching:
        available = "; ".join(f"{', '.join(ref.datasets)} ({ref.path.name})" for ref in references)
        raise UsageError(f"no reference matches the datasets in {out_dir / 'records.jsonl'}. Reference datasets: "
                         f"{available}. Datasets in the records: {', '.join(ours_datasets)}")
    # the latest status of runs that produced no row, so that a failed run does not read as "not run"
    statuses = {(r["dataset"], r["method"], split_key(r)): r["status"] for r in records if r["status"] != "ok"}
    target = out_dir / "compare"
    target.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for ref in matching:
        ref_rows = [r for r in rows if r.dataset in ref.datasets]
        entries = _entries(ref, ref_rows, statuses)
        csv_path, md_path = target / f"{ref.path.stem}.csv", target / f"{ref.path.stem}.md"
        csv_path.write_text(_long_csv(ref, entries), encoding="utf-8", newline="")
        section = _markdown(ref, entries, ref_rows)
        md_path.write_text(section, encoding="utf-8")
        written += [csv_path, md_path]
        sections.append(section)
    skipped = [f"- `{ref.path.name}` (dataset {', '.join(ref.datasets)}): not in the records"
               for ref in references if ref not in matching]
    summary = ["# Comparison with published numbers", "", *sections]
    if skipped:
        summary += ["## References not compared", "", *skipped, ""]
    (target / "summary.md").write_text("\n".join(summary), encoding="utf-8")
    written.append(target / "summary.md")
    return written
