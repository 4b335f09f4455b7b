"""An affinity matrix used directly as a gain predictor (TAG's group score, ETAP Eq. 7).

For a member ``i`` of a group ``G`` (``|G| >= 2``), with ``A = affinity.matrix`` (``A[i, j]``: effect of source
``j`` on recipient ``i``, the :mod:`bench.signals.base` convention, TAG's ``[recipient][source]``)::

    gain_hat(i, G) = 1 / (|G| - 1) * sum_{j in G \\ {i}} A[i, j]

This is ETAP's groupwise affinity score ``z_{G -> t_i}`` (etap Eq. 7) and the "inter-task affinity" group score of
TAG's network selection (``TAG_network_selection.ipynb``: the affinity of every other member onto ``i``, averaged).
It is how TAG, gradient cosine similarity (CS), Grad-TAE and ETAP's raw affinity act as predictors.

Choices:

* **No training groups.** :meth:`AffinityPredictor.training_groups` returns ``[]``: the signal is the whole
  model, and observations passed to :meth:`fit` are ignored.
* **Scale.** The prediction is on the signal's scale, not the gain's: it is meant to be scored by correlation
  (ETAP Table 3 compares TAG this way) or to rank groups; ``etap`` learns the map to the gain scale.
* **Task order.** The affinity may list the tasks in another order than the evidence; it is re-indexed by name
  (:func:`aligned`), and a different task set raises.

The helpers :func:`aligned` and :func:`group_mean` are shared by the other affinity-based predictors (``etap``,
``quadratic_ridge``, ``nn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.base import Evidence, Predictor
from bench.signals.base import Affinity
from bench.types import Group


def aligned(affinity: Affinity, tasks: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                    dict[str, np.ndarray]]:
    """``(matrix, features, task_features)`` of ``affinity`` re-indexed to the order of ``tasks``.

    Raises :class:`UsageError` when the affinity covers other tasks, or a feature has the wrong shape.
    """
    tasks = tuple(tasks)
    if set(affinity.tasks) != set(tasks) or len(affinity.tasks) != len(tasks):
        raise UsageError(f"the {affinity.signal} affinity covers the tasks {list(affinity.tasks)}, "
                         f"the predictor was given {list(tasks)}")
    order = [affinity.tasks.index(t) for t in tasks]
    n = len(tasks)
    matrix = np.asarray(affinity.matrix, dtype=np.float64)[np.ix_(order, order)]
    features: dict[str, np.ndarray] = {}
    for key in sorted(affinity.features):
        value = np.asarray(affinity.features[key], dtype=np.float64)
        if value.shape != (n, n):
            raise UsageError(f"feature {key!r} of the {affinity.signal} affinity must be {n} x {n}, "
                             f"got {value.shape}")
        features[key] = value[np.ix_(order, order)]
    task_features: dict[str, np.ndarray] = {}
    for key in sorted(affinity.task_features):
        value = np.asarray(affinity.task_features[key], dtype=np.float64)
        if value.shape != (n,):
            raise UsageError(f"task feature {key!r} of the {affinity.signal} affinity must have length {n}, "
                             f"got {value.shape}")
        task_features[key] = value[order]
    return matrix, features, task_features


def group_mean(matrix: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """``out[a] = mean_{b != a} matrix[idx[a], idx[b]]`` (Eq. 7 for the members ``idx``, ``len(idx) >= 2``)."""
    idx = list(idx)
    sub = matrix[np.ix_(idx, idx)]
    return (sub.sum(axis=1) - np.diag(sub)) / (len(idx) - 1)


class AffinityPredictor(Predictor):
    """The group score of an affinity matrix (ETAP Eq. 7 / TAG): the mean affinity of the other members onto
    each member. Needs ``affinity`` evidence from any signal; trains nothing."""

    name = "affinity"
    version = "1"
    requires = ("affinity",)
    signal = None  # any signal: the method decides which (TAG, CS, Grad-TAE, ETAP)
    defaults: dict = {}
    test_parameters: dict = {}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return []

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        self.matrix_, _, _ = aligned(evidence.affinity, self.tasks_)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}

    def _predict(self, group: Group) -> Mapping[str, float]:
        scores = group_mean(self.matrix_, [self.index_[t] for t in group])
        return dict(zip(group, scores))
