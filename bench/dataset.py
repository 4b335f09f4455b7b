"""Datasets and problems.

A :class:`Dataset` plugin (one file in ``datasets/``) turns a profile and a data root into a :class:`Problem`:
the tasks, whether the data are real or an embedded synthetic stand-in, and ``train(group, seed)``.

Profiles change sizes and epochs, never the algorithm: ``smoke`` (seconds; CI), ``mini`` (minutes on 2 CPU
cores; the default) and ``paper`` (the published settings).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from bench.component import Component
from bench.datafiles import DataFile, locate
from bench.errors import UsageError, unknown_name
from bench.trainer import Callback, ModelFactory, TaskData, TrainConfig, train_group
from bench.types import Group, GroupResult, Task, make_group

PROFILES = ("smoke", "mini", "paper")
DATA_ROOT_ENV = "BENCH_DATA_ROOT"


def default_data_root() -> Path | None:
    value = os.environ.get(DATA_ROOT_ENV)
    return Path(value).expanduser() if value else None


def file_digest(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the given files (in order): the identity of real data in cache keys."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Problem(ABC):
    """One task-grouping problem: tasks plus a way to obtain the result of training any group.

    ``identity`` holds everything that determines ``train``'s results apart from the group and the seed (dataset,
    version, parameters, profile, training settings, data fingerprint); the cache hashes it. ``cacheable`` is
    False where a result costs nothing to recompute (table lookups).
    """

    cacheable = True

    def __init__(
        self,
        tasks: Iterable[Task],
        data: Literal["real", "synthetic"],
        identity: Mapping[str, Any],
        planted_groups: Iterable[Iterable[str]] | None = None,
    ) -> None:
        self.tasks: tuple[Task, ...] = tuple(tasks)
        self.task_names: tuple[str, ...] = tuple(t.name for t in self.tasks)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError("task names must be unique")
        self.data = data
        self.identity = dict(identity)
        self.planted_groups = (
            tuple(sorted(make_group(g) for g in planted_groups)) if planted_groups is not None else None
        )
        self.notice: str | None = None  # shown once by the CLI, e.g. where to get the real data of a stand-in

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise unknown_name("task", name, self.task_names)

    def check_group(self, group: Iterable[str]) -> Group:
        group = make_group(group)
        unknown = [t for t in group if t not in self.task_names]
        if unknown:
            raise UsageError(f"unknown tasks {unknown}; this problem has {list(self.task_names)}")
        return group

    @abstractmethod
    def train(self, group: Iterable[str], seed: int, callbacks: Iterable[Callback] = (),
              device: str = "cpu") -> GroupResult:
        """The result of training ``group`` with ``seed`` (callbacks observe the training where there is one)."""

    def train_many(self, groups: Iterable[Iterable[str]], seed: int, device: str = "cpu",
                   on_result: Callable[[Group, GroupResult], None] | None = None) -> dict[Group, GroupResult]:
        """Every group's result (as :meth:`train` gives it); ``on_result`` sees each as soon as it is done, so a
        caller can store finished work before a later group fails. The first failure is raised after every other
        group has been trained. Problems that can train many groups at once override this."""
        out: dict[Group, GroupResult] = {}
        failure: Exception | None = None
        for group in dict.fromkeys(self.check_group(g) for g in groups):
            try:
                out[group] = self.train(group, seed, device=device)
            except Exception as exc:  # noqa: BLE001 - raised below, after the other groups
                failure = failure or exc
                continue
            if on_result is not None:
                on_result(group, out[group])
        if failure is not None:
            raise failure
        return out

    def n_candidate_groups(self) -> int:
        return (1 << self.n_tasks) - 1

    def candidate_groups(self) -> list[Group]:
        """Every group this problem can give a result for: all non-empty subsets (a table: its rows)."""
        names = self.task_names
        return [tuple(names[i] for i in range(len(names)) if mask >> i & 1) for mask in range(1, 1 << len(names))]

    def listed_groups(self) -> list[Group] | None:
        """``None`` when every non-empty subset of the tasks has a result; otherwise the groups that have one (a
        published table that lists some groups only, as MIMIC-III's 3,185 of 2^27 - 1). Whatever draws or
        enumerates groups to measure (predictors' training groups, MTG-Net's pool, network selection's candidates)
        draws from these."""
        if self.n_candidate_groups() == (1 << self.n_tasks) - 1:
            return None
        return self.candidate_groups()

    def supports_callbacks(self) -> bool:
        """Whether ``train`` runs a real training that callbacks can observe (a lookup table does not)."""
        return False


class TrainedProblem(Problem):
    """A problem whose groups are trained with :func:`bench.trainer.train_group`."""

    def __init__(self, tasks, data, identity, task_data: TaskData, model_factory: ModelFactory,
                 config: TrainConfig, planted_groups=None) -> None:
        super().__init__(tasks, data, {**identity, "train_config": vars(config)}, planted_groups)
        self.task_data = task_data
        self.model_factory = model_factory
        self.config = config

    def supports_callbacks(self) -> bool:
        return True

    def stackable(self) -> str | None:
        """None if this problem's models can be trained in stacks (:mod:`bench.batched`), else why not."""
        import torch

        from bench.batched import stackable

        with torch.random.fork_rng():  # building a model draws random weights: leave the global stream alone
            return stackable(self.model_factory(self.task_names[:1]))

    def train_many(self, groups, seed, device="cpu", on_result=None):
        """Groups trained in stacks of equal size (:func:`bench.batched.train_groups`; same results as
        :meth:`train` within float tolerance; a group alone in its size exactly as :meth:`train` gives it), or one
        by one where the model cannot be stacked."""
        from bench.batched import train_groups

        groups = list(dict.fromkeys(self.check_group(g) for g in groups))
        if len(groups) < 2 or self.stackable() is not None:
            return super().train_many(groups, seed, device, on_result)
        out: dict[Group, GroupResult] = {}
        failure: Exception | None = None

        def done(group: Group, result: GroupResult | Exception) -> None:
            nonlocal failure
            if isinstance(result, Exception):
                failure = failure or result
                return
            out[group] = result
            if on_result is not None:
                on_result(group, result)

        train_groups(self.model_factory, self.task_data, {t.name: t for t in self.tasks}, groups, self.config,
                     seed, device=device, on_result=done)
        if failure is not None:
            raise failure
        return out

    def train(self, group, seed, callbacks=(), device="cpu"):
        group = self.check_group(group)
        return train_group(
            self.model_factory,
            self.task_data,
            {t.name: t for t in self.tasks},
            group,
            self.config,
            seed,
            callbacks=callbacks,
            device=device,
        )


class Dataset(Component, ABC):
    """A dataset plugin. Subclasses set ``profiles`` (each of smoke/mini/paper -> settings) and ``build``."""

    kind = "dataset"
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    data_files: ClassVar[tuple[DataFile, ...]] = ()
    """The real files under the data root (see :mod:`bench.datafiles`); ``bench download`` fetches them."""

    def locate(self, root: Path) -> list[Path]:
        """The paths of :attr:`data_files` under ``root`` (a :class:`DataNotFound` naming the missing ones)."""
        return locate(self.name, root, self.data_files)

    def load(self, profile: str = "mini", data_root: str | Path | None = None) -> Problem:
        if profile not in self.profiles:
            raise unknown_name("profile", profile, self.profiles)
        root = Path(data_root).expanduser() if data_root is not None else default_data_root()
        if root is not None and not root.is_dir():
            raise UsageError(f"data root {root} is not a directory")
        return self.build(dict(self.profiles[profile]), profile, root)

    @abstractmethod
    def build(self, settings: dict[str, Any], profile: str, data_root: Path | None) -> Problem:
        """The problem for one profile's ``settings``; ``data_root`` is None when no root was given."""

    def base_identity(self, profile: str, settings: Mapping[str, Any], data: str, fingerprint: str) -> dict:
        return {**self.identity(), "profile": profile, "settings": dict(settings), "data": data,
                "fingerprint": fingerprint}
