"""Problems answered by lookup in published task-combination gain tables (MTG-Net's collected gains).

MTG-Net (Song et al., NeurIPS'22) published, for Taskonomy (5 tasks), ETTm1 (7) and MIMIC-III (27), one row per
trained task combination: a 0/1 membership mask file (``*_x.csv``) and per-task gain files (test, and for ETTm1
and MIMIC also validation), the gain of a task in a group being its relative loss reduction against its
single-task model (so every singleton row is 0). ``train(group)`` is a lookup: real ground truth for every group in
the table without training. Groups absent from a table (MIMIC holds 3,185 of 2^27-1) raise :class:`Unsupported`.

Without a data root, a stand-in table is generated (``data=synthetic`` in every record): planted clusters of
tasks, the gain of a task being ``+a`` per same-cluster partner and ``-b`` per other-cluster partner, averaged over
the partners, plus a small deterministic perturbation. Where the published table lists some groups only, so does
the stand-in (``stand_in_listed``): every singleton and pair, the all-task group and as many further random groups
(sizes uniform in a range) as the published table has, so that methods meet the same restriction without data.
With a data root that lacks the files, loading fails with the list of files expected and where to get them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.dataset import Dataset, Problem, file_digest
from bench.errors import DataNotFound, Unsupported
from bench.seeding import rng
from bench.types import Group, GroupResult, Task, make_group

MTGNET_SOURCE = "https://github.com/ShawnKS/MTG-Net (folder gain_collection/collected_gain/)"


def read_table(path: Path, n_cols: int | None = None) -> np.ndarray:
    """A whitespace- or comma-separated numeric table; a clear error names the file when it is malformed."""
    try:
        rows = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
        table = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataNotFound(f"cannot read {path}: {exc}; expected rows of numbers separated by spaces or commas")
    if table.ndim != 2 or (n_cols is not None and table.shape[1] != n_cols):
        shape = table.shape if table.ndim == 2 else "ragged rows"
        raise DataNotFound(f"{path} has shape {shape}; expected {n_cols} columns (one per task)")
    return table


class TabulatedProblem(Problem):
    """A problem whose ``train(group)`` looks the group up in a table of per-task (val, test) values."""

    cacheable = False

    def __init__(self, tasks, data, identity, table: dict[Group, tuple[dict, dict]] | None = None,
                 gain_fn=None, planted_groups=None) -> None:
        super().__init__(tasks, data, identity, planted_groups)
        self._table = table
        self._gain_fn = gain_fn

    def n_candidate_groups(self) -> int:
        return len(self._table) if self._table is not None else super().n_candidate_groups()

    def candidate_groups(self) -> list[Group]:
        if self._table is not None:
            return sorted(self._table, key=lambda g: (len(g), g))
        return super().candidate_groups()

    def train(self, group, seed, callbacks=(), device="cpu") -> GroupResult:
        group = self.check_group(group)
        if self._table is not None:
            if group not in self._table:
                raise Unsupported(
                    f"group {'+'.join(group)} is not in the published table ({len(self._table)} of "
                    f"{(1 << self.n_tasks) - 1} groups); tabulated datasets can only evaluate listed groups"
                )
            val, test = self._table[group]
        else:
            val = test = self._gain_fn(group)
        return GroupResult(group=group, seed=seed, val=dict(val), test=dict(test), device="lookup")


class GainTableDataset(Dataset):
    """Base of the tabulated-gain dataset plugins; a subclass names its files and tasks."""

    folder: ClassVar[str] = ""
    mask_file: ClassVar[str] = ""
    test_file: ClassVar[str] = ""
    val_file: ClassVar[str | None] = None  # None: the table has one value per cell, used for val and test
    task_names: ClassVar[tuple[str, ...]] = ()
    stand_in_clusters: ClassVar[tuple[int, ...]] = ()
    stand_in_listed: ClassVar[tuple[int, int, int] | None] = None
    """``(count, min_size, max_size)``: the stand-in lists ``count`` random groups of those sizes beside every
    singleton, every pair and the all-task group (``None``: it lists every group)."""
    profiles = {"smoke": {}, "mini": {}, "paper": {}}

    def files(self, root: Path) -> list[Path]:
        names = [self.mask_file, self.test_file] + ([self.val_file] if self.val_file else [])
        return [root / self.folder / name for name in names]

    def tasks(self) -> list[Task]:
        return [Task(t, kind="gain", metric="gain", higher_is_better=True, loss="none") for t in self.task_names]

    def build(self, settings: dict[str, Any], profile: str, data_root: Path | None) -> Problem:
        if data_root is None:
            return self._stand_in(profile)
        files = self.files(data_root)
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise DataNotFound(
                f"{self.name}: missing {', '.join(str(p) for p in missing)} under the data root {data_root}. "
                f"Download the files {', '.join(p.name for p in files)} from {MTGNET_SOURCE} into "
                f"{data_root / self.folder}, or run without --data-root for the synthetic stand-in."
            )
        n = len(self.task_names)
        mask = read_table(files[0], n)
        test = read_table(files[1], n)
        val = read_table(files[2], n) if self.val_file else test
        if not (mask.shape == test.shape == val.shape):
            raise DataNotFound(f"{self.name}: the mask and gain files under {data_root / self.folder} differ in "
                               f"row count ({mask.shape[0]}, {test.shape[0]}, {val.shape[0]})")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise DataNotFound(f"{files[0]} must hold only 0 and 1")
        table: dict[Group, tuple[dict, dict]] = {}
        for row in range(mask.shape[0]):
            members = make_group(self.task_names[i] for i in np.flatnonzero(mask[row]))
            if members in table:
                raise DataNotFound(f"{files[0]} lists the group {'+'.join(members)} twice (rows are combinations)")
            table[members] = (
                {t: float(val[row, self.task_names.index(t)]) for t in members},
                {t: float(test[row, self.task_names.index(t)]) for t in members},
            )
        identity = self.base_identity(profile, {}, "real", file_digest(files))
        return TabulatedProblem(self.tasks(), "real", identity, table=table)

    def _stand_in(self, profile: str) -> Problem:
        names = list(self.task_names)
        sizes = self.stand_in_clusters or (len(names),)
        cluster = {t: c for c, size in enumerate(sizes) for t in names[sum(sizes[:c]) : sum(sizes[:c]) + size]}
        planted = [[t for t in names if cluster[t] == c] for c in range(len(sizes))]

        def gain(group: Group) -> dict[str, float]:
            out = {}
            for t in group:
                partners = [u for u in group if u != t]
                if not partners:
                    out[t] = 0.0
                    continue
                base = np.mean([0.1 if cluster[u] == cluster[t] else -0.15 for u in partners])
                out[t] = float(base + 0.02 * rng(0, self.name, t, *group).standard_normal())
            return out

        if self.stand_in_listed is None:
            identity = self.base_identity(profile, {}, "synthetic", "stand-in-1")
            problem = TabulatedProblem(self.tasks(), "synthetic", identity, gain_fn=gain, planted_groups=planted)
        else:
            count, lo, hi = self.stand_in_listed
            listed = {make_group((t,)) for t in names} | {make_group(p) for p in itertools.combinations(names, 2)}
            listed.add(make_group(names))
            gen, extra = rng(0, self.name, "listed"), set()
            while len(extra) < count:
                group = make_group(names[i] for i in gen.choice(len(names), int(gen.integers(lo, hi + 1)), False))
                if group not in listed:
                    extra.add(group)
            table = {g: (gain(g), gain(g)) for g in sorted(listed | extra, key=lambda g: (len(g), g))}
            identity = self.base_identity(profile, {}, "synthetic", "stand-in-listed-1")
            problem = TabulatedProblem(self.tasks(), "synthetic", identity, table=table, planted_groups=planted)
        problem.notice = (
            f"{self.name}: no data root given, using a synthetic stand-in (data=synthetic). For the real table, "
            f"download {', '.join(p.name for p in self.files(Path('.')))} from {MTGNET_SOURCE} into "
            f"DIR/{self.folder} and pass --data-root DIR (or set BENCH_DATA_ROOT)."
        )
        return problem

