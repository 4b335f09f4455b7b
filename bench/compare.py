"""Our results beside the published ones (``results/reference/*.csv``), cell by cell.

Each reference file transcribes one published table (e.g. transfer-gain-mip Table 2, Taskonomy) as printed; see
``results/reference/README.md``. :func:`compare` aggregates ``OUT/records.jsonl`` exactly as the tables do
(:func:`bench.tables.aggregate`) and, for every reference whose dataset id appears in the records, writes
``OUT/compare/<reference>.csv`` (long format, one line per row and cell) and ``<reference>.md`` (cells read
``ours / published (ours − published)``), plus ``OUT/compare/summary.md``. Rows are matched on
(dataset, n_groups, method id) exactly; nothing is guessed. Results on a synthetic stand-in are flagged loudly:
they share the dataset id but not the data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bench
from bench.errors import UsageError
from bench.tables import (
    Row, aggregate, block_label, deduplicate, fmt, load_records, markdown_table, row_order, split_key, total_header,
)

DEFAULT_REFERENCE_DIR = Path(bench.__file__).resolve().parent.parent / "results" / "reference"
_FIXED = ("dataset", "n_groups", "method", "label")
LONG_HEADER = ("dataset", "n_groups", "method", "label", "cell", "published", "ours_mean", "ours_std", "n_seeds",
               "diff", "data")
NOT_COMPARABLE = "ours: data=synthetic — not comparable"


@dataclass(frozen=True)
class RefRow:
    """One published row; ``cells`` maps each task and ``total`` to its value (None: empty in the paper)."""

    dataset: str
    n_groups: int | None
    method: str
    label: str
    cells: Mapping[str, float | None]

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.dataset, self.method, self.n_groups)


@dataclass(frozen=True)
class Reference:
    """A published table: ``metadata`` from its ``# key: value`` lines, task columns, rows in published order."""

    path: Path
    metadata: Mapping[str, str]
    tasks: tuple[str, ...]
    rows: tuple[RefRow, ...]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({r.dataset for r in self.rows}))

    @property
    def higher_is_better(self) -> bool:
        return self.metadata.get("higher_is_better", "").strip().lower() in ("true", "yes", "1")


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    text = text.strip()
    if text in ("", "-", "—"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{path}:{line}: column {column!r} holds {text!r}; expected a number or an empty cell")


def load_reference(path: str | Path) -> Reference:
    """Parse one reference file: ``# key: value`` comment lines, then a CSV (see ``results/reference/README.md``)."""
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
                         "dataset,n_groups,method,label,<task>...,total")
    tasks = tuple(c for c in columns if c not in _FIXED and c != "total")
    rows = []
    for offset, raw in enumerate(reader, start=start + 2):
        n_groups = raw["n_groups"].strip()
        cells = {c: _number(raw[c] or "", path, offset, c) for c in (*tasks, "total")}
        rows.append(RefRow(raw["dataset"].strip(), int(n_groups) if n_groups else None, raw["method"].strip(),
                           raw["label"].strip(), cells))
    if not rows:
        raise UsageError(f"{path}: no data rows")
    return Reference(path, metadata, tasks, tuple(rows))


def load_references(ref_dir: str | Path | None = None) -> list[Reference]:
    """Every ``*.csv`` of the reference folder (default: ``results/reference`` at the repository root), by name."""
    ref_dir = Path(ref_dir) if ref_dir is not None else DEFAULT_REFERENCE_DIR
    files = sorted(ref_dir.glob("*.csv")) if ref_dir.is_dir() else []
    if not files:
        raise UsageError(f"no reference files (*.csv) in {ref_dir}")
    return [load_reference(f) for f in files]


def _ours(row: Row | None, cell: str) -> tuple[float | None, float | None]:
    if row is None:
        return None, None
    if cell == "total":
        return row.total_mean, row.total_std
    return row.mean.get(cell), row.std.get(cell)


def _lines(ref: Reference, rows: list[Row], statuses: Mapping[tuple, str]):
    """(block n_groups, ref row or None, our row or None, status) in display order: published rows, then ours-only."""
    ours = {(r.dataset, r.method, r.n_groups): r for r in rows if r.dataset in ref.datasets}
    published = {r.key for r in ref.rows}
    entries = [(r.n_groups, r, ours.get(r.key), statuses.get(r.key, "not run")) for r in ref.rows]
    entries += [(r.n_groups, None, r, "ok") for r in sorted(ours.values(), key=lambda r: (r.dataset, row_order(r)))
                if (r.dataset, r.method, r.n_groups) not in published]
    # stable sort: blocks ascending (split-independent first), published order kept within a block
    return sorted(entries, key=lambda e: (e[0] is not None, e[0] or 0))


def _long_csv(ref: Reference, entries) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LONG_HEADER)
    for n_groups, ref_row, row, _ in entries:
        dataset = ref_row.dataset if ref_row else row.dataset
        method = ref_row.method if ref_row else row.method
        for cell in (*ref.tasks, "total"):
            published = ref_row.cells[cell] if ref_row else None
            mean, std = _ours(row, cell)
            diff = mean - published if mean is not None and published is not None else None
            values = [dataset, n_groups, method, ref_row.label if ref_row else "", cell, published, mean, std,
                      row.n_seeds if row else 0, diff, row.data if row else ""]
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def _cell_text(row: Row | None, status: str, published: float | None, cell: str) -> str:
    if row is None:
        return f"{status} / {fmt(published)}"
    mean, _ = _ours(row, cell)
    text = f"{fmt(mean)} / {fmt(published)}"
    if mean is not None and published is not None:
        text += f" ({fmt(mean - published, signed=True)})"
    return text


def _markdown(ref: Reference, entries, rows: list[Row]) -> str:
    meta = ref.metadata
    metric = meta.get("metric", "value")
    out = [f"## {ref.path.stem}", "",
           f"Published: {meta.get('source', '(source not stated)')} — from `results/reference/{ref.path.name}`"
           " (published numbers, not computed).", "",
           f"Cells read `ours / published (ours − published)`; ours is the mean over seeds. Metric: {metric}"
           f" ({'higher' if ref.higher_is_better else 'lower'} is better); total: {meta.get('total', 'total')}.", ""]
    ours_data = sorted({r.data for r in rows})
    if any("synthetic" in d for d in ours_data):
        out += [f"> **{NOT_COMPARABLE}.** These runs used a generated stand-in that only shares the dataset id; "
                "the differences below mean nothing about the paper.", ""]
    metrics = sorted({r.metric for r in rows} - {metric})
    if metrics:
        out += [f"> **metric mismatch**: ours reports {', '.join(metrics)}, the paper {metric}.", ""]
    header = ["method", "label", *ref.tasks, total_header(metric, ref.higher_is_better), "n_seeds", "data"]
    for n_groups in sorted({e[0] for e in entries}, key=lambda n: (n is not None, n or 0)):
        body = []
        for _, ref_row, row, status in (e for e in entries if e[0] == n_groups):
            cells = [_cell_text(row, status, ref_row.cells[c] if ref_row else None, c) for c in (*ref.tasks, "total")]
            data = "" if row is None else (f"{row.data} — not comparable" if "synthetic" in row.data else row.data)
            body.append([ref_row.method if ref_row else row.method, ref_row.label if ref_row else "—", *cells,
                         str(row.n_seeds) if row else "0", data])
        out += [f"### {block_label(n_groups)}", "", markdown_table(header, body), ""]
    return "\n".join(out)


def compare(out_dir: str | Path, ref_dir: str | Path | None = None) -> list[Path]:
    """Write ``OUT/compare/<reference>.csv``/``.md`` for each matching reference and ``summary.md``; return them."""
    out_dir = Path(out_dir)
    records = deduplicate(load_records(out_dir))
    rows = aggregate(records)
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
        entries = _lines(ref, ref_rows, statuses)
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
