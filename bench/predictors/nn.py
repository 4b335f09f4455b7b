"""Groupwise task-affinity predictor of Ayman et al. (affinity-predictor-local-search, Section 4.2, Appendix B.2,
Appendix D Tables 4-5; implementations.md 8.2): a feed-forward network on group features.

Evidence: the ``task_features`` signal, whose ``matrix[i, j]`` is the measured MTL gain of the pair ``{i, j}``
(the signal trains the single tasks and the pairs), whose ``features`` hold pairwise matrices (inter-task
distance, dot products of task-specific output weights ``W_i . W_j``, ...) and whose ``task_features`` hold
per-task vectors (dataset size, target variance and standard deviation, STL curve fits, ...).

Group features of ``G`` (Appendix B.2), with ``P(G)`` the unordered pairs of ``G``:

* ``n_tasks = |G|`` (#Tasks);
* ``pair_gain_mean / _var / _std``: mean, variance and standard deviation over ``P(G)`` of the pair's gain
  ``s_ab = (matrix[a, b] + matrix[b, a]) / 2`` (Pairwise MTL gain (mu), (sigma^2), (sigma); the ``task_features``
  matrix is already the symmetric pair gain ``(L_a + L_b - L_ab) / (L_a + L_b)`` of the paper);
* ``task:<name>`` for every task feature: its mean over the members (#Sample = ``task:data_size``,
  Group-target sigma^2 (mu) = ``task:target_var``, sigma (mu) = ``task:target_std``);
* ``pair:<name>`` for every pair feature: the mean over ``P(G)`` of ``(F[a, b] + F[b, a]) / 2`` (Group distance (mu)
  = ``pair:task_distance``, Pairwise W.W (mu) = ``pair:head_dot``).

``inputs`` selects features by name. The default ``()`` is the paper's Appendix B.2 list, :data:`PAPER_FEATURES`,
as far as the evidence provides it (the nine features above); ``("*",)`` takes every feature the evidence gives
(the ``task_features`` signal gives some fifty); Table 5 lists per-benchmark subsets such as
``("pair_gain_mean", "task:target_std", "pair_gain_var")`` for Chemical.

Model: ``StandardScaler`` then ``sklearn.neural_network.MLPRegressor`` (Adam) regressing the group's gain; the
default architecture is the paper's predictor for NN-based MTL on Chemical (Table 4: hidden layers
``[14, 10, 21, 15]``, tanh, linear output, learning rate 0.001247), the smallest of the four NN rows, suited to the
few dozen training groups a budget allows.

Choices the paper leaves open:

* **Target.** The paper regresses a group's relative MTL gain from its total loss; observations here hold per-member
  gains, so the target is their mean, and :meth:`predict` gives every member of a group of three or more that
  value (the model has no per-task output).
* **Pairs.** The paper's groupwise predictor is for groups of more than two tasks: a pair's per-task gains are
  already in the evidence (the signal trained every pair), so with ``pairs_from_signal`` (default) a pair
  ``{i, j}`` is predicted ``(D[i, j], D[j, i])`` with ``D = features["directed_gain"]`` (the recipient's own relative
  loss change in the pair, ``[recipient, source]``), or ``D = matrix`` when the signal has no such feature.
  Training groups: ``budget`` random groups of three or more tasks (all sizes when ``n < 3``), as the paper trains
  its partitions' groups of more than two tasks.
* **Pairwise gain of a pair** is symmetrised, a no-op for the ``task_features`` signal; an asymmetric matrix of
  per-task gains (another signal) contributes the mean of the two members' gains.
* **Scaling.** Inputs are standardised and the target is standardised for training (predictions are mapped back):
  the network's learning rate is then meaningful whatever the gain scale. Batch size is scikit-learn's
  ``min(200, n)`` (the paper varies it with the sample size); ``max_iter`` epochs (the paper reports convergence in
  150-200 iterations), early stopping off (too few groups to hold some out).
* **No training data.** Without a training group the prediction is ``pair_gain_mean``, the feature the paper found
  most predictive (Section 4.2).

:class:`GroupFeaturePredictor` exposes the same features and network through the ``fit(groups, values)`` /
``predict(groups)`` protocol of :class:`bench.solvers.local_search.GroupPredictor`, to plug into
:func:`bench.solvers.local_search.run_local_search` (the paper's Algorithm 1 uses this predictor for quick reject).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np

from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.affinity import aligned
from bench.predictors.base import Evidence, Predictor, random_groups
from bench.seeding import derive_seed
from bench.signals.base import Affinity
from bench.types import Group, make_group

PAPER_FEATURES = ("n_tasks", "pair_gain_mean", "pair_gain_var", "pair_gain_std", "task:data_size",
                  "task:target_var", "task:target_std", "pair:task_distance", "pair:head_dot")
"""Appendix B.2's groupwise features, in the names of the ``task_features`` signal (the default ``inputs``)."""
DIRECTED_GAIN = "directed_gain"
"""The pair feature holding each member's own gain in a pair (``[recipient, source]``), used for pairs."""
DEFAULT_HIDDEN = (14, 10, 21, 15)
DEFAULT_ACTIVATION = "tanh"
DEFAULT_LEARNING_RATE = 0.001247


class GroupFeatures:
    """The groupwise features of Appendix B.2 computed from one affinity (see the module docstring)."""

    def __init__(self, affinity: Affinity, tasks: Sequence[str] | None = None, inputs: Sequence[str] = ()) -> None:
        tasks = tuple(affinity.tasks if tasks is None else tasks)
        matrix, features, task_features = aligned(affinity, tasks)
        self.tasks = tasks
        self.index = {t: i for i, t in enumerate(tasks)}
        self.pair_gain = (matrix + matrix.T) / 2.0
        self.pair_features = {k: (v + v.T) / 2.0 for k, v in features.items()}
        self.task_features = dict(task_features)
        self.all_names = (["n_tasks", "pair_gain_mean", "pair_gain_var", "pair_gain_std"]
                          + [f"task:{k}" for k in self.task_features] + [f"pair:{k}" for k in self.pair_features])
        if not inputs:
            names = [k for k in PAPER_FEATURES if k in self.all_names]
        elif tuple(inputs) == ("*",):
            names = list(self.all_names)
        else:
            names = list(inputs)
        missing = [k for k in names if k not in self.all_names]
        if missing:
            raise UsageError(f"unknown group features {missing}; the {affinity.signal} affinity gives "
                             f"{self.all_names}")
        self.names = names
        self._columns = [self.all_names.index(k) for k in names]

    def full(self, group: Sequence[str]) -> np.ndarray:
        """Every feature of ``group`` in the order of ``all_names`` (pair statistics are 0 for a singleton)."""
        idx = [self.index[t] for t in make_group(group)]
        pairs = list(itertools.combinations(idx, 2))
        rows, cols = (np.array([p[0] for p in pairs], int), np.array([p[1] for p in pairs], int))
        gains = self.pair_gain[rows, cols]
        out = [float(len(idx))]
        if pairs:
            out += [float(gains.mean()), float(gains.var()), float(gains.std())]
        else:
            out += [0.0, 0.0, 0.0]
        out += [float(np.mean(v[idx])) for v in self.task_features.values()]
        out += [float(np.mean(m[rows, cols])) if pairs else 0.0 for m in self.pair_features.values()]
        return np.array(out)

    def __call__(self, groups: Sequence[Sequence[str]]) -> np.ndarray:
        """The selected features (``names``), one row per group."""
        return np.array([self.full(g)[self._columns] for g in groups]).reshape(len(groups), len(self._columns))


class _Regressor:
    """Standardised inputs and target around an ``MLPRegressor`` (shared by the predictor and the adapter)."""

    def __init__(self, hidden: Sequence[int], activation: str, learning_rate: float, max_iter: int, seed: int):
        self.hidden, self.activation, self.learning_rate = tuple(int(h) for h in hidden), activation, learning_rate
        self.max_iter, self.seed = max_iter, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Regressor:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(X)
        self.y_mean = float(np.mean(y))
        self.y_scale = float(np.std(y)) or 1.0
        self.mlp = MLPRegressor(hidden_layer_sizes=self.hidden, activation=self.activation, solver="adam",
                                learning_rate_init=self.learning_rate, max_iter=self.max_iter,
                                random_state=self.seed % 2**32)
        with warnings.catch_warnings():  # a capped run is expected with few groups; the record keeps n_iter_
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp.fit(self.scaler.transform(X), (np.asarray(y) - self.y_mean) / self.y_scale)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.mlp.predict(self.scaler.transform(X)) * self.y_scale + self.y_mean


class Nn(Predictor):
    """Ayman et al.'s groupwise affinity predictor: an MLP on group features (pairwise-gain statistics, dataset and
    target statistics, distances, weight dot products) predicting the group's mean gain."""

    name = "nn"
    version = "1"
    requires = ("affinity",)
    signal = "task_features"
    defaults = {"hidden": DEFAULT_HIDDEN, "activation": DEFAULT_ACTIVATION, "learning_rate": DEFAULT_LEARNING_RATE,
                "max_iter": 1000, "inputs": (), "pairs_from_signal": True}
    test_parameters = {"hidden": (8,), "max_iter": 50}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return random_groups(tasks, budget, gen, min_size=3 if len(tasks) >= 3 else 2, listed=listed)

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        self.features_ = GroupFeatures(evidence.affinity, self.tasks_, self.inputs)
        matrix, features, _ = aligned(evidence.affinity, self.tasks_)
        self.pair_matrix_ = features.get(DIRECTED_GAIN, matrix)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        obs = [o for o in observations if len(o.group) >= 2]
        self.n_groups_ = len(obs)
        self.model_ = None
        if obs:
            X = self.features_([o.group for o in obs])
            y = np.array([np.mean([float(o.gains[t]) for t in o.group]) for o in obs])
            self.model_ = _Regressor(self.hidden, self.activation, self.learning_rate, self.max_iter,
                                     derive_seed(seed, "nn", "mlp")).fit(X, y)

    def _predict(self, group: Group) -> dict[str, float]:
        if len(group) == 2 and self.pairs_from_signal:
            a, b = (self.index_[t] for t in group)
            return {group[0]: float(self.pair_matrix_[a, b]), group[1]: float(self.pair_matrix_[b, a])}
        if self.model_ is None:
            value = float(self.features_.full(group)[1])  # pair_gain_mean
        else:
            value = float(self.model_.predict(self.features_([group]))[0])
        return {t: value for t in group}

    def describe(self) -> dict:
        if not hasattr(self, "tasks_"):
            return {}
        return {"training_groups": self.n_groups_, "features": list(self.features_.names),
                "epochs": int(self.model_.mlp.n_iter_) if self.model_ is not None else 0}


class GroupFeaturePredictor:
    """Ayman et al.'s group-feature MLP as a :class:`bench.solvers.local_search.GroupPredictor`.

    ``fit(groups, values)`` regresses any group value (the local search's oracle value, larger is better) on the
    group features of ``affinity`` (a ``task_features`` signal output); ``predict(groups)`` returns an array. Same
    defaults as :class:`Nn`; ``seed`` makes every fit deterministic.
    """

    def __init__(self, affinity: Affinity, tasks: Sequence[str] | None = None, *, seed: int = 0,
                 hidden: Sequence[int] = DEFAULT_HIDDEN, activation: str = DEFAULT_ACTIVATION,
                 learning_rate: float = DEFAULT_LEARNING_RATE, max_iter: int = 1000,
                 inputs: Sequence[str] = ()) -> None:
        self.features = GroupFeatures(affinity, tasks, inputs)
        self.seed = seed
        self.hidden, self.activation, self.learning_rate, self.max_iter = hidden, activation, learning_rate, max_iter
        self.model_: _Regressor | None = None
        self.fits_ = 0

    def fit(self, groups: Sequence[Group], values: Sequence[float]) -> GroupFeaturePredictor:
        if len(groups) != len(values) or not len(groups):
            raise UsageError(f"fit needs one value per group and at least one group, got {len(groups)} groups "
                             f"and {len(values)} values")
        # a fresh sub-seed per refit, so successive refits of a search are reproducible but not identical draws
        self.model_ = _Regressor(self.hidden, self.activation, self.learning_rate, self.max_iter,
                                 derive_seed(self.seed, "nn", "group-predictor", self.fits_))
        self.model_.fit(self.features(groups), np.asarray(values, dtype=np.float64))
        self.fits_ += 1
        return self

    def predict(self, groups: Sequence[Group]) -> np.ndarray:
        if self.model_ is None:
            raise UsageError("GroupFeaturePredictor is used before fit()")
        if not len(groups):
            return np.zeros(0)
        return self.model_.predict(self.features(groups))
