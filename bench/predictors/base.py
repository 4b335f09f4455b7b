"""Gain predictors: from a few trained groups (and a signal), the MTL gain of any group.

A predictor is a building block of a method (``bench/predictors/<name>.py``, kind ``predictor``; a user's own goes
in ``<root>/predictors/``). Its life:

1. :meth:`Predictor.training_groups` names the groups it wants ground truth for (all pairs for HOA, random
   groups for ETAP and the linear surrogate, the all-task group for MTG-Net, which then asks for more itself);
2. the caller trains them (cached, counted) and turns each into an :class:`~bench.gains.Observation` (per-task
   gain against the single-task models, :mod:`bench.gains`);
3. :meth:`Predictor.fit` learns from the observations and the :class:`Evidence` (an affinity matrix, an oracle
   for active sampling);
4. :meth:`Predictor.predict` gives the predicted gain of each member of any group (a singleton's gain is 0 by
   definition and is never asked of the model).

Predictors never time, cache, seed globally, print or write files; randomness comes from the ``seed`` of ``fit``
and the generator handed to ``training_groups``.
"""

from __future__ import annotations

import itertools
from math import comb
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bench.component import Component
from bench.errors import UsageError
from bench.gains import Observation
from bench.signals.base import Affinity
from bench.types import Group, make_group

EVIDENCE = ("affinity", "oracle")


@dataclass(frozen=True)
class Evidence:
    """What a predictor may use besides the observations.

    ``affinity``: a signal's output (its ``matrix``, and ``features`` / ``task_features`` where the signal made
    them). ``oracle(group)``: the measured observation of a further group (a ground-truth training, cached and
    counted by the caller), for predictors that choose their own training groups as they go (MTG-Net's active
    sampling).
    """

    tasks: tuple[str, ...]
    affinity: Affinity | None = None
    oracle: Callable[[Group], Observation] | None = None
    listed: Sequence[Group] | None = None
    """The only groups the oracle can measure (:meth:`bench.dataset.Problem.listed_groups`); ``None``: every group."""


def listed_pool(listed: Iterable[Iterable[str]], min_size: int, max_size: int,
                exclude: Iterable[Group] = ()) -> list[Group]:
    """The distinct ``listed`` groups of ``min_size .. max_size`` tasks not in ``exclude``, canonical and in size then
    lexicographic order: what a table that lists some groups only offers to draw or enumerate."""
    seen = {make_group(g) for g in exclude}
    groups = {make_group(g) for g in listed}
    return sorted((g for g in groups if min_size <= len(g) <= max_size and g not in seen), key=lambda g: (len(g), g))


def random_groups(tasks: Sequence[str], count: int, gen: np.random.Generator, min_size: int = 2,
                  max_size: int | None = None, exclude: Iterable[Group] = (),
                  listed: Sequence[Group] | None = None) -> list[Group]:
    """``count`` distinct groups: a size uniform in ``[min_size, max_size]``, then a uniform subset of that size.

    With ``listed`` (a table that lists some groups only) a uniform sample of the listed groups of those sizes
    instead. Either way fewer are returned when fewer distinct groups exist, and a prefix of a longer draw from the
    same generator state is the shorter draw.
    """
    tasks = tuple(tasks)
    hi = len(tasks) if max_size is None else min(max_size, len(tasks))
    if not 1 <= min_size <= hi:
        raise UsageError(f"group sizes [{min_size}, {hi}] are impossible with {len(tasks)} tasks")
    seen = {make_group(g) for g in exclude}
    if listed is not None:
        pool = listed_pool(listed, min_size, hi, seen)
        return [pool[i] for i in gen.permutation(len(pool))[:count]]
    available = sum(comb(len(tasks), s) for s in range(min_size, hi + 1))
    available -= sum(1 for g in seen if min_size <= len(g) <= hi)
    out: list[Group] = []
    while len(out) < min(count, available):
        size = int(gen.integers(min_size, hi + 1))
        group = make_group(tasks[i] for i in gen.choice(len(tasks), size, replace=False))
        if group not in seen:
            seen.add(group)
            out.append(group)
    return out


def all_pairs(tasks: Sequence[str]) -> list[Group]:
    return [make_group(p) for p in itertools.combinations(tasks, 2)]


class Predictor(Component):
    """Base of every gain predictor; see the module docstring."""

    kind = "predictor"
    requires: ClassVar[tuple[str, ...]] = ()
    """Which :class:`Evidence` fields :meth:`fit` needs (of ``affinity``, ``oracle``)."""
    signal: ClassVar[str | None] = None
    """The signal id a method should compute for this predictor's ``affinity`` evidence, if it needs one."""

    def training_groups(self, tasks: Sequence[str], budget: int, gen: np.random.Generator,
                        listed: Sequence[Group] | None = None) -> list[Group]:
        """The groups to measure before :meth:`fit` (default: ``budget`` random groups of two or more tasks, from
        ``listed`` when only those can be measured)."""
        return random_groups(tasks, budget, gen, listed=listed)

    def fit(self, observations: Sequence[Observation], evidence: Evidence, seed: int) -> Predictor:
        """Learn from ``observations`` (state goes to attributes ending in ``_``); returns ``self``."""
        for need in self.requires:
            if need not in EVIDENCE:
                raise AssertionError(f"{self.name}: unknown evidence {need!r}")
            if getattr(evidence, need) is None:
                raise UsageError(f"predictor {self.id} needs {need} evidence")
        known = set(evidence.tasks)
        for obs in observations:
            if not set(obs.group) <= known or set(obs.gains) != set(obs.group):
                raise UsageError(f"observation of {obs.group} does not match the tasks {evidence.tasks}")
        self.tasks_ = tuple(evidence.tasks)
        self._fit(list(observations), evidence, seed)
        return self

    @abstractmethod
    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None: ...

    def predict(self, group: Iterable[str]) -> dict[str, float]:
        """Predicted gain of each member of ``group`` (0 for a singleton: a task alone is its STL model)."""
        return self.predict_many([group])[0]

    def _checked(self, group: Iterable[str]) -> Group:
        if not hasattr(self, "tasks_"):
            raise UsageError(f"predictor {self.id} is used before fit()")
        group = make_group(group)
        unknown = [t for t in group if t not in self.tasks_]
        if unknown:
            raise UsageError(f"unknown tasks {unknown}; the predictor was fitted on {list(self.tasks_)}")
        return group

    @abstractmethod
    def _predict(self, group: Group) -> dict[str, float]:
        """Predicted gains of a group of two or more tasks."""

    def predict_many(self, groups: Iterable[Iterable[str]]) -> list[dict[str, float]]:
        """:meth:`predict` for each of ``groups``; the groups of two or more tasks go to :meth:`_predict_many` in
        one call (a network predicts them in one forward pass)."""
        groups = [self._checked(g) for g in groups]
        multi = [g for g in groups if len(g) > 1]
        found = dict(zip(multi, self._predict_many(multi)))
        return [{g[0]: 0.0} if len(g) == 1 else {t: float(found[g][t]) for t in g} for g in groups]

    def _predict_many(self, groups: list[Group]) -> list[Mapping[str, float]]:
        return [self._predict(g) for g in groups]

    def measured(self, group: Group) -> Mapping[str, float] | None:
        """The measured gains a selection should use for ``group`` in place of its prediction, or ``None`` (the
        default: a selection uses predictions only). MTG-Net's search reads the measured gains of its training
        groups (:class:`~bench.predictors.mtg_net.MtgNet`)."""
        return None

    def selection_gains(self, groups: Iterable[Iterable[str]]) -> list[dict[str, float]]:
        """Per group, :meth:`measured` where the predictor gives it, else :meth:`predict`: what a grouping problem
        built from this predictor scores its candidates with."""
        groups = [self._checked(g) for g in groups]
        predicted = self.predict_many(groups)
        return [dict(m) if (m := self.measured(g)) is not None else p for g, p in zip(groups, predicted)]

    def pairwise(self) -> np.ndarray:
        """``[i, j]``: predicted gain of task ``i`` trained with ``j`` (diagonal 0), for clustering solvers."""
        tasks = self.tasks_
        out = np.zeros((len(tasks), len(tasks)))
        for a, b in itertools.combinations(range(len(tasks)), 2):
            pred = self.predict((tasks[a], tasks[b]))
            out[a, b], out[b, a] = pred[tasks[a]], pred[tasks[b]]
        return out

    def describe(self) -> dict[str, Any]:
        """Facts about the fit worth recording (chosen hyper-parameters, iterations); default none."""
        return {}
