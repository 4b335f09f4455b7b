"""MTL gain: how much better a task does in a group than in its single-task model.

The quantity every predictor learns and every predictor table scores (ETAP's "reduction in loss due to learning a
group of tasks jointly versus independently", MTG-Net's gain tables, the pairwise gains of the tabular-divergence
paper). For task ``t`` in group ``G`` with metric value ``m_G`` and single-task value ``m_S``:

- lower-is-better metrics (losses, errors): ``gain = (m_S - m_G) / |m_S|``;
- higher-is-better metrics (accuracy, F1): ``gain = (m_G - m_S) / |m_S|``;
- ``kind == "gain"`` (published gain tables, already relative to the single-task model; singletons are 0):
  ``gain = m_G - m_S``.

So a positive gain is always positive transfer, and a singleton's gain is 0. Choice made here: the relative form
(MTG-Net's tables use it); a single-task value of exactly 0 leaves the relative gain undefined and raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.errors import BenchError
from bench.types import Group, GroupResult, Task


@dataclass(frozen=True)
class Observation:
    """The measured gain of each member of one trained group (on one split)."""

    group: Group
    gains: Mapping[str, float]


def task_gain(task: Task, value: float, stl_value: float) -> float:
    if task.kind == "gain":
        return float(value - stl_value)
    if stl_value == 0:
        raise BenchError(f"task {task.name}: single-task {task.metric} is 0, the relative gain is undefined")
    diff = value - stl_value if task.higher_is_better else stl_value - value
    return float(diff / abs(stl_value))


def gain_unit(task: Task, stl_value: float) -> float:
    """What turns ``task``'s relative gain into the metric's units: ``|m_S|`` (1 for ``gain`` tasks, whose gains
    are already differences), so that ``task_gain * gain_unit`` is :func:`task_improvement`."""
    return 1.0 if task.kind == "gain" else abs(float(stl_value))


def task_improvement(task: Task, value: float, stl_value: float) -> float:
    """The absolute form of :func:`task_gain`: ``m_S - m_G`` (lower-is-better) or ``m_G - m_S``, in the metric's
    own units (``kind == "gain"``: ``m_G - m_S``, as :func:`task_gain`). Summed over a partition's tasks it is the
    fall of the partition's total metric against the single-task models."""
    if task.kind == "gain":
        return float(value - stl_value)
    return float(value - stl_value if task.higher_is_better else stl_value - value)


def observe(result: GroupResult, stl: Mapping[str, GroupResult], tasks: Sequence[Task],
            split: str = "val") -> Observation:
    """The gains of ``result``'s members against their single-task results ``stl[task]`` on ``split``."""
    by_name = {t.name: t for t in tasks}
    values = getattr(result, split)
    gains = {t: task_gain(by_name[t], values[t], getattr(stl[t], split)[t]) for t in result.group}
    return Observation(result.group, gains)
