"""Selection semantics: how a grouping is scored on ground truth.

Network selection (HOA, TAG, ETAP, MTG-Net and the Optimal baseline): the chosen groups may overlap and each task
is scored in the chosen group that is best for it; the total is the sum over tasks. A partition is the special
case of disjoint groups. Choosing the groups is the solvers' job (:mod:`bench.solvers`); :func:`candidates`
turns measured group results into the candidates of a network-selection problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.errors import UsageError
from bench.solvers.base import Candidate
from bench.types import Group, GroupResult, Grouping, Task

SERVE_BY = ("val", "test", "predicted")


@dataclass(frozen=True)
class Evaluation:
    """A grouping scored on ground truth: per task, the test and validation value of the group serving it, and
    ``extra[metric][task]``: the tasks' further test metrics (AUC, error; :attr:`Task.extra_metrics`) in that same
    group, None where the metric is undefined (an AUC on a test set of one class)."""

    per_task: dict[str, float]
    per_task_val: dict[str, float]
    served_by: dict[str, Group]
    extra: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.per_task.values()))


def evaluate(grouping: Grouping, results: Mapping[Group, GroupResult], tasks: Sequence[Task],
             serve_by: str = "val") -> Evaluation:
    """Score ``grouping``: each task takes the test value of its best chosen group by ``serve_by`` (``val`` or
    ``test``), or of the group the method chose for it (``predicted``: ``grouping.served``).

    Ties go to the first group in the grouping's canonical order, so the result is deterministic.
    """
    if serve_by not in SERVE_BY:
        raise UsageError(f"serve_by must be one of {', '.join(SERVE_BY)}, got {serve_by!r}")
    if serve_by == "predicted" and grouping.served is None:
        raise UsageError("serve_by='predicted' needs the grouping's serving groups (Grouping.served)")
    grouping.validate([t.name for t in tasks])
    chosen = dict(grouping.served or ())
    per_task, per_val, served = {}, {}, {}
    for task in tasks:
        best = chosen[task.name] if serve_by == "predicted" else _best_by(grouping, results, task, serve_by)
        per_task[task.name] = float(results[best].test[task.name])
        per_val[task.name] = float(results[best].val[task.name])
        served[task.name] = best
    extra: dict[str, dict[str, float | None]] = {}
    for task in tasks:
        for metric in task.extra_metrics:
            extra.setdefault(metric, {})[task.name] = results[served[task.name]].extra_value(metric, task.name)
    return Evaluation(per_task, per_val, served, extra)


def _best_by(grouping: Grouping, results: Mapping[Group, GroupResult], task: Task, split: str) -> Group:
    """The chosen group holding ``task`` with the best ``split`` value for it (the first of equals)."""
    best, best_u = None, -math.inf
    for group in grouping.groups:
        if task.name in group:
            u = task.utility(getattr(results[group], split)[task.name])
            if u > best_u:
                best, best_u = group, u
    assert best is not None  # validate() guarantees coverage
    return best


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are defined (not None, not NaN); None when none is."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else None


def candidates(results: Mapping[Group, GroupResult], tasks: Sequence[Task], split: str = "val") -> list[Candidate]:
    """One candidate per measured group, each member's utility its ``split`` metric turned larger-is-better."""
    by_name = {t.name: t for t in tasks}
    return [Candidate(g, {t: by_name[t].utility(getattr(r, split)[t]) for t in g}) for g, r in results.items()]
