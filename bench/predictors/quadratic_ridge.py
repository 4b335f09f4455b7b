"""Pairwise MTL gain from data-divergence features by ridge regression on a quadratic expansion, aggregated to
groups (tabular-divergence-features, Section 3.2 Eq. 14, Appendix A.3 Table 6, Appendix A.6 Eq. 15).

Evidence: the ``divergence`` signal's ``features``, one ``n x n`` matrix per pair feature in the signal convention
(``F[j, i]``: feature of source ``i`` for recipient ``j``). For an ordered pair (source ``t_i``, recipient
``t_j``) the feature vector is ``phi_{i,j} = (F[j, i] for the selected F, see below)``; its target is
``gain_{t_i -> t_j}``, the measured gain of ``t_j`` trained with ``t_i``. Every measured pair ``{t_i, t_j}``
gives two rows (one per direction). Model (Eq. 14)::

    omega = argmin sum_{(i, j)} (gain_{t_i -> t_j} - omega^T Phi(phi_{i,j}))^2 + lambda ||omega||^2
    Phi = PolynomialFeatures(degree) o StandardScaler

(``degree = 2`` is the paper's default quadratic model; scikit-learn ``Ridge`` with an unpenalised intercept).
Table 6's linear variant is "a standard linear regression model" (Appendix A.3): ``degree=1, ridge=false``, least
squares without a penalty (``sklearn.linear_model.LinearRegression``; no ``lambda`` to choose). A group's
prediction is Eq. 15, the HOA/TAG aggregation::

    gain_hat(t_i, G) = 1/(|G|-1) * sum_{t_j in G \\ {t_i}} gain_hat_{t_j -> t_i}

Training groups: a random ``fraction`` of all pairs (Table 6 trains on 25%; Section 4.1 samples 10-50%), at least
one; with ``fraction=none`` the harness ``budget`` counts the pairs instead.

Choices the paper leaves open:

* **Standardisation.** Features are standardised (train statistics) before the expansion: the features have very
  different scales (dataset sizes next to distances), which a single ``lambda`` would otherwise penalise unevenly.
* **lambda** is not reported; it is chosen from ``logspace(-4, 4, 17)`` by ``folds``-fold cross-validated MSE on the
  training pairs only, folds **of unordered pairs** (both directions of a pair in one fold, so a fold is scored on
  unseen pairs), shuffled under the fit's seed; fewer folds with fewer pairs; ``lambda = 1`` below two pairs.
* **Which features.** ``inputs`` names the feature matrices to use. The default ``()`` is the paper's final subset
  (Section 4.2.2: Data-Size, Data-Ratio, the normalised distances ``|d_i - d_j| / sqrt(d_i d_j)`` and
  ``d_(i+j) / sqrt(d_i d_j)``, Energy Distance, Feature-Mean Gap, Rank Divergence; :data:`PAPER_FEATURES` in the
  ``divergence`` signal's names) as far as the evidence has it; when it has none of them, every feature; ``("*",)``
  takes every feature. The name ``matrix`` stands for the signal's main matrix, which is also the only feature
  when the signal has no ``features``.
* **Measured pairs.** Eq. 15 averages *predicted* pair gains; ``measured_pairs=true`` uses the measured gain for
  the training pairs instead (and predictions elsewhere).
* Observations of groups larger than two are ignored (Eq. 14 is over pairs).
"""

from __future__ import annotations

import numpy as np

from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.affinity import aligned, group_mean
from bench.predictors.base import Evidence, Predictor, all_pairs
from bench.predictors.etap import group_folds, ridge_path
from bench.types import Group

ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 17))
PAPER_FEATURES = ("data_size", "data_ratio", "intra_gap_product", "cross_distance_product", "energy_distance",
                  "feature_mean_gap", "rank_div")
"""Section 4.2.2's selected features, in the names of the ``divergence`` signal (the default ``inputs``)."""


class QuadraticRidge(Predictor):
    """Data-divergence features of ordered task pairs -> pairwise gain (quadratic ridge, Eq. 14), averaged over the
    other members for groups (Eq. 15)."""

    name = "quadratic_ridge"
    version = "2"
    requires = ("affinity",)
    signal = "divergence"
    defaults = {"fraction": 0.25, "degree": 2, "folds": 5, "inputs": (), "measured_pairs": False, "ridge": True}
    parameters = {"degree": [1, 2]}
    test_parameters = {"fraction": 0.5, "folds": 3}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        pairs = all_pairs(tasks)
        if not pairs:
            return []
        if self.fraction is None:
            count = min(max(int(budget), 1), len(pairs))
        else:
            if not 0.0 < float(self.fraction) <= 1.0:
                raise UsageError(f"parameter 'fraction' of predictor {self.id} must be in (0, 1], "
                                 f"got {self.fraction}")
            count = max(1, int(round(float(self.fraction) * len(pairs))))
        chosen = sorted(int(i) for i in gen.choice(len(pairs), count, replace=False))
        return [pairs[i] for i in chosen]

    def _feature_stack(self, evidence: Evidence) -> tuple[list[str], np.ndarray]:
        matrix, features, _ = aligned(evidence.affinity, self.tasks_)
        available = {**features, "matrix": matrix}
        if not self.inputs:
            names = [k for k in PAPER_FEATURES if k in features] or sorted(features) or ["matrix"]
        elif tuple(self.inputs) == ("*",):
            names = sorted(features) or ["matrix"]
        else:
            names = list(self.inputs)
        missing = [k for k in names if k not in available]
        if missing:
            raise UsageError(f"predictor {self.id}: the {evidence.affinity.signal} affinity has no features "
                             f"{missing}; it has {sorted(available)}")
        return names, np.stack([available[k] for k in names], axis=-1)  # [recipient, source, feature]

    def _pipeline(self, alpha: float):
        from sklearn.linear_model import LinearRegression, Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        return Pipeline([("scale", StandardScaler()),
                         ("poly", PolynomialFeatures(degree=self.degree, include_bias=False)),
                         ("ridge", Ridge(alpha=alpha) if self.ridge else LinearRegression())])

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        if self.degree < 1:
            raise UsageError(f"parameter 'degree' of predictor {self.id} must be at least 1, got {self.degree}")
        self.feature_names_, stack = self._feature_stack(evidence)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        rows, y, pair_of_row, measured = [], [], [], []
        pairs = [o for o in observations if len(o.group) == 2]
        if not pairs:
            raise UsageError(f"predictor {self.id} needs at least one measured pair of tasks")
        for p, o in enumerate(pairs):
            a, b = (self.index_[t] for t in o.group)
            for source, recipient in ((a, b), (b, a)):
                rows.append(stack[recipient, source])
                gain = float(o.gains[self.tasks_[recipient]])
                y.append(gain)
                pair_of_row.append(p)
                measured.append((recipient, source, gain))
        X, y, pair_of_row = np.array(rows), np.array(y), np.array(pair_of_row)

        folds = min(self.folds, len(pairs))
        if self.ridge and folds >= 2:
            self.pair_fold_ = group_folds(len(pairs), folds, seed, "quadratic_ridge", "cv")
            self.alpha_, self.cv_mse_ = self._search_alpha(X, y, self.pair_fold_[pair_of_row], folds)
        else:  # least squares (no lambda), or too few pairs to cross-validate (lambda = 1)
            self.pair_fold_ = np.zeros(len(pairs), dtype=int)
            self.alpha_, self.cv_mse_ = (1.0 if self.ridge else 0.0), None
        self.model_ = self._pipeline(self.alpha_).fit(X, y)

        n = len(self.tasks_)
        # every ordered pair predicted once: a group's prediction is then an average of table entries (Eq. 15)
        flat = self.model_.predict(stack.reshape(n * n, -1)).reshape(n, n)
        np.fill_diagonal(flat, 0.0)
        if self.measured_pairs:
            for recipient, source, gain in measured:
                flat[recipient, source] = gain
        self.pair_pred_ = flat
        self.n_pairs_ = len(pairs)

    def _search_alpha(self, X: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int) -> tuple[float, float]:
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        mse = np.zeros(len(ALPHAS))
        for f in range(folds):
            tr, va = fold != f, fold == f
            expand = Pipeline([("scale", StandardScaler()),
                               ("poly", PolynomialFeatures(degree=self.degree, include_bias=False))]).fit(X[tr])
            X_tr, X_va = expand.transform(X[tr]), expand.transform(X[va])
            for a, (coef, icpt) in enumerate(ridge_path(X_tr, y[tr], ALPHAS)):
                mse[a] += np.mean((X_va @ coef + icpt - y[va]) ** 2) / folds
        a = int(np.argmin(mse))
        return ALPHAS[a], float(mse[a])

    def _predict(self, group: Group) -> dict[str, float]:
        return dict(zip(group, group_mean(self.pair_pred_, [self.index_[t] for t in group])))

    def describe(self) -> dict:
        if not hasattr(self, "tasks_"):
            return {}
        return {"pairs": self.n_pairs_, "features": list(self.feature_names_), "alpha": self.alpha_,
                "cv_mse": self.cv_mse_}
