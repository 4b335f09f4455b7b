"""Methods and baselines: a named composition of signal collection, predictor fit and grouping solver.

The runner calls the three phases separately and times each one (plugins never time):

1. ``collect(ctx)``: gather the signal (affinities collected during a training, ground-truth trainings, data
   statistics). Once per (dataset, method, seed), shared by every split count.
2. ``fit(signal, ctx)``: turn the signal into a predictor of group quality. Also once per (dataset, method, seed).
3. ``solve(model, n_groups, ctx)``: choose the groups for one split count; returns a :class:`Grouping` or a
   sequence of them (a baseline such as Random reports the mean over several).

Any phase may ask the context for ground-truth trainings with ``ctx.train(group)``; they go through the shared
cache and are counted in the record. The chosen groups are then trained (cached, shared by all methods) and each
task is served by its best chosen group on validation (see :mod:`bench.selection`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bench import registry
from bench.component import Component
from bench.dataset import Problem
from bench.seeding import rng
from bench.types import Group, GroupResult, Grouping, Semantics


@dataclass(frozen=True)
class Training:
    """One ground-truth training consumed through a context (``wall_time_s`` as originally measured)."""

    group: Group
    seed: int
    wall_time_s: float
    cached: bool


@dataclass(frozen=True)
class GroupTrainer:
    """``trainer(group)`` trains one group; ``trainer.many(groups)`` trains several at once (``group -> result``)."""

    one: Callable[[Group], GroupResult]
    many: Callable[[Iterable[Group]], dict[Group, GroupResult]]

    def __call__(self, group: Iterable[str]) -> GroupResult:
        return self.one(group)


class Context:
    """What a method sees: the problem, the run's seed, and access to (cached, counted) group trainings."""

    def __init__(self, problem: Problem, seed: int, trainer: Callable[[Group, int], GroupResult],
                 device: str = "cpu", signals: Callable[[Any, Context], Any] | None = None) -> None:
        self.problem = problem
        self.seed = seed
        self.device = device
        self._trainer = trainer
        self._signals = signals
        self.ledger: list[Training] = []
        self.parts: dict[str, str] = {}
        """The id of each part :meth:`create` made, by kind, with the values it runs with (for the record)."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.problem.task_names

    @property
    def profile(self) -> str | None:
        """The run profile the problem was loaded with (``None`` for a problem built without one)."""
        return self.problem.identity.get("profile")

    def create(self, kind: str, text: str) -> Any:
        """The component ``text`` of ``kind`` (signal, predictor, solver) with this run's profile defaults
        (:meth:`bench.component.Component.at_profile`)."""
        component = registry.create(kind, text).at_profile(self.profile)
        self.parts[kind] = component.id
        return component

    def train(self, group: Iterable[str], seed: int | None = None) -> GroupResult:
        group = self.problem.check_group(group)
        seed = self.seed if seed is None else seed
        result = self._trainer(group, seed)
        self.ledger.append(Training(group, seed, result.wall_time_s, result.cached))
        return result

    def train_many(self, groups: Iterable[Iterable[str]], seed: int | None = None) -> dict[Group, GroupResult]:
        """:meth:`train` for many groups at once (the runner trains the cache misses together, stacked where the
        model allows): ``group -> result``, in the given order."""
        groups = list(dict.fromkeys(self.problem.check_group(g) for g in groups))
        seed = self.seed if seed is None else seed
        many = getattr(self._trainer, "many", None)
        results = many(groups, seed) if many is not None else {g: self._trainer(g, seed) for g in groups}
        for group in groups:
            result = results[group]
            self.ledger.append(Training(group, seed, result.wall_time_s, result.cached))
        return results

    @property
    def trainer(self) -> GroupTrainer:
        """:meth:`train` as a callable ``group -> result`` with a ``many(groups)`` (:meth:`train_many`): what a
        signal that needs ground-truth trainings receives."""
        return GroupTrainer(self.train, self.train_many)

    def signal(self, signal: Any) -> Any:
        """``signal.compute`` on this problem and seed, its trainings through :meth:`train`; the runner caches
        the result (shared by every method that uses the same signal) and accounts its original cost."""
        if self._signals is not None:
            return self._signals(signal, self)
        return signal.compute(self.problem, self.seed, self.device, train=self.trainer)

    def rng(self, *names: object) -> np.random.Generator:
        """A generator private to ``names`` under this run's seed."""
        return rng(self.seed, *names)


class Method(Component, ABC):
    """Base of every method (``methods/``) and baseline (``baselines/``)."""

    kind = "method"
    semantics: ClassVar[Semantics] = "select"
    uses_splits: ClassVar[bool] = True
    """False for methods whose grouping does not depend on the split count (STL, Naive-MTL)."""

    @property
    def serve_by(self) -> str:
        """Which split decides the group serving each task at evaluation (``val`` unless an oracle)."""
        return "val"

    def check(self) -> None:
        """Raise :class:`~bench.errors.UsageError` on a bad configuration (called before any work starts)."""

    def collect(self, ctx: Context) -> Any:
        return None

    def fit(self, signal: Any, ctx: Context) -> Any:
        return signal

    @abstractmethod
    def solve(self, model: Any, n_groups: int, ctx: Context) -> Grouping | Sequence[Grouping]:
        """The grouping(s) for ``n_groups`` from the fitted model."""
