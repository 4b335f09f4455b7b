"""Frozen value types passed between the layers: tasks, groups, group results and groupings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from bench.errors import UsageError

Group = tuple[str, ...]
"""A group of tasks: a sorted tuple of task names (see :func:`make_group`)."""

Semantics = Literal["select", "partition"]


def make_group(tasks: Iterable[str]) -> Group:
    """The canonical form of a group: sorted, without duplicates, non-empty."""
    group = tuple(sorted(set(tasks)))
    if not group:
        raise UsageError("a group must hold at least one task")
    return group


def group_label(group: Group) -> str:
    """``a+b+c``: the form used in CSV files and on the command line."""
    return "+".join(group)


@dataclass(frozen=True)
class Task:
    """One task of a problem.

    ``metric`` is what tables report per task (``mse``, ``mae``, ``error`` in percent, ``gain``, ...);
    ``higher_is_better`` says in which direction a group is better for this task; ``loss`` names the training
    loss (see :mod:`bench.metrics`).
    """

    name: str
    kind: Literal["regression", "classification", "gain"] = "regression"
    metric: str = "mse"
    higher_is_better: bool = False
    loss: str = "mse"
    extra_metrics: tuple[str, ...] = ()
    """Further metrics reported beside ``metric`` (e.g. ``auc`` for Landmine, ``error`` for Chemical); they are
    stored in :attr:`GroupResult.extra` and shown in tables, never used for selection."""

    def utility(self, value: float) -> float:
        """The value turned so that larger is always better (for selection)."""
        return value if self.higher_is_better else -value


@dataclass(frozen=True)
class GroupResult:
    """The outcome of training one group (or looking it up in a published table).

    ``val`` and ``test`` map each member task to its metric on the validation and test split; ``val_loss`` holds
    the per-task validation loss at the selected epoch. ``extra`` holds the tasks' further metrics
    (``extra[split][metric][task]``, split ``val`` or ``test``; may be NaN, e.g. an AUC on one class).
    ``curves`` holds per-epoch series (``train_loss``,
    ``val_loss``, ``lr``). ``wall_time_s`` is the time the training took when it was computed; a cache hit keeps
    it and sets ``cached``.
    """

    group: Group
    seed: int
    val: Mapping[str, float]
    test: Mapping[str, float]
    val_loss: Mapping[str, float] = field(default_factory=dict)
    curves: Mapping[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int = 0
    wall_time_s: float = 0.0
    device: str = "cpu"
    cached: bool = False
    extra: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [t for t in self.group if t not in self.val or t not in self.test]
        if missing:
            raise ValueError(f"GroupResult for {self.group} lacks metrics for {missing}")
        bad = [t for t in self.group if not (math.isfinite(self.val[t]) and math.isfinite(self.test[t]))]
        if bad:
            raise ValueError(f"GroupResult for {self.group} has non-finite metrics for {bad}")

    def extra_value(self, metric: str, task: str, split: str = "test") -> float | None:
        """Task ``task``'s further metric ``metric`` on ``split``; None where it is missing or undefined (NaN)."""
        value = self.extra.get(split, {}).get(metric, {}).get(task)
        return None if value is None or math.isnan(value) else float(value)

    def to_json(self) -> dict:
        data = asdict(self)
        data["group"] = list(self.group)
        data["val"] = dict(self.val)
        data["test"] = dict(self.test)
        data["val_loss"] = dict(self.val_loss)
        data["curves"] = {k: list(v) for k, v in self.curves.items()}
        data["extra"] = {s: {m: dict(v) for m, v in by.items()} for s, by in self.extra.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> GroupResult:
        data = dict(data)
        data["group"] = tuple(data["group"])
        return cls(**data)


@dataclass(frozen=True)
class Grouping:
    """A set of groups and the semantics under which it was chosen.

    ``select``: the groups may overlap and every task is served by its best chosen group (network selection);
    ``partition``: the groups are disjoint and cover every task. ``served`` (optional): the group the method itself
    chose to serve each task, ``(task, group)`` pairs in task order (MTG-Net serves a task by its highest
    *predicted* gain); evaluation reads it under ``serve_by="predicted"``. ``solved_by`` (optional): the solver
    that chose the groups and its status, ``optimal`` (proved), ``feasible`` (stopped by a limit, optimality not
    proved) or ``heuristic``; the runner records it.
    """

    groups: tuple[Group, ...]
    semantics: Semantics = "select"
    served: tuple[tuple[str, Group], ...] | None = None
    solved_by: tuple[str, str] | None = None

    @classmethod
    def of(cls, groups: Iterable[Iterable[str]], semantics: Semantics = "select",
           served: Mapping[str, Iterable[str]] | None = None, solved_by: tuple[str, str] | None = None) -> Grouping:
        canon = sorted({make_group(g) for g in groups}, key=lambda g: (len(g), g))
        pairs = None if served is None else tuple((t, make_group(served[t])) for t in sorted(served))
        return cls(tuple(canon), semantics, pairs, solved_by)

    def validate(self, tasks: Iterable[str], max_groups: int | None = None) -> None:
        """Raise ``ValueError`` unless this grouping covers ``tasks`` and obeys its semantics."""
        tasks = set(tasks)
        used = [t for g in self.groups for t in g]
        unknown = set(used) - tasks
        if unknown:
            raise ValueError(f"grouping names unknown tasks {sorted(unknown)}")
        missing = tasks - set(used)
        if missing:
            raise ValueError(f"grouping leaves tasks {sorted(missing)} uncovered")
        if self.semantics == "partition" and len(used) != len(set(used)):
            raise ValueError("a partition must not repeat a task")
        if max_groups is not None and len(self.groups) > max_groups:
            raise ValueError(f"grouping has {len(self.groups)} groups, at most {max_groups} allowed")
        if self.served is not None:
            served = dict(self.served)
            wrong = sorted(t for t in tasks if t not in served.get(t, ()) or served[t] not in self.groups)
            if wrong or set(served) - tasks:
                raise ValueError(f"the serving groups of tasks {wrong or sorted(set(served) - tasks)} are not "
                                 f"chosen groups that hold them")

    def as_lists(self) -> list[list[str]]:
        return [list(g) for g in self.groups]
