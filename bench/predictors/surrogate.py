"""Linear surrogate of task-subset performance (Li, Nguyen, Zhang, TMLR'23, "Identification of negative transfers
in multitask learning using surrogate models"; implementations.md 4.2(a) and 4.4).

Training groups: the Task-Modeling sampler (``train_sample_tasks.py``): draw a size uniformly, then a uniform subset
of that size, skipping subsets already drawn. Every task is a target here (no auxiliary tasks), and a singleton's
gain is 0 by definition, so sizes are drawn uniformly from ``2..n`` (:func:`~bench.predictors.base.random_groups`
with ``min_size=2``) and ``budget`` distinct groups are drawn.

Model, for every target task ``i`` with ``S_i`` the observed groups containing ``i`` and ``u_G in {0,1}^n`` the
one-hot membership of ``G``::

    (b_i, w_i) = argmin_{b, w}  sum_{G in S_i} (y_{G,i} - b - w^T u_G)^2 + alpha ||w||^2     (alpha = 1e-2)
    gain_hat(i, G) = b_i + w_i^T u_G

i.e. ``sklearn.linear_model.Ridge(alpha=1e-2, fit_intercept=True)`` on the one-hot features (the fit of
``run_task_grouping.py``, implementations.md 4.2 (a)); ``w_i[j]`` is the surrogate's relevance of source ``j`` to
target ``i``.

Choices:

* **Raw gains, not z-scores.** The notebook z-normalises each task's values before fitting because it only needs
  the coefficients; here the surrogate must predict gains, so the target is the gain itself (the intercept absorbs
  the level).
* **Singleton anchor.** The sampler of the reference can draw size 1; here that draw is free (gain 0), so with
  ``anchor_singleton`` (default) every target also gets the row ``({i}, 0)``. It pins the surrogate where few groups
  contain ``i`` (a pair ``{i, j}`` is then predicted about ``w_i[j]``, the change from adding ``j``).
* A task in no observed group is predicted 0 (its only row, if any, is the anchor).
"""

from __future__ import annotations

import numpy as np

from bench.gains import Observation
from bench.predictors.base import Evidence, Predictor, random_groups
from bench.types import Group


class Surrogate(Predictor):
    """Per-task linear surrogate (Li et al. 2023): ridge regression of a task's gain on the one-hot membership of
    the groups that contain it."""

    name = "surrogate"
    version = "1"
    requires = ()
    defaults = {"alpha": 1e-2, "anchor_singleton": True}
    test_parameters: dict = {}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return random_groups(tasks, budget, gen, min_size=2, listed=listed)

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        from sklearn.linear_model import Ridge

        n = len(self.tasks_)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        rows: list[list[tuple[np.ndarray, float]]] = [[] for _ in range(n)]
        for obs in observations:
            hot = self._membership(obs.group)
            for t in obs.group:
                rows[self.index_[t]].append((hot, float(obs.gains[t])))
        self.coef_ = np.zeros((n, n))
        self.intercept_ = np.zeros(n)
        self.rows_ = np.zeros(n, dtype=int)
        for i, task in enumerate(self.tasks_):
            data = list(rows[i])
            if self.anchor_singleton:
                data.append((self._membership((task,)), 0.0))
            self.rows_[i] = len(data)
            if not data:
                continue
            X = np.array([x for x, _ in data])
            y = np.array([v for _, v in data])
            model = Ridge(alpha=self.alpha, fit_intercept=True).fit(X, y)
            self.coef_[i] = model.coef_
            self.intercept_[i] = model.intercept_

    def _membership(self, group) -> np.ndarray:
        hot = np.zeros(len(self.tasks_))
        hot[[self.index_[t] for t in group]] = 1.0
        return hot

    def _predict(self, group: Group) -> dict[str, float]:
        hot = self._membership(group)
        return {t: float(self.intercept_[self.index_[t]] + self.coef_[self.index_[t]] @ hot) for t in group}

    def relevance(self, target: str) -> dict[str, float]:
        """``w_target[j]`` for every other task ``j``: the surrogate's predicted change of ``target``'s gain when
        ``j`` joins a group (Li et al.'s relevance score of source ``j``)."""
        i = self.index_[target]
        return {t: float(self.coef_[i, j]) for t, j in self.index_.items() if t != target}

    def describe(self) -> dict:
        return {"rows_per_task": [int(r) for r in self.rows_]}
