"""ETAP's two-stage gain predictor (Ayman, Mukhopadhyay, Laszka, ICLR'26, Section 3.2; implementations.md 8.1).

Input: the pairwise affinity ``z[t, j]`` (``matrix[t, j]``: effect of source ``j`` on recipient ``t``; the ``etap``
signal, or any other) and ``budget`` random training groups with measured gains ``y_{G,t}``.

Stage 1, affinity-to-gain map (Section 3.2.1, Eq. 7-9). For a member ``t`` of ``G``::

    z_{G->t} = 1/(|G|-1) * sum_{j in G \\ {t}} z[t, j]                          (Eq. 7)
    y_aff_{G,t} = f(z_{G->t}),  f = Ridge(alpha) o SplineTransformer(n_knots, degree)   (Eq. 8-9)

one map **pooled over all tasks**: every (group, member) entry of the training groups is one sample of a single
one-dimensional regression. The paper calls it "a non-linear transformation that maps affinity scores to predicted
MTL gains" with no per-task index, and the authors' ``Baseline_Prediction.py`` flattens the member entries of all
groups into one vector before the ``SplineTransformer(include_bias=True) + Ridge`` pipeline; followed here.

Hyper-parameters (Section 4 / Appendix B.2): spline degree in ``2..6``, number of knots "up to ``sqrt(|G_train|)``"
and ``alpha in [0.001, 1]``, chosen by cross-validated MSE on the training groups only. The alpha grid is the
authors' (``0.001 .. 0.005, 0.01 .. 0.1, 0.2 .. 1``, 24 values); the knots run over ``2 .. max(2, floor(sqrt(m)))``
with ``m`` the number of member entries. The paper bounds the knots by ``sqrt(|G_train|)``, the number of training
groups (with 5 groups that leaves only 2 knots); the authors' code takes the square root of the flattened sample
count, the member entries, and searches up to 9 more (``range(2, sqrt + 10)``). Choice made here: the code's bound
without its extension (20 random groups of 9 tasks hold about 100 member entries: up to 10 knots, where the paper's
bound allows 4). Folds: ``stage1_folds`` (10, the code's ``cv=10``) folds **of groups** (all entries of a group in
one fold, so a fold's score is on unseen groups, as "cross-validation over training groups" says; the code's
unshuffled ``KFold`` over entries mostly keeps groups together too), shuffled under the fit's seed, reduced to the
number of groups when fewer. The search solves each ridge in closed form over the whole alpha grid (the same
solution as ``sklearn.linear_model.Ridge``'s; the tests check the choice against ``GridSearchCV``); the chosen
pipeline is then refit on all entries with scikit-learn. The affine pre-calibration of the code (rescaling ``z`` by
the correlation before the spline) is left out: uniform knots over the data range make the spline basis invariant to
it.

Stage 2, residual correction (Section 3.2.2, Eq. 10-12). With ``u_G in {0,1}^n`` the multi-hot membership and
``e_{G,t} = y_{G,t} - y_aff_{G,t}`` for members (stage 1 refit on all training entries, in-sample, as the code)
and ``0`` for non-members (the code's residual matrix)::

    W, b = argmin sum_G ||e_G - W u_G - b||^2 + lambda ||W||^2                       (Eq. 10-11)
    y_final_{G,t} = y_aff_{G,t} + (W u_G + b)_t       for t in G                       (Eq. 12)

``MultiOutputRegressor(Ridge(lambda))`` as in ``Residual_Prediction.py``, ``lambda`` from ``logspace(-6, 2, 20)``
by ``stage2_folds`` (5) -fold CV (shuffled ``KFold`` over groups, MSE over the whole residual matrix as
``GridSearchCV(scoring='neg_mean_squared_error')`` scores it), folds reduced to the number of groups when fewer.
Non-members' residual predictions are never used (the code zeroes them).

Choices beyond the paper: with fewer than two training groups no CV is possible and the defaults
``degree=2, n_knots=2, alpha=1`` (stage 1) and ``lambda=1`` (stage 2) are used. ``SplineTransformer``'s default
``extrapolation='constant'`` is kept (the code's): affinity scores outside the training range map to the boundary
value. ``residual=False`` gives the stage-1-only predictor (the ablation of Appendix C.1);
:meth:`Etap.predict_stages` returns both stages of a fitted model.
"""

from __future__ import annotations

import math

import numpy as np

from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.affinity import aligned, group_mean
from bench.predictors.base import Evidence, Predictor, random_groups
from bench.seeding import derive_seed
from bench.types import Group, make_group

STAGE1_DEGREES = (2, 3, 4, 5, 6)
STAGE1_ALPHAS = (0.001, 0.002, 0.003, 0.004, 0.005, *(i / 100 for i in range(1, 11)),
                 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The authors' ridge grid of ``Baseline_Prediction.py::evaluate_BSpline_Ridge`` (24 values in [0.001, 1])."""
STAGE2_ALPHAS = tuple(float(a) for a in np.logspace(-6, 2, 20))


def knot_grid(entries: int) -> tuple[int, ...]:
    """Knot counts searched for ``entries`` training samples: ``2 .. max(2, floor(sqrt(entries)))``."""
    return tuple(range(2, max(2, int(math.isqrt(max(entries, 0)))) + 1))


def ridge_path(X: np.ndarray, Y: np.ndarray, alphas) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(coef, intercept)`` of ``Ridge(alpha, fit_intercept=True)`` for every alpha, in closed form.

    ``coef = (Xc^T Xc + alpha I)^-1 Xc^T Yc`` on the centred data, ``intercept = mean(Y) - mean(X) coef``; ``Y``
    may be a vector or a matrix (one column per output, as ``MultiOutputRegressor(Ridge)``).
    """
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - x_mean, Y - y_mean
    evals, V = np.linalg.eigh(Xc.T @ Xc)
    proj = V.T @ (Xc.T @ Yc)
    out = []
    for alpha in alphas:
        scale = 1.0 / (evals + alpha)
        coef = V @ (proj * (scale[:, None] if proj.ndim == 2 else scale))
        out.append((coef, y_mean - x_mean @ coef))
    return out


def group_folds(n_groups: int, folds: int, seed: int, *names: object) -> np.ndarray:
    """Fold index of each group: a seeded permutation dealt round-robin into ``folds`` folds."""
    perm = np.random.default_rng(derive_seed(seed, *names)).permutation(n_groups)
    fold = np.empty(n_groups, dtype=int)
    fold[perm] = np.arange(n_groups) % folds
    return fold


class Etap(Predictor):
    """ETAP (ICLR'26): B-spline + ridge map from the groupwise affinity score to the gain (pooled over tasks), then
    a multi-output ridge on the group's multi-hot membership that corrects the per-task residual."""

    name = "etap"
    version = "1"
    requires = ("affinity",)
    signal = "etap"
    defaults = {"residual": True, "stage1_folds": 10, "stage2_folds": 5}
    parameters = {"residual": [True, False]}
    test_parameters = {"stage1_folds": 3, "stage2_folds": 3}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return random_groups(tasks, budget, gen, min_size=2, listed=listed)

    # -- fit -----------------------------------------------------------------------------------------------
    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        self.matrix_, _, _ = aligned(evidence.affinity, self.tasks_)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        obs = [o for o in observations if len(o.group) >= 2]
        n = len(self.tasks_)
        z, y, row_group = [], [], []
        for g, o in enumerate(obs):
            idx = [self.index_[t] for t in o.group]
            z.extend(group_mean(self.matrix_, idx))
            y.extend(float(o.gains[t]) for t in o.group)
            row_group.extend([g] * len(o.group))
        z, y, row_group = np.array(z, dtype=np.float64), np.array(y, dtype=np.float64), np.array(row_group, int)

        # stage 1
        folds1 = min(self.stage1_folds, len(obs))
        if folds1 >= 2:
            self.stage1_group_fold_ = group_folds(len(obs), folds1, seed, "etap", "stage1")
            (degree, n_knots, alpha), self.stage1_cv_mse_ = self._search_stage1(
                z, y, self.stage1_group_fold_[row_group], folds1)
        else:
            self.stage1_group_fold_ = np.zeros(len(obs), dtype=int)
            (degree, n_knots, alpha), self.stage1_cv_mse_ = (2, 2, 1.0), None
        self.stage1_params_ = {"degree": degree, "n_knots": n_knots, "alpha": alpha}
        self.stage1_ = self._stage1_pipeline(degree, n_knots, alpha)
        if len(z):
            self.stage1_.fit(z[:, None], y)
            fitted = self.stage1_.predict(z[:, None])
        else:  # no training group: stage 1 predicts 0 everywhere
            self.stage1_ = None
            fitted = z

        # stage 2
        U = np.zeros((len(obs), n))
        R = np.zeros((len(obs), n))
        start = 0
        for g, o in enumerate(obs):
            idx = [self.index_[t] for t in o.group]
            U[g, idx] = 1.0
            R[g, idx] = y[start:start + len(idx)] - fitted[start:start + len(idx)]
            start += len(idx)
        folds2 = min(self.stage2_folds, len(obs))
        if folds2 >= 2:
            self.stage2_group_fold_ = group_folds(len(obs), folds2, seed, "etap", "stage2")
            self.stage2_alpha_, self.stage2_cv_mse_ = self._search_stage2(U, R, self.stage2_group_fold_, folds2)
        else:
            self.stage2_group_fold_ = np.zeros(len(obs), dtype=int)
            self.stage2_alpha_, self.stage2_cv_mse_ = 1.0, None
        self.res_coef_ = np.zeros((n, n))
        self.res_intercept_ = np.zeros(n)
        self.stage2_ = None
        if len(obs):
            from sklearn.linear_model import Ridge
            from sklearn.multioutput import MultiOutputRegressor

            self.stage2_ = MultiOutputRegressor(Ridge(alpha=self.stage2_alpha_)).fit(U, R)
            # read the linear map out once: predicting a group is then a dot product, not n sklearn calls
            self.res_coef_ = np.array([est.coef_ for est in self.stage2_.estimators_])
            self.res_intercept_ = np.array([est.intercept_ for est in self.stage2_.estimators_], dtype=np.float64)
        self.n_groups_ = len(obs)

    @staticmethod
    def _stage1_pipeline(degree: int, n_knots: int, alpha: float):
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import SplineTransformer

        return Pipeline([("spline", SplineTransformer(n_knots=n_knots, degree=degree, include_bias=True)),
                         ("ridge", Ridge(alpha=alpha))])

    @staticmethod
    def _search_stage1(z: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int):
        """Grid search of (degree, n_knots, alpha) by the mean over folds of the validation MSE.

        Ties go to the first candidate in ``GridSearchCV``'s order (``alpha``, then ``degree``, then
        ``n_knots``: sorted parameter names, the last varying fastest).
        """
        from sklearn.preprocessing import SplineTransformer

        knots = knot_grid(len(z))
        mse = np.zeros((len(STAGE1_ALPHAS), len(STAGE1_DEGREES), len(knots)))
        for f in range(folds):
            tr, va = fold != f, fold == f
            for d, degree in enumerate(STAGE1_DEGREES):
                for k, n_knots in enumerate(knots):
                    spline = SplineTransformer(n_knots=n_knots, degree=degree, include_bias=True).fit(z[tr, None])
                    X_tr, X_va = spline.transform(z[tr, None]), spline.transform(z[va, None])
                    for a, (coef, icpt) in enumerate(ridge_path(X_tr, y[tr], STAGE1_ALPHAS)):
                        mse[a, d, k] += np.mean((X_va @ coef + icpt - y[va]) ** 2) / folds
        a, d, k = np.unravel_index(int(np.argmin(mse)), mse.shape)
        return (STAGE1_DEGREES[d], knots[k], STAGE1_ALPHAS[a]), float(mse[a, d, k])

    @staticmethod
    def _search_stage2(U: np.ndarray, R: np.ndarray, fold: np.ndarray, folds: int):
        mse = np.zeros(len(STAGE2_ALPHAS))
        for f in range(folds):
            tr, va = fold != f, fold == f
            for a, (coef, icpt) in enumerate(ridge_path(U[tr], R[tr], STAGE2_ALPHAS)):
                mse[a] += np.mean((U[va] @ coef + icpt - R[va]) ** 2) / folds
        a = int(np.argmin(mse))
        return STAGE2_ALPHAS[a], float(mse[a])

    # -- predict -------------------------------------------------------------------------------------------
    def predict_stages(self, group) -> tuple[dict[str, float], dict[str, float]]:
        """``(stage 1, stage 1 + residual)`` predictions of a fitted model for a group of two or more tasks."""
        if not hasattr(self, "tasks_"):
            raise UsageError(f"predictor {self.id} is used before fit()")
        group = make_group(group)
        unknown = [t for t in group if t not in self.index_]
        if unknown or len(group) < 2:
            raise UsageError(f"predict_stages needs two or more of the tasks {list(self.tasks_)}, got {list(group)}")
        idx = [self.index_[t] for t in group]
        z = group_mean(self.matrix_, idx)
        first = self.stage1_.predict(z[:, None]) if self.stage1_ is not None else np.zeros(len(idx))
        hot = np.zeros(len(self.tasks_))
        hot[idx] = 1.0
        residual = self.res_intercept_[idx] + self.res_coef_[idx] @ hot
        return dict(zip(group, map(float, first))), dict(zip(group, map(float, first + residual)))

    def _predict(self, group: Group) -> dict[str, float]:
        first, final = self.predict_stages(group)
        return final if self.residual else first

    def describe(self) -> dict:
        if not hasattr(self, "tasks_"):
            return {}
        return {"training_groups": self.n_groups_, "stage1": dict(self.stage1_params_),
                "stage1_cv_mse": self.stage1_cv_mse_, "stage2_alpha": self.stage2_alpha_,
                "stage2_cv_mse": self.stage2_cv_mse_}
