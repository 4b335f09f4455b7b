"""task_features_ls: the paper's objective (total loss) against the relative one, and the quick-reject predictor's
relative-gain wrapper."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench import registry
from bench.errors import UsageError
from bench.method import Context
from bench.types import GroupResult, Task, make_group

STL = {"a": 10.0, "b": 10.0, "c": 1.0, "d": 1.0}
# {a,c} + {b,d} lowers the total MSE by 4 (relative gains 0.1 + 0 twice: 0.2 each); {a,b} + {c,d} by 3 only
# (relative gains 0.1 + 0.1 and 0.5 + 0.5: 1.2 in all). Every other group is worse than its single-task models.
GROUPS = {("a", "b"): {"a": 9.0, "b": 9.0}, ("c", "d"): {"c": 0.5, "d": 0.5},
          ("a", "c"): {"a": 8.0, "c": 1.0}, ("b", "d"): {"b": 8.0, "d": 1.0}}


class _Problem:
    task_names = tuple(STL)
    tasks = tuple(Task(t) for t in STL)

    def check_group(self, group):
        return make_group(group)


def _train(group, seed):
    values = dict(STL) if len(group) == 1 else GROUPS.get(group, {t: 1.5 * STL[t] for t in group})
    values = {t: values[t] for t in group}
    return GroupResult(group=group, seed=seed, val=values, test=values)


@pytest.mark.parametrize("objective,want", [("loss", {("a", "c"), ("b", "d")}),
                                            ("relative", {("a", "b"), ("c", "d")})])
def test_the_objective_decides_between_total_loss_and_relative_gains(objective, want):
    """Every partition of the 4 tasks into 2 groups is in the sample (7 of them, 60 draws); the default objective
    (``loss``) picks the one with the lowest total metric, ``relative`` the largest sum of relative gains."""
    method = registry.create("method", f"task_features_ls[objective={objective},quick_reject=false,iterations=0,"
                                       f"initial_partitions=60]")
    grouping = method.solve(None, 2, Context(_Problem(), 0, _train))
    assert {tuple(g) for g in grouping.groups} == want


def test_an_unknown_objective_is_refused():
    with pytest.raises(UsageError, match="objective must be one of loss, relative, got 'mse'"):
        registry.create("method", "task_features_ls[objective=mse]").check()


class _Recorder:
    def __init__(self):
        self.fits, self.predicted = [], []

    def fit(self, groups, values):
        self.fits.append(dict(zip(groups, values)))

    def predict(self, groups):
        self.predicted.append(list(groups))
        return np.full(len(groups), 0.5)


def test_the_predictor_learns_relative_gains_first_on_groups_of_three_or_more():
    RelativeGainPredictor = sys.modules[type(registry.create("method", "task_features_ls")).__module__]\
        .RelativeGainPredictor
    inner = _Recorder()
    scale = {("a", "b"): 20.0, ("a", "b", "c"): 21.0, ("a",): 10.0}
    wrapped = RelativeGainPredictor(inner, scale.__getitem__)
    wrapped.fit([("a",), ("a", "b"), ("a", "b", "c")], [0.0, 2.0, 4.2])
    assert inner.fits[0] == {("a", "b", "c"): pytest.approx(0.2)}  # the paper's first fit: more than 2 tasks
    wrapped.fit([("a",), ("a", "b"), ("a", "b", "c")], [0.0, 2.0, 4.2])
    assert inner.fits[1] == {("a",): 0.0, ("a", "b"): pytest.approx(0.1), ("a", "b", "c"): pytest.approx(0.2)}
    assert wrapped.predict([("a", "b"), ("a", "b", "c")]).tolist() == [10.0, 10.5]
    # a singleton is worth 0 by definition (its own single-task model): never asked of the inner predictor
    inner.predicted = []
    assert wrapped.predict([("a",), ("a", "b"), ("c",)]).tolist() == [0.0, 10.0, 0.0]
    assert inner.predicted == [[("a", "b")]]
    assert wrapped.predict([("b",)]).tolist() == [0.0] and inner.predicted == [[("a", "b")]]
