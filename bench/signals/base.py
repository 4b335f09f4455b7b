"""Task-affinity signals: how much tasks help each other, as a task x task matrix.

A signal is a building block of a method (``bench/signals/<name>.py``, kind ``signal``; a user's own goes in
``<root>/signals/``). Two families:

- **training signals** watch one MTL training of all tasks through a trainer :class:`~bench.trainer.Callback`
  (TAG lookahead, gradient cosine similarity, transfer gain, ETAP gradient alignment); they subclass
  :class:`TrainingSignal` and only write the callback;
- **static signals** look at the data or the model at initialisation (SCA, data-divergence features, task
  features); they subclass :class:`Signal` and write :meth:`Signal.compute`.

Convention for every matrix (TAG's stored ``[recipient][source]``): ``matrix[i, j]`` is the effect of task ``j``
(source) on task ``i`` (recipient); larger means more helpful. It is the convention of
:class:`bench.solvers.base.PairwiseScore`, so an :class:`Affinity` feeds the solvers directly. Each signal's
docstring says what its diagonal holds.

Signals never time, cache, seed globally, print or write files; they count the extra forward and backward passes
they cost in ``Affinity.info``.
"""

from __future__ import annotations

import csv
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.component import Component
from bench.dataset import Problem, TrainedProblem
from bench.errors import Unsupported, UsageError
from bench.trainer import Callback, StepContext
from bench.method import GroupTrainer
from bench.types import Group, GroupResult, make_group

Trainer = Callable[[Group], GroupResult]


@dataclass(frozen=True, eq=False)
class Affinity:
    """A task x task matrix (``matrix[i, j]``: effect of source ``j`` on recipient ``i``) and how it was made.

    ``features`` optionally holds further named ``n x n`` matrices (same orientation) the signal computed on the
    way (the data-divergence features of every ordered pair, pairwise statistics); ``task_features`` named
    length-``n`` vectors of single-task features (data size, STL learning-curve fits); ``info`` holds counts such
    as ``steps`` observed, ``extra_forward`` / ``extra_backward`` passes and ``trainings`` used.
    """

    tasks: tuple[str, ...]
    matrix: np.ndarray
    signal: str
    info: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    task_features: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        matrix = np.asarray(self.matrix, dtype=np.float64)
        if matrix.shape != (len(tasks), len(tasks)):
            raise ValueError(f"affinity of {len(tasks)} tasks must be {len(tasks)} x {len(tasks)}, got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise FloatingPointError(f"signal {self.signal} produced non-finite affinities:\n{matrix}")
        matrix.setflags(write=False)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "matrix", matrix)

    def __getitem__(self, pair: tuple[str, str]) -> float:
        """``affinity[recipient, source]`` by task names."""
        i, j = (self.tasks.index(t) for t in pair)
        return float(self.matrix[i, j])

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, (np.floating, np.integer, np.bool_)):
                return value.item()
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {"tasks": list(self.tasks), "matrix": self.matrix.tolist(), "signal": self.signal,
                "info": plain(dict(self.info)), "features": plain(dict(self.features)),
                "task_features": plain(dict(self.task_features))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Affinity:
        return cls(tuple(data["tasks"]), np.array(data["matrix"], dtype=np.float64), data["signal"],
                   dict(data.get("info", {})),
                   {k: np.array(v, dtype=np.float64) for k, v in data.get("features", {}).items()},
                   {k: np.array(v, dtype=np.float64) for k, v in data.get("task_features", {}).items()})

    def to_csv(self, path: str | Path) -> None:
        """Header row of task names, then one row per recipient task (read back by :meth:`from_csv` and by
        ``python -m bench group --affinity``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.tasks)
            for row in self.matrix:
                writer.writerow([repr(float(v)) for v in row])
        tmp.replace(path)


class Signal(Component):
    """Base of every signal; see the module docstring."""

    kind = "signal"
    during_training: ClassVar[bool] = False
    """True when the signal is collected during an MTL training (and needs a problem that trains)."""

    @abstractmethod
    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        """The affinity matrix of ``problem``'s tasks under ``seed``.

        ``train(group)`` gives the ground-truth result of training a group (a method passes its context's cached,
        counted trainer; ``None`` trains directly with ``seed``). Signals that need trained groups (task features:
        STL and pairs) must obtain them through it.
        """

    @staticmethod
    def trainer(problem: Problem, seed: int, device: str, train: Trainer | None) -> Trainer:
        if train is not None:
            return train
        return GroupTrainer(lambda group: problem.train(group, seed, device=device),
                            lambda groups: problem.train_many(groups, seed, device=device))

    @staticmethod
    def train_all(trainer: Trainer, groups: Iterable[Group]) -> dict[Group, GroupResult]:
        """Every group's result, trained together where ``trainer`` has ``many`` (stacked, see
        :mod:`bench.batched`), else one by one."""
        groups = [make_group(g) for g in groups]
        many = getattr(trainer, "many", None)
        return many(groups) if many is not None else {g: trainer(g) for g in groups}

    @staticmethod
    def trained_problem(problem: Problem, name: str) -> TrainedProblem:
        """``problem`` if it trains models (has data and a model factory); otherwise a recorded skip."""
        if not isinstance(problem, TrainedProblem):
            raise Unsupported(f"signal {name} needs a dataset that trains models; this one answers by table lookup")
        return problem


class SignalCallback(Callback):
    """A training callback that accumulates one ``n x n`` matrix per observed step and averages them.

    ``every``: observe one step in ``every`` (lazy collection); the first step is always observed. Subclasses
    implement :meth:`step_matrix`; returning ``None`` skips the step (e.g. a sampled subset without pairs). Where a
    subclass fills only some entries of a step (sampling), it returns a matrix with ``nan`` elsewhere and the
    average is taken per entry over the steps that observed it. A subclass that needs the step's update itself
    (transfer gain reads the heads after it) prepares in ``before_step`` and hands its matrix to :meth:`record`
    from ``after_step``.

    ``until_best`` (a class attribute): when early stopping ends the training, the steps of the epochs after the
    best epoch (those early stopping waited through, ``patience`` of them) are dropped from the average, as TAG's
    code drops its last 10 epochs (implementations.md 1.2) and ETAP's, which accumulates "exactly like TAG" (also
    when the stop falls on the last epoch of the budget). A training early stopping did not end keeps every step.
    ``False`` (the default) keeps every observed step.
    """

    until_best: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str], every: int = 1) -> None:
        if every < 1:
            raise UsageError(f"every must be a positive number of steps, got {every}")
        self.tasks = tuple(tasks)
        self.every = every
        n = len(self.tasks)
        self.total = np.zeros((n, n))
        self.count = np.zeros((n, n))
        self.steps = 0
        self.by_epoch: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # epoch -> its total, count, steps
        self.epoch = 0
        self.epochs: int | None = None  # the training's epoch budget (seen at its first step)
        self.patience: int | None = None  # and its early-stopping patience
        self.dropped_epochs = 0
        self.extra_forward = 0
        self.extra_backward = 0
        self.last: np.ndarray | None = None

    def observes(self, ctx: StepContext) -> bool:
        return ctx.step % self.every == 0

    def before_step(self, ctx: StepContext) -> None:
        self.last = None
        self.epoch = ctx.epoch
        if self.epochs is None:
            self.epochs = ctx._trainer.config.epochs
            self.patience = ctx._trainer.config.patience
        if self.observes(ctx):
            self.record(self.step_matrix(ctx))

    def record(self, matrix: np.ndarray | None) -> None:
        """Add one observed step's matrix (``None``: the step observed nothing); it stays in ``self.last``."""
        self.last = matrix
        if matrix is None:
            return
        matrix = np.asarray(matrix, dtype=np.float64)
        seen = ~np.isnan(matrix)
        self.total[seen] += matrix[seen]
        self.count[seen] += 1
        self.steps += 1
        if self.until_best:
            total, count, steps = self.by_epoch.get(self.epoch, (np.zeros_like(self.total), np.zeros_like(self.count),
                                                                  0))
            total[seen] += matrix[seen]
            count[seen] += 1
            self.by_epoch[self.epoch] = (total, count, steps + 1)

    def on_train_end(self, result: GroupResult) -> None:
        """With ``until_best``: drop the epochs after the best one when early stopping ended the training."""
        # early stopping ended it when the epochs after the best one reached the patience, also on the last epoch
        stopped = self.patience is not None and result.epochs_run - 1 - result.best_epoch >= self.patience
        if not self.until_best or self.epochs is None or not stopped:
            return
        for epoch in [e for e in self.by_epoch if e > result.best_epoch]:
            del self.by_epoch[epoch]
        self.dropped_epochs = result.epochs_run - 1 - result.best_epoch
        kept = [self.by_epoch[e] for e in sorted(self.by_epoch)]  # sums of the kept epochs (no cancellation)
        self.total = sum((t for t, _, _ in kept), np.zeros_like(self.total))
        self.count = sum((c for _, c, _ in kept), np.zeros_like(self.count))
        self.steps = sum(n for _, _, n in kept)

    @abstractmethod
    def step_matrix(self, ctx: StepContext) -> np.ndarray | None:
        """This step's matrix in the task order of the training (``ctx.group``)."""

    def matrix(self, default_diagonal: float | None = None) -> np.ndarray:
        """The per-entry average over the steps that observed each entry; an entry no step observed is an error,
        except a diagonal one where ``default_diagonal`` is given (a signal that does not measure its diagonal)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.total / self.count
        missing = self.count == 0
        if missing.any():
            unseen = missing if default_diagonal is None else missing & ~np.eye(len(self.tasks), dtype=bool)
            if unseen.any():
                pairs = [f"{self.tasks[i]}<-{self.tasks[j]}" for i, j in zip(*np.nonzero(unseen))]
                raise UsageError(f"no step observed the pairs {pairs[:6]}; train longer or lower 'every'")
            out[missing] = default_diagonal
        return out

    def info(self) -> dict[str, Any]:
        out = {"dropped_epochs": self.dropped_epochs} if self.until_best else {}
        return {**out, "steps": self.steps, "every": self.every, "extra_forward": self.extra_forward,
                "extra_backward": self.extra_backward}


class TrainingSignal(Signal):
    """A signal collected during one MTL training of all tasks (the trainer runs it; the callback observes)."""

    during_training = True

    @abstractmethod
    def callback(self, problem: TrainedProblem, seed: int) -> SignalCallback:
        """A fresh callback for one training of all of ``problem``'s tasks.

        Build it with the tasks in the training's order, ``make_group(problem.task_names)`` (sorted);
        :meth:`compute` reorders the result to ``problem.task_names``.
        """

    def finish(self, callback: SignalCallback) -> np.ndarray:
        """The final matrix from the callback (default: the per-entry average; the diagonal must be observed)."""
        return callback.matrix()

    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        problem = self.trained_problem(problem, self.id)
        callback = self.callback(problem, seed)
        result = problem.train(problem.task_names, seed, callbacks=[callback], device=device)
        if callback.tasks != make_group(problem.task_names):
            raise AssertionError(f"{self.id}: the callback's task order must be make_group(problem.task_names)")
        order = [callback.tasks.index(t) for t in problem.task_names]
        matrix = self.finish(callback)[np.ix_(order, order)]
        info = {**callback.info(), "training_wall_s": result.wall_time_s, "epochs": result.epochs_run}
        return Affinity(problem.task_names, matrix, self.id, info)
