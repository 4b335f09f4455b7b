"""Gain predictors: registry conformance, each predictor against an independent slow implementation, recovery of a
planted pairwise structure on held-out groups.

Evidence is built by hand (an :class:`Affinity` and hand-made :class:`Observation` s); nothing is trained.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch

from bench import registry
from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.base import EVIDENCE, Evidence, all_pairs
from bench.signals.base import Affinity
from bench.types import make_group

PREDICTORS = sorted(registry.components("predictor"))


# ------------------------------------------------------------------------------------------------ a planted world

class World:
    """Tasks with a planted pairwise gain matrix ``T`` (``T[i, j]``: gain of ``i`` trained with ``j``).

    The true gain of ``i`` in ``G`` is ``mean_{j in G \\ i} T[i, j] + noise`` (fixed per (group, task), so the oracle
    is a function). The affinity evidence sees a monotone, rescaled version of ``T`` plus noise; the pair features
    carry ``T`` (and a nuisance feature); task features are arbitrary.
    """

    def __init__(self, n: int = 6, seed: int = 0, noise: float = 0.01, affinity_noise: float = 0.01,
                 names: tuple[str, ...] | None = None) -> None:
        gen = np.random.default_rng(seed)
        self.tasks = tuple(f"t{i}" for i in range(n)) if names is None else tuple(names)
        n = len(self.tasks)
        self.n = n
        T = gen.normal(0.0, 0.1, size=(n, n))
        np.fill_diagonal(T, 0.0)
        self.T = T
        self.noise = noise
        self.seed = seed
        A = np.tanh(4 * T) + 0.3 + affinity_noise * gen.normal(size=(n, n))  # another scale, non-linear
        np.fill_diagonal(A, 1.0)
        self.features = {"div_a": T + 0.005 * gen.normal(size=(n, n)), "div_b": gen.normal(size=(n, n))}
        self.task_features = {"data_size": gen.uniform(50, 500, n), "target_var": gen.uniform(0.5, 2.0, n)}
        self.affinity = Affinity(self.tasks, A, "planted", features=self.features, task_features=self.task_features)
        self.calls: list = []

    def truth(self, group) -> dict[str, float]:
        group = make_group(group)
        if len(group) == 1:
            return {group[0]: 0.0}
        idx = [self.tasks.index(t) for t in group]
        out = {}
        for i in idx:
            jitter = np.random.default_rng([self.seed, *sorted(idx), i]).normal() * self.noise
            out[self.tasks[i]] = float(np.mean([self.T[i, j] for j in idx if j != i]) + jitter)
        return out

    def observe(self, group) -> Observation:
        group = make_group(group)
        return Observation(group, self.truth(group))

    def oracle(self, group) -> Observation:
        self.calls.append(make_group(group))
        return self.observe(group)

    def evidence(self, **drop) -> Evidence:
        fields = {"affinity": self.affinity, "oracle": self.oracle, **drop}
        return Evidence(self.tasks, **fields)

    def all_groups(self, min_size: int = 2) -> list[tuple[str, ...]]:
        return [g for s in range(min_size, self.n + 1) for g in itertools.combinations(self.tasks, s)]


def _make(name: str, **params):
    cls = registry.components("predictor")[name]
    return cls(**{**cls.test_parameters, **params})


def _fit(name: str, world: World, budget: int = 8, seed: int = 0, **params):
    predictor = _make(name, **params)
    groups = predictor.training_groups(world.tasks, budget, np.random.default_rng(seed))
    observations = [world.observe(g) for g in groups]
    predictor.fit(observations, world.evidence(), seed)
    return predictor, observations


def _predictions(predictor, groups):
    return [predictor.predict(g) for g in groups]


_FITTED: dict[str, tuple] = {}


def _fitted(name: str):
    """One fit per predictor shared by the read-only conformance checks (fits are the slow part)."""
    if name not in _FITTED:
        world = World(n=5, seed=3)
        _FITTED[name] = (world, *_fit(name, world))
    return _FITTED[name]


# ------------------------------------------------------------------------------------------------- conformance

@pytest.mark.parametrize("name", PREDICTORS)
class TestConformance:
    def test_declarations(self, name):
        cls = registry.components("predictor")[name]
        assert cls.name == name == cls.__module__.rsplit(".", 1)[-1]
        assert (cls.__doc__ or "").strip() and (sys.modules[cls.__module__].__doc__ or "").strip()
        assert set(cls.requires) <= set(EVIDENCE)
        assert cls.signal is None or isinstance(cls.signal, str)
        assert set(cls.test_parameters) <= set(cls.defaults)

    def test_id_round_trip_and_pickle(self, name):
        predictor = _make(name)
        assert registry.create("predictor", predictor.id) == predictor
        assert pickle.loads(pickle.dumps(predictor)) == predictor
        with pytest.raises(UsageError):
            registry.create("predictor", f"{name}[no_such_parameter=1]")

    def test_fitted_model_pickles_and_predicts_the_same(self, name):
        world, predictor, _ = _fitted(name)
        clone = pickle.loads(pickle.dumps(predictor))
        groups = world.all_groups()
        assert _predictions(clone, groups) == _predictions(predictor, groups)

    def test_valid_predictions(self, name):
        world, predictor, _ = _fitted(name)
        for group in world.all_groups(min_size=1):
            pred = predictor.predict(group)
            assert set(pred) == set(group)
            assert all(isinstance(v, float) and np.isfinite(v) for v in pred.values())
        assert predictor.pairwise().shape == (world.n, world.n)
        json.dumps(predictor.describe())  # a record can hold it

    def test_singleton_predicts_zero_and_unknown_task_raises(self, name):
        world, predictor, _ = _fitted(name)
        assert predictor.predict(("t1",)) == {"t1": 0.0}
        with pytest.raises(UsageError, match="unknown tasks"):
            predictor.predict(("t0", "nope"))

    def test_predict_before_fit_raises(self, name):
        with pytest.raises(UsageError, match="before fit"):
            _make(name).predict(("t0", "t1"))

    def test_deterministic_under_the_seed(self, name):
        world = World(n=5, seed=3)
        first, obs_a = _fit(name, world, seed=11)
        second, obs_b = _fit(name, world, seed=11)
        assert [o.group for o in obs_a] == [o.group for o in obs_b]
        groups = world.all_groups()
        assert _predictions(first, groups) == _predictions(second, groups)

    def test_missing_evidence_raises(self, name):
        cls = registry.components("predictor")[name]
        world = World(n=5, seed=3)
        predictor = _make(name)
        observations = [world.observe(g) for g in predictor.training_groups(world.tasks, 6,
                                                                            np.random.default_rng(0))]
        for need in cls.requires:
            with pytest.raises(UsageError, match=need):
                _make(name).fit(observations, world.evidence(**{need: None}), 0)

    def test_does_not_mutate_observations(self, name):
        world = World(n=5, seed=3)
        predictor = _make(name)
        observations = [world.observe(g) for g in predictor.training_groups(world.tasks, 8,
                                                                            np.random.default_rng(0))]
        before = copy.deepcopy([(o.group, dict(o.gains)) for o in observations])
        predictor.fit(observations, world.evidence(), 0)
        assert [(o.group, dict(o.gains)) for o in observations] == before

    def test_tasks_in_any_order(self, name):
        world = World(seed=4, names=("ze", "al", "mo", "bu", "ka"))
        predictor, observations = _fit(name, world)
        for group in world.all_groups():
            pred = predictor.predict(group)
            assert set(pred) == set(group) and all(np.isfinite(v) for v in pred.values())
        assert all(g == make_group(g) for g in world.calls)

    def test_training_groups_are_valid_and_follow_the_generator(self, name):
        world = World(n=5, seed=3)
        predictor = _make(name)
        a = predictor.training_groups(world.tasks, 7, np.random.default_rng(5))
        b = predictor.training_groups(world.tasks, 7, np.random.default_rng(5))
        assert a == b
        assert len(set(a)) == len(a)
        assert all(g == make_group(g) and set(g) <= set(world.tasks) and len(g) >= 2 for g in a)


# ----------------------------------------------------------------------------------- independent implementations

def test_affinity_equals_loops_and_realigns_task_order():
    world = World(n=5, seed=1)
    predictor, _ = _fit("affinity", world)
    assert predictor.training_groups(world.tasks, 10, np.random.default_rng(0)) == []
    A = world.affinity.matrix
    for group in world.all_groups():
        pred = predictor.predict(group)
        for t in group:
            i = world.tasks.index(t)
            others = [world.tasks.index(u) for u in group if u != t]
            assert pred[t] == pytest.approx(sum(A[i, j] for j in others) / len(others), abs=1e-12)
    # the same affinity listed in another task order gives the same predictions
    order = [3, 1, 4, 0, 2]
    shuffled = Affinity(tuple(world.tasks[k] for k in order), A[np.ix_(order, order)], "planted")
    other = _make("affinity").fit([], Evidence(world.tasks, shuffled), 0)
    for group in world.all_groups():
        assert other.predict(group) == pytest.approx(predictor.predict(group), abs=1e-12)
    with pytest.raises(UsageError, match="covers the tasks"):
        _make("affinity").fit([], Evidence(world.tasks + ("t9",), world.affinity), 0)


def test_hoa_equals_loops():
    world = World(n=5, seed=2)
    predictor = _make("hoa")
    pairs = predictor.training_groups(world.tasks, 1, np.random.default_rng(0))
    assert pairs == all_pairs(world.tasks)
    missing = ("t0", "t3")
    observations = [world.observe(p) for p in pairs if p != missing]
    observations.append(Observation(("t0", "t1", "t2"), {"t0": 9.0, "t1": 9.0, "t2": 9.0}))  # ignored by HOA
    predictor.fit(observations, world.evidence(), 0)
    measured = {(o.group, t): o.gains[t] for o in observations if len(o.group) == 2 for t in o.group}
    for group in world.all_groups():
        pred = predictor.predict(group)
        for t in group:
            values = [measured[(make_group((t, u)), t)] for u in group if u != t
                      and (make_group((t, u)), t) in measured]
            expected = sum(values) / len(values) if values else 0.0
            assert pred[t] == pytest.approx(expected, abs=1e-12)
    assert predictor.predict(missing) == {"t0": 0.0, "t3": 0.0}


def _ridge_closed_form(X, y, alpha):
    """Ridge with an unpenalised intercept: centre, then solve (Xc^T Xc + alpha I) w = Xc^T yc."""
    xm, ym = X.mean(axis=0), y.mean(axis=0)
    Xc, yc = X - xm, y - ym
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ yc)
    return w, ym - xm @ w


def test_surrogate_equals_closed_form_ridge():
    world = World(n=5, seed=4)
    predictor, observations = _fit("surrogate", world, budget=12)
    n = world.n
    for i, task in enumerate(world.tasks):
        rows = [(np.array([1.0 if u in o.group else 0.0 for u in world.tasks]), o.gains[task])
                for o in observations if task in o.group]
        rows.append((np.eye(n)[i], 0.0))  # the singleton anchor
        X = np.array([r for r, _ in rows])
        y = np.array([v for _, v in rows])
        w, b = _ridge_closed_form(X, y, 1e-2)
        for group in world.all_groups():
            if task in group:
                u = np.array([1.0 if t in group else 0.0 for t in world.tasks])
                assert predictor.predict(group)[task] == pytest.approx(b + u @ w, abs=1e-9)


def test_surrogate_without_anchor():
    world = World(n=4, seed=4)
    predictor, observations = _fit("surrogate", world, budget=6, anchor_singleton=False)
    task = "t1"
    rows = [(np.array([1.0 if u in o.group else 0.0 for u in world.tasks]), o.gains[task])
            for o in observations if task in o.group]
    w, b = _ridge_closed_form(np.array([r for r, _ in rows]), np.array([v for _, v in rows]), 1e-2)
    group = ("t0", "t1", "t3")
    assert predictor.predict(group)[task] == pytest.approx(b + np.array([1, 1, 0, 1.0]) @ w, abs=1e-9)


def test_etap_stages_equal_a_hand_assembled_sklearn_pipeline(monkeypatch):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import SplineTransformer

    from bench.predictors import etap

    # a smaller grid keeps GridSearchCV (one sklearn fit per candidate and fold) fast
    monkeypatch.setattr(etap, "STAGE1_ALPHAS", (0.001, 0.03, 1.0))
    monkeypatch.setattr(etap, "STAGE1_DEGREES", (2, 3))
    world = World(n=6, seed=5)
    predictor, observations = _fit("etap", world, budget=12, seed=4)
    A = world.affinity.matrix

    z, y, fold = [], [], []
    for g, o in enumerate(observations):
        for t in o.group:
            i = world.tasks.index(t)
            z.append(np.mean([A[i, world.tasks.index(u)] for u in o.group if u != t]))
            y.append(o.gains[t])
            fold.append(predictor.stage1_group_fold_[g])
    z, y = np.array(z)[:, None], np.array(y)
    grid = {"spline__degree": [2, 3], "spline__n_knots": list(range(2, int(np.sqrt(len(y))) + 1)),
            "ridge__alpha": [0.001, 0.03, 1.0]}
    pipe = Pipeline([("spline", SplineTransformer(include_bias=True)), ("ridge", Ridge())])
    search = GridSearchCV(pipe, grid, cv=PredefinedSplit(np.array(fold)), scoring="neg_mean_squared_error")
    search.fit(z, y)
    best = search.best_params_
    assert predictor.stage1_params_ == {"degree": best["spline__degree"], "n_knots": best["spline__n_knots"],
                                        "alpha": best["ridge__alpha"]}
    assert predictor.describe()["stage1_cv_mse"] == pytest.approx(-search.best_score_, rel=1e-6)
    stage1 = search.best_estimator_

    U = np.array([[1.0 if t in o.group else 0.0 for t in world.tasks] for o in observations])
    fitted = stage1.predict(z)
    R = np.zeros_like(U)
    k = 0
    for g, o in enumerate(observations):
        for t in o.group:
            R[g, world.tasks.index(t)] = y[k] - fitted[k]
            k += 1
    search2 = GridSearchCV(MultiOutputRegressor(Ridge()), {"estimator__alpha": list(np.logspace(-6, 2, 20))},
                           cv=PredefinedSplit(predictor.stage2_group_fold_), scoring="neg_mean_squared_error")
    search2.fit(U, R)
    assert predictor.stage2_alpha_ == pytest.approx(search2.best_params_["estimator__alpha"])
    residual = search2.best_estimator_

    stage1_only = _make("etap", residual=False).fit(observations, world.evidence(), 4)
    for group in world.all_groups():
        idx = [world.tasks.index(t) for t in group]
        zg = np.array([[np.mean([A[i, j] for j in idx if j != i])] for i in idx])
        first = stage1.predict(zg)
        u = np.array([[1.0 if t in group else 0.0 for t in world.tasks]])
        correction = residual.predict(u)[0][idx]
        got_first, got_final = predictor.predict_stages(group)
        assert [got_first[t] for t in group] == pytest.approx(first, abs=1e-9)
        assert [predictor.predict(group)[t] for t in group] == pytest.approx(first + correction, abs=1e-9)
        assert [stage1_only.predict(group)[t] for t in group] == pytest.approx(first, abs=1e-9)


def test_etap_with_one_training_group_uses_the_documented_defaults():
    world = World(n=4, seed=6)
    predictor = _make("etap").fit([world.observe(("t0", "t1", "t2"))], world.evidence(), 0)
    info = predictor.describe()
    assert info["stage1"] == {"degree": 2, "n_knots": 2, "alpha": 1.0} and info["stage2_alpha"] == 1.0
    assert all(np.isfinite(v) for v in predictor.predict(("t1", "t3")).values())


def test_quadratic_ridge_equals_numpy_closed_form():
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    from bench.predictors.quadratic_ridge import ALPHAS

    world = World(n=6, seed=7)
    predictor, observations = _fit("quadratic_ridge", world, seed=2)
    assert len(observations) == round(0.5 * 15) and all(len(o.group) == 2 for o in observations)
    names = sorted(world.features)
    rows, y, fold = [], [], []
    for p, o in enumerate(observations):
        a, b = (world.tasks.index(t) for t in o.group)
        for source, recipient in ((a, b), (b, a)):
            rows.append([world.features[k][recipient, source] for k in names])
            y.append(o.gains[world.tasks[recipient]])
            fold.append(predictor.pair_fold_[p])
    X, y = np.array(rows), np.array(y)

    def expand(Z, mean, std):
        S = (Z - mean) / std
        return np.column_stack([S[:, 0], S[:, 1], S[:, 0] ** 2, S[:, 0] * S[:, 1], S[:, 1] ** 2])

    alpha = predictor.describe()["alpha"]
    mean, std = X.mean(axis=0), X.std(axis=0)
    w, b = _ridge_closed_form(expand(X, mean, std), y, alpha)
    for group in world.all_groups():
        pred = predictor.predict(group)
        for t in group:
            i = world.tasks.index(t)
            pair_preds = [expand(np.array([[world.features[k][i, j] for k in names]]), mean, std)[0] @ w + b
                          for j in (world.tasks.index(u) for u in group if u != t)]
            assert pred[t] == pytest.approx(np.mean(pair_preds), abs=1e-9)
    # the alpha is the cross-validation choice over the same pair folds
    search = GridSearchCV(predictor._pipeline(1.0), {"ridge__alpha": list(ALPHAS)},
                          cv=PredefinedSplit(np.array(fold)), scoring="neg_mean_squared_error").fit(X, y)
    assert alpha == pytest.approx(search.best_params_["ridge__alpha"])


def test_quadratic_ridge_variants():
    world = World(n=6, seed=7)
    linear, _ = _fit("quadratic_ridge", world, degree=1)
    assert linear.model_.named_steps["poly"].n_output_features_ == 2
    # Table 6's "standard linear regression": least squares on the raw pair features, no penalty
    ols, observations = _fit("quadratic_ridge", world, degree=1, ridge=False)
    assert ols.describe()["alpha"] == 0.0
    names = sorted(world.features)
    rows, y = [], []
    for o in observations:
        a, b = (world.tasks.index(t) for t in o.group)
        for source, recipient in ((a, b), (b, a)):
            rows.append([1.0] + [world.features[k][recipient, source] for k in names])
            y.append(o.gains[world.tasks[recipient]])
    w = np.linalg.lstsq(np.array(rows), np.array(y), rcond=None)[0]
    i, j = (world.tasks.index(t) for t in ("t0", "t1"))
    assert ols.predict(("t0", "t1"))["t0"] == pytest.approx(w[0] + sum(
        w[1 + m] * world.features[k][i, j] for m, k in enumerate(names)), abs=1e-9)
    measured, observations = _fit("quadratic_ridge", world, measured_pairs=True)
    for o in observations:
        assert measured.predict(o.group) == pytest.approx(dict(o.gains))
    only_a, _ = _fit("quadratic_ridge", world, inputs=("div_a",))
    assert only_a.describe()["features"] == ["div_a"]
    # the paper's subset (Section 4.2.2) is the default when the signal has it; "*" takes every feature
    gen = np.random.default_rng(0)
    named = {k: gen.normal(size=(6, 6)) for k in ("energy_distance", "data_ratio", "cosine_sim")}
    paper = Affinity(world.tasks, world.affinity.matrix, "divergence", features=named)
    pairs = [world.observe(g) for g in all_pairs(world.tasks)[:6]]
    default = _make("quadratic_ridge").fit(pairs, Evidence(world.tasks, paper), 0)
    assert default.describe()["features"] == ["data_ratio", "energy_distance"]
    every = _make("quadratic_ridge", inputs=("*",)).fit(pairs, Evidence(world.tasks, paper), 0)
    assert every.describe()["features"] == ["cosine_sim", "data_ratio", "energy_distance"]
    with pytest.raises(UsageError, match="no features"):
        _fit("quadratic_ridge", world, inputs=("nope",))
    counted = _make("quadratic_ridge", fraction=None)
    assert len(counted.training_groups(world.tasks, 4, np.random.default_rng(0))) == 4
    assert len(_make("quadratic_ridge", fraction=0.25).training_groups(world.tasks, 0, np.random.default_rng(0))) \
        == round(0.25 * 15)


# -------------------------------------------------------------------------------------------------------- mtg_net

def test_mtg_net_attention_equals_a_per_token_loop():
    from bench.predictors.mtg_net import Layer

    d, n = 6, 5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = Layer(d).double()
        x = torch.randn(2, n, d, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    got = layer(x, mask).detach().numpy()

    def lin(module, v):
        return module.weight.detach().numpy() @ v + module.bias.detach().numpy()

    def norm(module, v):
        mu, var = v.mean(), v.var()
        return (v - mu) / np.sqrt(var + module.eps) * module.weight.detach().numpy() + module.bias.detach().numpy()

    W1 = layer.ffn1.weight.detach().numpy()[:, :, 0]
    W2 = layer.ffn2.weight.detach().numpy()[:, :, 0]
    for b in range(2):
        X, m = x[b].numpy(), mask[b].numpy()
        for a in range(n):
            scores = []
            for c in range(n):
                s = lin(layer.q, X[a]) @ lin(layer.k, X[c]) / np.sqrt(d)
                scores.append(s if m[a] and m[c] else -1e15)
            e = np.exp((np.array(scores) - max(scores)) / 0.2)
            weights = e / e.sum()
            context = sum(weights[c] * lin(layer.v, X[c]) for c in range(n))
            h = norm(layer.norm1, X[a] + lin(layer.out, context))
            f = W2 @ np.maximum(W1 @ h + layer.ffn1.bias.detach().numpy(), 0) + layer.ffn2.bias.detach().numpy()
            assert got[b, a] == pytest.approx(norm(layer.norm2, h + f), abs=1e-9)


def test_mtg_net_members_ignore_non_member_tokens():
    from bench.predictors.mtg_net import Network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = Network(5, 8, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    members = [0, 2, 4]
    with torch.no_grad():
        before = net(mask)[0, members].clone()
        net.embedding.weight[[1, 3]] = torch.randn(2, 8) * 10  # non-members change
        after = net(mask)[0, members]
        assert torch.equal(before, after)
        net.embedding.weight[2] += 1.0  # a member changes: the other members' predictions move
        assert not torch.allclose(net(mask)[0, [0, 4]], before[[0, 2]])


def test_select_active_picks_max_then_min_abs_among_groups_with_the_target():
    from bench.predictors.mtg_net import select_active

    masks = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=float)
    preds = np.array([[0.1, -0.5, 0], [0, 9.0, 9.0], [-0.7, 0, 0.2], [0.3, 0.0, 0.01]])
    assert select_active(masks, preds, 0, 1) == [2]
    assert select_active(masks, preds, 0, 2) == [2, 0]
    assert select_active(masks, preds, 1, 2) == [1, 3]
    assert select_active(masks[:1], preds[:1], 2, 2) == []


class _StubNet:
    """Stands in for a trained ensemble member: prediction of task t in G = sum of W[t, u] over u in G."""

    def __init__(self, W):
        self.W = torch.as_tensor(W, dtype=torch.float32)

    def __call__(self, X):
        return (X @ self.W.T) * X


def test_mtg_net_active_sampling_moves_the_argmax_and_argmin_groups(monkeypatch):
    from bench.predictors.mtg_net import MtgNet

    world = World(n=4, seed=8)
    W = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    monkeypatch.setattr(MtgNet, "_train_ensemble", lambda self, masks, targets, seed: [_StubNet(W)])
    predictor = _make("mtg_net", active_budget=5)
    observations = [world.observe(g) for g in predictor.training_groups(world.tasks, 0, np.random.default_rng(0))]
    assert [o.group for o in observations] == [world.tasks]
    predictor.fit(observations, world.evidence(), 0)

    def value(group, t):  # the stub's prediction for t, as float32 arithmetic
        i = world.tasks.index(t)
        return abs(float(sum(np.float32(W[i, world.tasks.index(u)]) for u in group)))

    pool = [g for g in world.all_groups() if g != world.tasks]
    expected = []
    for a in range(3):
        target = world.tasks[a % 4]
        cands = [g for g in pool if target in g]
        first = max(cands, key=lambda g: value(g, target))  # ties: first in pool order, as argmax
        expected.append(first)
        rest = [g for g in cands if g != first]
        if len(expected) < 5 and rest:
            second = min(rest, key=lambda g: value(g, target))
            expected.append(second)
        pool = [g for g in pool if g not in expected]
    assert world.calls == expected[:5] == predictor.acquired_
    assert predictor.describe()["oracle_calls"] == 5 and predictor.iterations_ == 3


def test_mtg_net_trains_towards_its_training_set_and_respects_the_budget():
    world = World(n=4, seed=9)
    predictor, observations = _fit("mtg_net", world, hidden=16, max_epochs=300, active_budget=3)
    assert len(world.calls) == 3 and len(set(world.calls)) == 3
    assert world.tasks not in world.calls  # the all-task group came from training_groups
    info = predictor.describe()
    assert info["training_groups"] == 4 + 1 + 3 and info["oracle_calls"] == 3
    # the final fit has learnt its training data far better than predicting zero
    train = [world.observe(g) for g in [world.tasks, *world.calls]]
    err = np.mean([abs(predictor.predict(o.group)[t] - o.gains[t]) for o in train for t in o.group])
    base = np.mean([abs(o.gains[t]) for o in train for t in o.group])
    assert err < 0.5 * base
    with pytest.raises(UsageError, match="step"):
        _make("mtg_net", step=3).fit(observations, world.evidence(), 0)


def test_mtg_net_samples_a_pool_for_many_tasks():
    world = World(n=13, seed=1)
    predictor = _make("mtg_net", active_budget=1, max_epochs=2, pool_size=30)
    predictor.fit([world.observe(world.tasks)], world.evidence(), 0)
    assert len(world.calls) == 1 and 2 <= len(world.calls[0]) < 13


# ------------------------------------------------------------------------------------------------------------ nn

def test_nn_group_features_equal_manual_computation():
    from bench.predictors.nn import GroupFeatures

    world = World(n=5, seed=10)
    feats = GroupFeatures(world.affinity)
    assert feats.all_names == ["n_tasks", "pair_gain_mean", "pair_gain_var", "pair_gain_std", "task:data_size",
                               "task:target_var", "pair:div_a", "pair:div_b"]
    M = world.affinity.matrix
    for group in world.all_groups(min_size=1):
        idx = [world.tasks.index(t) for t in group]
        pairs = list(itertools.combinations(idx, 2))
        gains = [(M[a, b] + M[b, a]) / 2 for a, b in pairs]
        expected = [len(group)]
        expected += [np.mean(gains), np.var(gains), np.std(gains)] if pairs else [0.0, 0.0, 0.0]
        expected += [np.mean(world.task_features[k][idx]) for k in ("data_size", "target_var")]
        for k in ("div_a", "div_b"):
            F = world.features[k]
            expected.append(np.mean([(F[a, b] + F[b, a]) / 2 for a, b in pairs]) if pairs else 0.0)
        assert feats.full(group) == pytest.approx(expected, abs=1e-12)
    chosen = GroupFeatures(world.affinity, inputs=("pair_gain_mean", "task:target_var"))
    assert chosen([("t0", "t2", "t3")])[0] == pytest.approx(feats.full(("t0", "t2", "t3"))[[1, 5]])
    with pytest.raises(UsageError, match="unknown group features"):
        GroupFeatures(world.affinity, inputs=("nope",))


def test_nn_predicts_pairs_from_the_signal_and_one_value_for_larger_groups():
    from sklearn.neural_network import MLPRegressor

    world = World(n=6, seed=11)
    predictor, observations = _fit("nn", world, budget=10)
    assert all(len(o.group) >= 3 for o in observations)
    M = world.affinity.matrix
    assert predictor.predict(("t1", "t4")) == pytest.approx({"t1": M[1, 4], "t4": M[4, 1]})
    group = ("t0", "t2", "t5")
    values = set(predictor.predict(group).values())
    assert len(values) == 1
    # the same network by hand: standardised features and target around MLPRegressor
    X = predictor.features_([o.group for o in observations])
    y = np.array([np.mean(list(o.gains.values())) for o in observations])
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1.0
    mlp = predictor.model_.mlp
    hand = MLPRegressor(hidden_layer_sizes=(8,), activation="tanh", learning_rate_init=0.001247, max_iter=50,
                        random_state=mlp.random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hand.fit((X - mean) / std, (y - y.mean()) / y.std())
    x = (predictor.features_([group]) - mean) / std
    assert values.pop() == pytest.approx(hand.predict(x)[0] * y.std() + y.mean(), abs=1e-9)
    no_data = _make("nn").fit([], world.evidence(), 0)
    assert list(no_data.predict(group).values()) == pytest.approx([predictor.features_.full(group)[1]] * 3)


def test_nn_defaults_to_the_papers_features_and_directed_pair_gains():
    world = World(n=5, seed=13)
    gen = np.random.default_rng(1)
    directed = gen.normal(size=(5, 5))
    features = {"task_distance": gen.uniform(size=(5, 5)), "head_dot": gen.normal(size=(5, 5)),
                "directed_gain": directed, "size_gap_nS": gen.uniform(size=(5, 5))}
    task_features = {"data_size": gen.uniform(10, 20, 5), "target_std": gen.uniform(1, 2, 5),
                     "stl_loss": gen.uniform(1, 2, 5)}
    signal = Affinity(world.tasks, world.affinity.matrix, "task_features", features=features,
                      task_features=task_features)
    observations = [world.observe(g) for g in world.all_groups(min_size=3)[:6]]
    predictor = _make("nn").fit(observations, Evidence(world.tasks, signal), 0)
    assert predictor.describe()["features"] == ["n_tasks", "pair_gain_mean", "pair_gain_var", "pair_gain_std",
                                                "task:data_size", "task:target_std", "pair:task_distance",
                                                "pair:head_dot"]
    assert predictor.predict(("t1", "t3")) == pytest.approx({"t1": directed[1, 3], "t3": directed[3, 1]})
    every = _make("nn", inputs=("*",)).fit(observations, Evidence(world.tasks, signal), 0)
    assert len(every.describe()["features"]) == 4 + 3 + 4


def test_group_feature_predictor_plugs_into_local_search():
    from bench.predictors.nn import GroupFeaturePredictor
    from bench.solvers.local_search import run_local_search

    world = World(n=6, seed=12)
    predictor = GroupFeaturePredictor(world.affinity, seed=3, hidden=(8,), max_iter=50)
    with pytest.raises(UsageError, match="before fit"):
        predictor.predict([("t0", "t1")])
    groups = [("t0",), ("t0", "t1"), ("t2", "t3", "t4"), ("t1", "t5")]
    values = [0.0, 0.2, -0.1, 0.3]
    out = predictor.fit(groups, values).predict(groups)
    assert out.shape == (4,) and np.all(np.isfinite(out))
    again = GroupFeaturePredictor(world.affinity, seed=3, hidden=(8,), max_iter=50).fit(groups, values)
    assert np.array_equal(again.predict(groups), out)

    def oracle(group):
        return float(sum(world.truth(group).values()))

    best, history = run_local_search(world.tasks, 2, oracle, GroupFeaturePredictor(world.affinity, max_iter=50),
                                     np.random.default_rng(0), iterations=12, initial_partitions=3)
    assert sorted(t for g in best for t in g) == list(world.tasks) and len(history) == 12


# ------------------------------------------------------------------------------------------------------ recovery

def _held_out_correlation(predictor, world, training) -> float:
    seen = {o.group for o in training}
    truth, pred = [], []
    for group in world.all_groups():
        if group in seen:
            continue
        p = predictor.predict(group)
        for t, v in world.truth(group).items():
            truth.append(v)
            pred.append(p[t])
    return float(np.corrcoef(truth, pred)[0, 1])


@pytest.mark.parametrize("name, budget, params, floor", [
    ("affinity", 0, {}, 0.9),
    ("hoa", 0, {}, 0.95),
    ("surrogate", 40, {}, 0.8),
    ("etap", 25, {"stage1_folds": 5}, 0.9),
    ("quadratic_ridge", 0, {"fraction": 0.5}, 0.9),
])
def test_recovers_a_planted_pairwise_structure(name, budget, params, floor):
    world = World(n=7, seed=13, noise=0.01)
    predictor, training = _fit(name, world, budget=budget, seed=1, **params)
    assert _held_out_correlation(predictor, world, training) > floor


def test_etap_search_grids_are_the_references():
    """The stage-1 grid of the authors' ``Baseline_Prediction.py`` (degrees 2-6, 24 alphas in [0.001, 1], 10 folds),
    the stage-2 grid of ``Residual_Prediction.py`` (``logspace(-6, 2, 20)``, 5 folds), and the knot bound of the
    module docstring (``2 .. floor(sqrt(member entries))``)."""
    from bench.predictors import etap

    assert etap.STAGE1_DEGREES == (2, 3, 4, 5, 6)
    assert etap.STAGE1_ALPHAS == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05,
                                                0.06, 0.07, 0.08, 0.09, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                1.0], rel=1e-12)
    assert etap.STAGE2_ALPHAS == pytest.approx(np.logspace(-6, 2, 20).tolist(), rel=1e-12)
    assert etap.Etap.defaults["stage1_folds"] == 10 and etap.Etap.defaults["stage2_folds"] == 5
    assert etap.knot_grid(3) == (2,) and etap.knot_grid(100) == tuple(range(2, 11))
    assert etap.knot_grid(99) == tuple(range(2, 10))


@pytest.mark.parametrize("higher", [False, True], ids=["loss", "accuracy"])
def test_hoa_is_standleys_average_of_pair_losses(higher):
    """Standley et al. average the *losses* of a task's pairs, ``L_hat(i, G) = mean_j L(i, {i, j})``; the predicted
    relative gain is that averaged loss's gain against the single-task value, for either metric direction."""
    from bench.gains import task_gain
    from bench.types import Task

    gen = np.random.default_rng(3)
    names = ("a", "b", "c", "d")
    task = {t: Task(t, metric="acc" if higher else "mse", higher_is_better=higher) for t in names}
    stl = {t: float(gen.uniform(1.0, 5.0)) for t in names}
    pair = {(g, t): float(gen.uniform(0.5, 6.0)) for g in itertools.combinations(names, 2) for t in g}
    observations = [Observation(g, {t: task_gain(task[t], pair[(g, t)], stl[t]) for t in g})
                    for g in itertools.combinations(names, 2)]
    predictor = _make("hoa").fit(observations, Evidence(names), 0)
    for r in (3, 4):
        for group in itertools.combinations(names, r):
            for t in group:
                averaged = np.mean([pair[(make_group((t, u)), t)] for u in group if u != t])
                assert predictor.predict(group)[t] == pytest.approx(task_gain(task[t], averaged, stl[t]), abs=1e-12)


def test_mtg_net_gives_a_selection_the_measured_gains_of_its_training_groups(monkeypatch):
    """The reference's search input: predictions for the pool, the measured gains for every training row. And the
    default budget is the reference's n(n-1)/(2 step) iterations of step groups: 2 x 7 = 14 at n = 6 (not 15)."""
    from bench.predictors.mtg_net import MtgNet

    world = World(n=6, seed=8)
    W = np.random.default_rng(3).normal(size=(6, 6)).astype(np.float32)
    monkeypatch.setattr(MtgNet, "_train_ensemble", lambda self, masks, targets, seed: [_StubNet(W)])
    predictor = _make("mtg_net", active_budget=None)
    observations = [world.observe(g) for g in predictor.training_groups(world.tasks, 0, np.random.default_rng(0))]
    predictor.fit(observations, world.evidence(), 0)
    assert predictor.describe()["oracle_calls"] == 14 and predictor.iterations_ == 7
    measured = [world.tasks, *predictor.acquired_]
    unmeasured = [g for g in world.all_groups() if len(g) > 1 and g not in measured][:5]
    groups = [*measured, *unmeasured, (world.tasks[0],)]
    gains = predictor.selection_gains(groups)
    for group, got in zip(groups, gains):
        if len(group) == 1:
            assert got == {group[0]: 0.0}
        elif group in measured:
            assert got == pytest.approx(dict(world.observe(group).gains)) and got != predictor.predict(group)
        else:
            assert got == predictor.predict(group) and predictor.measured(group) is None
