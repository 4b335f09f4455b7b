"""Per-task tabular MTL datasets (School, Landmine, Parkinson, Chemical): what the four adapters share.

An adapter (``datasets/<name>.py``) declares its files, a reader that turns them into one :class:`Table` per task,
its architecture and its training settings; :class:`TabularDataset` does the rest, the same way for all four:

**Split** (affinity-predictor-local-search Appendix C; reference code ``NN/*_QR.py``, ``baseline_NN/simple_MTL``).
The reference runs 10-fold CV per task (``KFold(10, shuffle=True)``, ``StratifiedKFold`` for Landmine and Chemical)
and selects the epoch on the test fold itself. Here one fold-like split is used instead, so that model selection
never sees the test rows: each task's rows are dealt into ``folds`` (default 10) folds in a random order drawn
from ``split_seed`` (and the task's name); fold 0 is the test split, fold 1 the validation split and the remaining
folds the training split, i.e. 80/10/10 for ``folds=10`` (the reference's 90/10 CV fold with one training fold
held out for early stopping). Binary tasks are stratified: the order lists a random permutation of the minority
class, then one of the majority class, so every fold gets its share of each class (``StratifiedKFold``'s effect)
and even a task with few positives has one in its test and validation folds.

**Equal task sizes.** The papers repeat samples so that every task matches the largest (tabular-divergence
Appendix A.1). The trainer does the same on the fly: an epoch is one pass over the largest member task while the
smaller tasks cycle through fresh permutations (:func:`bench.trainer.batch_indices`). Validation and test rows are
not repeated (the reference also pads its test folds; that changes no per-task mean).

**Scaling.** Features are standardised with the mean and standard deviation of the *training* rows of all tasks
pooled (the reference standardises School's percentage columns over all rows pooled; pooled rather than per-task
statistics keep the differences between tasks, which is what task grouping is about). Binary 0/1 columns are left
as they are (the reference feeds School's indicator columns and Chemical's one-hot residues unscaled); a column
that is constant on the training rows is only centred. Regression targets are either standardised the same way
(School, as the reference does) or keep their units with the heads ending in a fixed de-standardising map
(Parkinson; see :attr:`TabularDataset.target_scaling`); classification labels are 0/1.

**Model** (tabular-divergence Table 5 and the reference code): ``MTLModel(encoder, heads)`` with the encoder a
stack of shared dense layers and every head the same small MLP: optional task-specific hidden layers, then a
linear output layer (one logit for binary tasks: the loss is ``bce`` on logits, the reference's sigmoid output
with binary cross-entropy). Only ``nn.Linear`` and parameter-free elementwise activations are used (no batch
normalisation, no dropout, no buffers), so :mod:`bench.batched` can stack thousands of these models. The
reference puts its task-specific layers *before* the shared ones (each task has its own input branch); with one
shared encoder per model that is not possible, so the adapters that have a task-specific layer in the reference
put it after the shared layers, in the head.

**Stand-in.** Without a data root an embedded synthetic stand-in of the same shape is generated (:class:`StandIn`):
the same task names, feature dimension, task type and number of outputs, task sizes drawn log-uniformly over the
real range, and planted clusters of tasks (``problem.planted_groups``): the tasks of a cluster share one random
nonlinear target function up to a small task-specific perturbation; different clusters have unrelated functions.
It is generated from a fixed seed, goes through the same preprocessing (balancing, split, scaling) and trains the
same model.

Profiles change sizes and epochs, never the algorithm: ``paper`` is the published setting (1000 epochs, early
stopping patience 50; tabular-divergence Table 5), ``mini`` 200 epochs with patience 20 (same batch size, learning
rate and architecture; all 406 Landmine pairs stay feasible on a CPU), ``smoke`` 3 epochs with patience 2 and at
most 48 rows per stand-in task.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from bench.dataset import Dataset, TrainedProblem, file_digest
from bench.errors import DataNotFound, UsageError
from bench.seeding import rng
from bench.trainer import MTLModel, Split, TaskData, TrainConfig
from bench.types import Group, Task

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


# ------------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Table:
    """One task's rows: inputs ``x`` of shape (n, d) and targets ``y`` of shape (n,) or (n, k)."""

    x: np.ndarray
    y: np.ndarray

    def rows(self, index: np.ndarray) -> Table:
        return Table(self.x[index], self.y[index])


def split_rows(n: int, folds: int, gen: np.random.Generator,
               labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices of one task: the rows dealt into ``folds`` folds in a random order (fold 0:
    test, fold 1: validation, the rest: training); with 0/1 ``labels``, one class after the other (stratified)."""
    if labels is None:
        order = gen.permutation(n)
    else:
        # the minority class is dealt first, so that even a handful of positives reach the test and val folds
        classes = sorted((0, 1), key=lambda c: (int((labels == c).sum()), c))
        order = np.concatenate([gen.permutation(np.flatnonzero(labels == c)) for c in classes])
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return np.flatnonzero(fold >= 2), np.flatnonzero(fold == 1), np.flatnonzero(fold == 0)


@dataclass(frozen=True)
class Scaler:
    """``(a - mean) / scale`` per column, fitted on training rows only (see the module docstring)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, arrays: Sequence[np.ndarray], keep_binary: bool = True) -> Scaler:
        pooled = np.concatenate([a.reshape(a.shape[0], -1) for a in arrays]).astype(np.float64)
        mean, std = pooled.mean(axis=0), pooled.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        if keep_binary:
            binary = np.isin(pooled, (0.0, 1.0)).all(axis=0)
            mean, scale = np.where(binary, 0.0, mean), np.where(binary, 1.0, scale)
        return cls(mean, scale)

    @classmethod
    def identity(cls, width: int) -> Scaler:
        return cls(np.zeros(width), np.ones(width))

    def __call__(self, a: np.ndarray) -> np.ndarray:
        flat = a.reshape(a.shape[0], -1)
        return ((flat - self.mean) / self.scale).reshape(a.shape)


@dataclass
class Prepared:
    """The split and scaled data of a problem: the trainer's :class:`TaskData`, each split's original row indices
    per task (``rows[task][split]``), the feature scaler, the statistics of the training targets (``y_stats``) and
    the scaler applied to the targets (``y_stats`` or the identity)."""

    task_data: TaskData
    rows: dict[str, dict[str, np.ndarray]]
    x_scaler: Scaler
    y_stats: Scaler
    y_scaler: Scaler


def prepare(tables: Mapping[str, Table], folds: int, seed: int, *, stratify: bool, scale_targets: bool,
            namespace: str = "tabular") -> Prepared:
    """Split every task (:func:`split_rows`, seeded by ``seed``, ``namespace`` and the task name), fit the scalers
    on the pooled training rows and return float32 tensors (targets of shape (n,) for one output)."""
    if folds < 3:
        raise UsageError(f"folds must be at least 3 (one test, one validation and one training fold), got {folds}")
    rows: dict[str, dict[str, np.ndarray]] = {}
    for name, table in tables.items():
        if table.x.shape[0] < 3:
            raise DataNotFound(f"task {name} has {table.x.shape[0]} rows; at least 3 are needed (train, val, test)")
        labels = table.y.astype(np.int64) if stratify else None
        train, val, test = split_rows(table.x.shape[0], folds, rng(seed, namespace, "split", name), labels)
        rows[name] = {"train": train, "val": val, "test": test}
    parts = {s: {t: tables[t].rows(rows[t][s]) for t in tables} for s in ("train", "val", "test")}
    x_scaler = Scaler.fit([p.x for p in parts["train"].values()])
    y_stats = Scaler.fit([p.y for p in parts["train"].values()], keep_binary=False)
    y_scaler = y_stats if scale_targets else Scaler.identity(y_stats.mean.shape[0])

    def tensors(split: dict[str, Table]) -> Split:
        return Split({t: torch.tensor(x_scaler(p.x), dtype=torch.float32) for t, p in split.items()},
                     {t: torch.tensor(y_scaler(p.y), dtype=torch.float32) for t, p in split.items()})

    data = TaskData(*(tensors(parts[s]) for s in ("train", "val", "test")))
    return Prepared(data, rows, x_scaler, y_stats, y_scaler)


def balance_classes(tables: Mapping[str, Table], seed: int, namespace: str = "balance") -> dict[str, Table]:
    """Per task, all rows of the minority class and as many rows of the majority class, drawn without replacement
    (seeded by ``seed``, ``namespace`` and the task name); the kept rows stay in file order."""
    out = {}
    for name, table in tables.items():
        y = table.y.astype(np.int64)
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        if min(len(neg), len(pos)) == 0:
            raise DataNotFound(f"task {name} has only one class ({len(neg)} negatives, {len(pos)} positives); "
                               "class balancing needs both")
        keep = min(len(neg), len(pos))
        gen = rng(seed, namespace, name)
        chosen = [c if len(c) == keep else gen.choice(c, size=keep, replace=False) for c in (neg, pos)]
        out[name] = table.rows(np.sort(np.concatenate(chosen)))
    return out


# ------------------------------------------------------------------------------------------------------ model


class Rescale(nn.Module):
    """``x * scale + shift`` per output column with fixed constants (no parameters, no buffers): the output map
    of a regression head whose targets keep their units (see :attr:`TabularDataset.target_scaling`)."""

    def __init__(self, shift: Sequence[float], scale: Sequence[float]) -> None:
        super().__init__()
        self.shift, self.scale = tuple(map(float, shift)), tuple(map(float, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # built per call (not buffers) so that the model stays stackable and follows its input's device
        return x * torch.tensor(self.scale, dtype=x.dtype, device=x.device) + \
            torch.tensor(self.shift, dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}"


def mlp(widths: Sequence[int], activation: str, last_activation: bool) -> nn.Sequential:
    """Dense layers ``widths[0] -> widths[1] -> ...`` with ``activation`` after each (after the last one only if
    ``last_activation``)."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MLPFactory:
    """``factory(group)``: shared layers ``shared`` on ``n_features`` inputs, then per task the hidden layers
    ``head`` and a linear output layer of ``outputs`` units (see the module docstring), followed by
    :class:`Rescale` when ``out_shift`` and ``out_scale`` are given."""

    n_features: int
    shared: tuple[int, ...]
    head: tuple[int, ...]
    outputs: int
    activation: str
    out_shift: tuple[float, ...] | None = None
    out_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.shared or min(self.shared + self.head) < 1:
            raise UsageError(f"need at least one shared layer and positive widths, got shared={self.shared}, "
                             f"head={self.head}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")

    def __call__(self, group: Group) -> MTLModel:
        encoder = mlp((self.n_features, *self.shared), self.activation, last_activation=True)
        heads = {t: self._head() for t in group}
        return MTLModel(encoder, heads)

    def _head(self) -> nn.Sequential:
        head = mlp((self.shared[-1], *self.head, self.outputs), self.activation, last_activation=False)
        if self.out_shift is not None and self.out_scale is not None:
            head.append(Rescale(self.out_shift, self.out_scale))
        return head


# --------------------------------------------------------------------------------------------------- stand-in


@dataclass(frozen=True)
class StandIn:
    """A synthetic stand-in with planted task clusters (see the module docstring).

    Each cluster has a small random "teacher": ``hidden`` tanh units on random input directions ``V_c`` with output
    signs ``a_c``; a task of the cluster uses ``V_c`` plus a perturbation of relative size ``spread`` and its signal
    is ``s = tanh(x V_t) a_c``, standardised. Regression targets: ``(1 + 0.3 k) s + noise * N(0, 1)`` for output
    ``k``; binary labels: the ``positive_rate`` share of rows with the largest ``slope * s + Logistic(0, 1)``. A
    nonlinear teacher makes the tasks data-hungry, so pooling the rows of a cluster pays and mixing clusters costs
    (measured at ``mini``: mean pair gains within clusters above those across clusters on all four stand-ins).

    ``clusters``: the cluster sizes (their sum is the number of tasks; consecutive tasks form a cluster);
    ``sizes``: the (min, max) rows per task, drawn log-uniformly; ``features``: ``gaussian`` (standard normal
    columns) or ``onehot`` (blocks of 20 columns, each block one-hot, as Chemical's 9 residues x 20 amino acids).
    """

    clusters: tuple[int, ...]
    sizes: tuple[int, int]
    features: Literal["gaussian", "onehot"] = "gaussian"
    outputs: int = 1
    positive_rate: float | None = None
    slope: float = 3.0
    noise: float = 0.5
    spread: float = 0.2
    hidden: int = 4
    version: str = "1"

    def generate(self, names: Sequence[str], dim: int, seed: int,
                 max_rows: int | None = None) -> tuple[dict[str, Table], list[list[str]]]:
        if sum(self.clusters) != len(names):
            raise ValueError(f"stand-in clusters {self.clusters} do not add up to {len(names)} tasks")
        gen = rng(seed, "stand-in", self.version)
        lo, hi = self.sizes
        tables, planted, start = {}, [], 0
        for size in self.clusters:
            members = list(names[start : start + size])
            start += size
            planted.append(members)
            directions = 2.0 * gen.standard_normal((dim, self.hidden)) / np.sqrt(dim)
            signs = gen.choice([-1.0, 1.0], self.hidden)
            for name in members:
                own = directions + self.spread * gen.standard_normal((dim, self.hidden)) / np.sqrt(dim)
                n = round(np.exp(gen.uniform(np.log(lo), np.log(hi))))
                n = min(n, max_rows) if max_rows else n
                x = self._inputs(gen, n, dim)
                s = np.tanh(x @ own) @ signs
                s = (s - s.mean()) / (s.std() or 1.0)
                tables[name] = Table(x, self._targets(gen, s))
        return tables, planted

    def _inputs(self, gen: np.random.Generator, n: int, dim: int) -> np.ndarray:
        if self.features == "gaussian":
            return gen.standard_normal((n, dim))
        blocks = dim // 20
        x = np.zeros((n, dim))
        x[np.arange(n)[:, None], 20 * np.arange(blocks) + gen.integers(0, 20, size=(n, blocks))] = 1.0
        return x

    def _targets(self, gen: np.random.Generator, s: np.ndarray) -> np.ndarray:
        n = s.shape[0]
        if self.positive_rate is None:
            y = np.stack([(1.0 + 0.3 * k) * s + self.noise * gen.standard_normal(n) for k in range(self.outputs)], 1)
            return y[:, 0] if self.outputs == 1 else y
        z = self.slope * s + gen.logistic(size=n)
        # a threshold at a quantile gives every task exactly its share of positives (at least one of each class)
        n_pos = min(max(1, round(self.positive_rate * n)), n - 1)
        y = np.zeros(n)
        y[np.argsort(-z, kind="stable")[:n_pos]] = 1.0
        return y


# ---------------------------------------------------------------------------------------------------- adapter


def profiles(batch_size: int, lr: float) -> dict[str, dict[str, Any]]:
    """The three profiles of a tabular dataset: only the epochs, the patience and the stand-in's size differ."""
    train = {"batch_size": batch_size, "lr": lr, "optimizer": "adam"}
    return {
        "smoke": {"stand_in_rows": 48, "train": {**train, "epochs": 3, "patience": 2}},
        "mini": {"stand_in_rows": None, "train": {**train, "epochs": 200, "patience": 20}},
        "paper": {"stand_in_rows": None, "train": {**train, "epochs": 1000, "patience": 50}},
    }


class TabularDataset(Dataset):
    """Base of the per-task tabular adapters; a subclass sets the class attributes below and :meth:`read`."""

    task_names: ClassVar[tuple[str, ...]] = ()
    """The tasks of the stand-in (and of the real data where they are known in advance)."""
    n_features: ClassVar[int] = 0
    task_kind: ClassVar[Literal["regression", "binary"]] = "regression"
    metric: ClassVar[str] = "mse"
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[int] = 1
    target_scaling: ClassVar[Literal["none", "standardise", "output"]] = "none"
    """Regression targets: ``standardise`` them with the pooled training statistics (metrics in standard units),
    or keep their units and end every head in the fixed map ``mean + std * z`` of those statistics (``output``:
    the network still works at unit scale, so Adam at the published learning rate reaches targets far from zero
    in tens of epochs, while the loss and the metric stay in the data's units)."""
    balance: ClassVar[bool] = False
    shared: ClassVar[tuple[int, ...]] = ()
    head: ClassVar[tuple[int, ...]] = ()
    activation: ClassVar[str] = "relu"
    stand_in: ClassVar[StandIn]
    defaults = {"split_seed": 0, "folds": 10}
    parameters = {"split_seed": [0, 1, 2]}
    test_parameters = {"split_seed": 1}

    @abstractmethod
    def read(self, paths: list[Path]) -> dict[str, Table]:
        """One :class:`Table` per task from the located files (:class:`DataNotFound` naming a malformed file)."""

    def build(self, settings: dict[str, Any], profile: str, data_root: Path | None) -> TrainedProblem:
        planted = None
        if data_root is None:
            tables, planted = self.stand_in.generate(self.task_names, self.n_features, 0, settings["stand_in_rows"])
            data, fingerprint = "synthetic", f"stand-in-{self.stand_in.version}"
        else:
            paths = self.locate(data_root)
            tables = self.read(paths)
            data, fingerprint = "real", file_digest(paths)
        if self.balance:
            tables = balance_classes(tables, int(self.split_seed), f"{self.name}-balance")
        prepared = prepare(tables, int(self.folds), int(self.split_seed), stratify=self.task_kind == "binary",
                           scale_targets=self.target_scaling == "standardise", namespace=self.name)
        n_features = next(iter(tables.values())).x.shape[1]
        rescale = {}
        if self.target_scaling == "output":
            rescale = {"out_shift": tuple(map(float, prepared.y_stats.mean)),
                       "out_scale": tuple(map(float, prepared.y_stats.scale))}
        factory = MLPFactory(n_features, tuple(self.shared), tuple(self.head), self.outputs, self.activation,
                             **rescale)
        binary = self.task_kind == "binary"
        tasks = [Task(t, kind="classification" if binary else "regression", metric=self.metric,
                      higher_is_better=False, loss="bce" if binary else "mse", extra_metrics=self.extra_metrics)
                 for t in tables]
        described = {k: v for k, v in settings.items() if k != "train"}
        if data_root is not None:  # the stand-in's size does not touch real data
            described.pop("stand_in_rows", None)
        described["model"] = vars(factory)
        identity = self.base_identity(profile, described, data, fingerprint)
        problem = TrainedProblem(tasks, data, identity, prepared.task_data, factory,
                                 TrainConfig(**settings["train"]), planted_groups=planted)
        if data_root is None:
            problem.notice = self.stand_in_notice()
        return problem

    def stand_in_notice(self) -> str:
        where = "; ".join(f"DIR/{f.path} ({f'from {f.url}' if f.url else f'no download URL: {f.note}'})"
                          for f in self.data_files)
        fetch = (f"; `python -m bench download {self.name} --data-root DIR` fetches it"
                 if all(f.url for f in self.data_files) else "")
        return (f"{self.name}: no data root given, using a synthetic stand-in with planted task clusters "
                f"(data=synthetic). For the real data put {where}{fetch}, then pass --data-root DIR "
                "(or set BENCH_DATA_ROOT).")


def load_mat(path: Path, keys: Sequence[str], n_tasks: int) -> dict[str, list[np.ndarray]]:
    """The 1 x ``n_tasks`` cell arrays ``keys`` of a MATLAB file as lists of float64 arrays (DataNotFound naming
    the file when it cannot be read or does not hold them)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DataNotFound(f"cannot read {path} as a MATLAB file: {exc}") from exc
    out = {}
    for key in keys:
        cells = mat.get(key)
        if cells is None or cells.dtype != object or cells.size != n_tasks:
            raise DataNotFound(f"{path} must hold a 1x{n_tasks} cell array '{key}' (one cell per task); "
                               f"found {None if cells is None else cells.shape}")
        out[key] = [np.asarray(c, dtype=np.float64) for c in cells.ravel()]
    for i, parts in enumerate(zip(*out.values())):
        if len({p.shape[0] for p in parts}) != 1 or any(p.ndim != 2 for p in parts):
            raise DataNotFound(f"{path}: task {i + 1} has cells of shapes {[p.shape for p in parts]} in "
                               f"{list(keys)}; expected 2-D cells with the same number of rows")
    return out
