"""Standley et al.'s higher-order approximation (HOA; "Which Tasks Should Be Learned Together?", ICML'20).

Training groups: every pair of tasks (``n(n-1)/2`` trainings; the ``budget`` is ignored, as in the paper). With
``g(i, {i, j})`` the measured gain of ``i`` trained with ``j``:

* a pair's prediction is its measured gain;
* for a group ``G`` of three or more tasks, ``gain_hat(i, G) = 1/(|G|-1) * sum_{j in G \\ {i}} g(i, {i, j})``.

The paper (and ``network_selection/main.cpp::higher_order_approximation``, implementations.md 2.2) averages
*losses*: ``L_hat(i, G) = mean_j L(i, {i, j})``. Averaging the relative gains is the same thing: for a
lower-is-better metric ``g(i, {i, j}) = (m_S - m_ij) / |m_S|`` with the same single-task value ``m_S`` for every
``j``, so ``mean_j g(i, {i, j}) = (m_S - mean_j m_ij) / |m_S|``, the gain of the averaged loss; the same holds for
higher-is-better metrics and for ``gain`` tables (all three forms of :mod:`bench.gains` are affine in ``m`` with
coefficients that depend on ``i`` only).

Choices:

* **Measured larger groups are still approximated.** HOA keeps actual values only for networks of one or two tasks;
  an observation of a larger group passed to :meth:`fit` is ignored (the approximation is what is being scored).
* **Missing pairs.** A pair that was not observed (a failed training) is left out of the average; a member with no
  observed pair in ``G`` is predicted 0 (no transfer, the single-task value), and so is an unobserved pair.
"""

from __future__ import annotations

import numpy as np

from bench.gains import Observation
from bench.predictors.base import Evidence, Predictor, all_pairs
from bench.types import Group


class Hoa(Predictor):
    """Higher-order approximation (Standley et al. 2020): a member's gain in a group is the mean of its measured
    pairwise gains with the other members."""

    name = "hoa"
    version = "1"
    requires = ()
    defaults: dict = {}
    test_parameters: dict = {}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return all_pairs(tasks)

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        n = len(self.tasks_)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        self.pair_gain_ = np.zeros((n, n))  # [i, j]: measured gain of i trained with j
        self.observed_ = np.zeros((n, n), dtype=bool)
        for obs in observations:
            if len(obs.group) != 2:
                continue
            a, b = (self.index_[t] for t in obs.group)
            self.pair_gain_[a, b] = float(obs.gains[obs.group[0]])
            self.pair_gain_[b, a] = float(obs.gains[obs.group[1]])
            self.observed_[a, b] = self.observed_[b, a] = True

    def _predict(self, group: Group) -> dict[str, float]:
        idx = [self.index_[t] for t in group]
        out = {}
        for t, i in zip(group, idx):
            seen = [j for j in idx if j != i and self.observed_[i, j]]
            out[t] = float(np.mean(self.pair_gain_[i, seen])) if seen else 0.0
        return out

    def describe(self) -> dict:
        return {"pairs_observed": int(self.observed_.sum() // 2)}
