"""Static signals (``sca``, ``divergence``, ``task_features``, ``grad_tae``): each against an independent slow
implementation on tiny data, cluster recovery on problems with planted clusters, determinism, no mutation of the
problem, and a recorded skip on tabulated datasets.

Cluster-recovery problems, and why each signal uses the one it does:

- ``grad_tae`` runs on the ``synthetic`` dataset itself (``clusters=[3,3]``, ``noise=0.3``, ``mini`` profile: the
  ``smoke`` trainings stop before every head has converged, and the linearisation around an unconverged
  all-task model mixes the clusters for some seeds).
- ``sca`` looks at the *initial* model. On ``synthetic`` every task head is drawn at random, and with a
  one-dimensional bottleneck the per-sample encoder gradient is ``2 (f - y) h_t x``: the random head weight
  ``h_t`` (its sign included) dominates the distances, so no cluster structure is visible at initialisation.
  :func:`planted_problem` builds the same generator (orthonormal cluster directions, small spread) with
  identically initialised heads and one shared input tensor, where the sample-wise optima of two tasks differ
  only through their targets.
- ``task_features``' matrix is the ground-truth pairwise MTL gain. On ``synthetic`` a pair training from heads of
  opposite sign sometimes gets stuck (about one seed in six), so the test uses :func:`planted_problem` with
  identical heads, where every within-cluster pair trains reliably and every cross-cluster pair interferes.
- ``divergence`` reads the inputs only, and ``synthetic`` draws the inputs of every task from one Gaussian; the
  planted problem here shifts each cluster's input mean (``shift``) so that the clusters differ in their input
  distribution.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn

from bench import registry
from bench.dataset import TrainedProblem
from bench.errors import Unsupported
from bench.metrics import loss_fn
from bench.signals.divergence import Divergence
from bench.signals.grad_tae import (
    GradTAE,
    Projector,
    affinity_from_scores,
    fit_linearised,
    output_jacobians,
    sample_subsets,
)
from bench.signals.sca import SCA, per_sample_loss_gradients, sample_indices
from bench.signals.task_features import TaskFeatures, curve_gradient, log_fit, train_all_tasks
from bench.trainer import MTLModel, Split, TaskData, TrainConfig
from bench.types import GroupResult, Task, make_group

SIGNALS = {"sca": SCA, "divergence": Divergence, "task_features": TaskFeatures, "grad_tae": GradTAE}


# ----------------------------------------------------------------------------------------------------------------
# problems


def planted_problem(clusters=(3, 3), dim=8, sizes=(32, 32, 64), noise=0.3, spread=0.1, shift=0.0,
                    shared_inputs=False, data_seed=0) -> TrainedProblem:
    """The ``synthetic`` generator (task ``t`` of cluster ``c``: ``y = 2 x . (w_c + spread delta_t) + noise``,
    orthonormal ``w_c``; a linear encoder to one dimension and a linear head per task), except that every head
    starts at weight 1 and bias 0, and cluster ``c``'s inputs are centred at ``shift`` times a unit vector of their
    own (orthogonal to every ``w``)."""
    gen = np.random.default_rng(data_seed)
    basis, _ = np.linalg.qr(gen.standard_normal((dim, dim)))
    names, weights, centres, member = [], [], [], []
    for c, size in enumerate(clusters):
        for _ in range(size):
            delta = gen.standard_normal(dim)
            delta /= np.linalg.norm(delta)
            names.append(f"t{len(names)}")
            weights.append(basis[:, c] + spread * delta)
            centres.append(shift * basis[:, len(clusters) + c])
            member.append(c)

    def make(m):
        inputs, targets = {}, {}
        shared = torch.tensor(gen.standard_normal((m, dim)), dtype=torch.float32) if shared_inputs else None
        for t, w, mu in zip(names, weights, centres):
            x = shared.double().numpy() if shared is not None else gen.standard_normal((m, dim)) + mu
            inputs[t] = shared if shared is not None else torch.tensor(x, dtype=torch.float32)
            targets[t] = torch.tensor(2.0 * x @ w + noise * gen.standard_normal(m), dtype=torch.float32)
        return inputs, targets

    splits = [Split(*make(m)) for m in sizes]

    def factory(group):
        heads = {}
        for t in group:
            head = nn.Linear(1, 1)
            nn.init.ones_(head.weight)
            nn.init.zeros_(head.bias)
            heads[t] = head
        return MTLModel(nn.Linear(dim, 1, bias=False), heads)

    planted = [[t for t, c in zip(names, member) if c == k] for k in range(len(clusters))]
    return TrainedProblem([Task(t) for t in names], "synthetic", {"name": "planted"}, TaskData(*splits), factory,
                          TrainConfig(epochs=30, batch_size=16, lr=0.03, patience=5), planted_groups=planted)


def mlp_problem(shared_inputs=False, binary_inputs=False, sizes=(12, 10, 14), dim=4) -> TrainedProblem:
    """Three tiny tasks of mixed kinds (regression, binary and 3-class classification) on a non-linear encoder."""
    gen = np.random.default_rng(7)
    kinds = {"reg": ("regression", "mse", "mse"), "bin": ("classification", "bce", "error"),
             "cls": ("classification", "cross_entropy", "error")}

    def inputs_of(m):
        x = (gen.random((m, dim)) > 0.5) if binary_inputs else gen.standard_normal((m, dim))
        return torch.tensor(x, dtype=torch.float32)

    def make(m):
        shared = inputs_of(m) if shared_inputs else None
        xs = {t: shared if shared is not None else inputs_of(m + 2 * k) for k, t in enumerate(kinds)}
        ys = {"reg": xs["reg"] @ torch.tensor([1.0, -2.0, 0.5, 1.0][:dim]),
              "bin": (xs["bin"][:, 0] > 0).float(),
              "cls": torch.tensor(gen.integers(0, 3, xs["cls"].shape[0]))}
        return xs, ys

    splits = [Split(*make(m)) for m in sizes]

    def factory(group):
        encoder = nn.Sequential(nn.Linear(dim, 5), nn.Tanh(), nn.Linear(5, 3))
        outs = {"reg": 1, "bin": 1, "cls": 3}
        return MTLModel(encoder, {t: nn.Sequential(nn.Tanh(), nn.Linear(3, outs[t])) for t in group})

    tasks = [Task(t, kind=k, loss=loss, metric=metric, higher_is_better=False)
             for t, (k, loss, metric) in kinds.items()]
    return TrainedProblem(tasks, "synthetic", {"name": "mlp"}, TaskData(*splits), factory,
                          TrainConfig(epochs=3, batch_size=4, lr=0.05, patience=None))


def within_minus_cross(matrix: np.ndarray, problem) -> float:
    """min over within-cluster pairs minus max over cross-cluster pairs of the symmetrised matrix (> 0: every
    within-cluster pair ranks above every cross-cluster pair)."""
    sym = (matrix + matrix.T) / 2.0
    cluster = {t: k for k, group in enumerate(problem.planted_groups) for t in group}
    names = problem.task_names
    within, cross = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        (within if cluster[names[i]] == cluster[names[j]] else cross).append(sym[i, j])
    return min(within) - max(cross)


def snapshot(problem: TrainedProblem) -> list[torch.Tensor]:
    data = problem.task_data
    return [tensor.clone() for split in (data.train, data.val, data.test)
            for tensor in (*split.inputs.values(), *split.targets.values())]


# ----------------------------------------------------------------------------------------------------------------
# sca


def _slow_sca_distance(problem: TrainedProblem, n_samples: int, seed: int) -> np.ndarray:
    """Eq. 16 by a loop: one sample, one task, one backward pass at a time; optima theta_0 - eta g."""
    tasks = problem.task_names
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = problem.model_factory(make_group(tasks))
    model.eval()
    shared = list(model.shared_parameters().values())
    theta0 = torch.cat([p.detach().reshape(-1) for p in shared]).double()
    indices = sample_indices(problem, n_samples, seed, "sca", "samples")
    n = len(indices[tasks[0]])
    optima = np.zeros((n, len(tasks), theta0.numel()))
    train = problem.task_data.train
    for s in range(n):
        for k, t in enumerate(tasks):
            idx = int(indices[t][s])
            x, y = train.inputs[t][idx : idx + 1], train.targets[t][idx : idx + 1]
            loss = loss_fn(problem.task(t).loss)(model({t: x})[t], y)
            grads = torch.autograd.grad(loss, shared)
            g = torch.cat([gr.reshape(-1) for gr in grads]).double()
            optima[s, k] = (theta0 - problem.config.lr * g).numpy()
    a = np.zeros((len(tasks), len(tasks)))
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            a[i, j] = np.mean([np.abs(optima[s, i] - optima[s, j]).sum() for s in range(n)])
    return a


@pytest.mark.parametrize("shared_inputs", [False, True])
def test_sca_matches_a_per_sample_loop(shared_inputs):
    problem = mlp_problem(shared_inputs=shared_inputs)
    affinity = SCA(n_samples=8).compute(problem, seed=3)
    slow = _slow_sca_distance(problem, 8, 3)
    np.testing.assert_allclose(affinity.features["distance"], slow, rtol=1e-4, atol=1e-9)
    expected = np.array([[1.0 - slow[i, j] / slow[i].max() for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(affinity.matrix, expected, rtol=1e-4, atol=1e-6)
    assert np.allclose(np.diag(affinity.matrix), 1.0) and affinity.matrix.min() >= 0.0
    assert affinity.info["n_samples"] == 8


def test_sca_samples_are_not_cut_to_the_smallest_task():
    """Per-task inputs of 12, 14 and 16 training samples and N = 15: the two larger tasks give 15 distinct samples,
    the smallest its 12 distinct ones, repeated in order up to 15 (paired by position)."""
    problem = mlp_problem(shared_inputs=False)
    sizes = {t: int(problem.task_data.train.inputs[t].shape[0]) for t in problem.task_names}
    assert sorted(sizes.values()) == [12, 14, 16]
    indices = sample_indices(problem, 15, 0, "sca", "samples")
    for t, idx in indices.items():
        assert len(idx) == 15 and idx.max() < sizes[t]
        distinct = min(15, sizes[t])
        assert len(np.unique(idx[:distinct])) == distinct
        np.testing.assert_array_equal(idx[distinct:], idx[: 15 - distinct])
    affinity = SCA(n_samples=15).compute(problem, seed=0)
    assert affinity.info["n_samples"] == 15 and sorted(affinity.info["distinct_samples"].values()) == [12, 14, 15]
    np.testing.assert_allclose(affinity.features["distance"], _slow_sca_distance(problem, 15, 0), rtol=1e-4,
                               atol=1e-9)
    shared = sample_indices(mlp_problem(shared_inputs=True), 100, 0, "sca", "samples")
    assert {len(i) for i in shared.values()} == {12} and len({i.tobytes() for i in shared.values()}) == 1


def test_sca_vectorised_gradients_match_autograd_loop():
    problem = mlp_problem()
    tasks = problem.task_names
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = problem.model_factory(make_group(tasks))
    model.eval()
    train = problem.task_data.train
    xs = {t: train.inputs[t][:5] for t in tasks}
    ys = {t: train.targets[t][:5] for t in tasks}
    grads = per_sample_loss_gradients(model, tasks, {t: problem.task(t).loss for t in tasks}, xs, ys, False)
    shared = list(model.shared_parameters().values())
    for s in range(5):
        for k, t in enumerate(tasks):
            loss = loss_fn(problem.task(t).loss)(model({t: xs[t][s : s + 1]})[t], ys[t][s : s + 1])
            g = torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(loss, shared)])
            torch.testing.assert_close(grads[s, k], g, rtol=1e-5, atol=1e-6)


def test_sca_separates_planted_clusters():
    problem = planted_problem(shared_inputs=True)
    affinity = SCA().compute(problem, seed=0)
    assert within_minus_cross(affinity.matrix, problem) > 0


# ----------------------------------------------------------------------------------------------------------------
# divergence


def _v_mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(x - y) for x in a for y in b]))


def _u_mean_distance(a: np.ndarray) -> float:
    """The mean distance of two distinct samples of one task."""
    return float(np.mean([np.linalg.norm(a[r] - a[c]) for r in range(len(a)) for c in range(len(a)) if r != c]))


def _tie_shared_cross_link(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Eq. 13 by enumeration: each point's k edges go to the strictly closer points, and the remaining edges are
    shared equally by the points tied at the k-th distance."""
    pooled = np.concatenate([a, b])
    owner = np.repeat([0, 1], [len(a), len(b)])
    total = 0.0
    for p in range(len(pooled)):
        dist = {q: float(np.linalg.norm(pooled[p] - pooled[q])) for q in range(len(pooled)) if q != p}
        kth = sorted(dist.values())[k - 1]
        closer = [q for q, v in dist.items() if v < kth]
        tied = [q for q, v in dist.items() if v == kth]
        total += sum(owner[q] != owner[p] for q in closer)
        total += (k - len(closer)) / len(tied) * sum(owner[q] != owner[p] for q in tied)
    return total / (len(pooled) * k)


def test_divergence_features_match_explicit_loops():
    problem = mlp_problem(sizes=(9, 5, 7), dim=3)
    affinity = Divergence(max_samples=1000, k=3, pca_components=2).compute(problem, seed=0)
    tasks = problem.task_names
    data = problem.task_data
    xs = [torch.cat([data.train.inputs[t], data.test.inputs[t]]).double().numpy() for t in tasks]
    f = affinity.features
    n = len(tasks)
    d = np.array([_u_mean_distance(x) for x in xs])
    for i, j in itertools.product(range(n), repeat=2):
        a, b = xs[i], xs[j]
        size_i, size_j = len(a), len(b)
        cross = d[i] if i == j else _v_mean_distance(a, b)  # a task against itself: its distinct pairs
        assert f["data_size"][i, j] == size_i + size_j
        assert f["data_ratio"][i, j] == pytest.approx(size_i / (size_i + size_j))
        assert f["size_gap"][i, j] == pytest.approx(abs(size_i - size_j) / (size_i + size_j))
        assert f["cross_distance"][i, j] == pytest.approx(cross)
        assert f["intra_gap_sum"][i, j] == pytest.approx(abs(d[i] - d[j]) / (d[i] + d[j]), abs=1e-12)
        assert f["intra_gap_product"][i, j] == pytest.approx(abs(d[i] - d[j]) / math.sqrt(d[i] * d[j]), abs=1e-12)
        assert f["cross_distance_sum"][i, j] == pytest.approx(cross / (d[i] + d[j]))
        assert f["cross_distance_product"][i, j] == pytest.approx(cross / math.sqrt(d[i] * d[j]))
        assert f["energy_distance"][i, j] == pytest.approx(2 * cross - d[i] - d[j], abs=1e-12)
        assert f["feature_mean_gap"][i, j] == pytest.approx(np.linalg.norm(a.mean(0) - b.mean(0)))
        cos = np.mean([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x in a for y in b])
        assert f["cosine_sim"][i, j] == pytest.approx(cos)
        ua = np.linalg.svd(a - a.mean(0))[2][:2]
        ub = np.linalg.svd(b - b.mean(0))[2][:2]
        assert f["pca_align"][i, j] == pytest.approx(np.mean([abs(ua[k] @ ub[k]) for k in range(2)]))
        if i == j:
            continue
        pooled = np.concatenate([a, b])
        gaps = []
        for k in range(pooled.shape[1]):
            ranks = scipy.stats.rankdata(pooled[:, k])
            gaps.append(abs(ranks[:size_i].mean() - ranks[size_i:].mean()))
        assert f["rank_div"][i, j] == pytest.approx(np.mean(gaps))
        owner = np.repeat([0, 1], [size_i, size_j])
        dist = np.linalg.norm(pooled[:, None] - pooled[None], axis=2)
        np.fill_diagonal(dist, np.inf)
        nearest = np.argsort(dist, axis=1)[:, :3]
        assert f["cross_link"][i, j] == pytest.approx(np.mean(owner[nearest] != owner[:, None]))
    np.testing.assert_allclose(affinity.matrix, -f["energy_distance"])
    np.testing.assert_allclose(affinity.task_features["intra_distance"], d)
    labels = [data.train.targets[t].double().numpy().ravel() for t in tasks]
    np.testing.assert_allclose(affinity.task_features["label_var"], [y.var() for y in labels])
    np.testing.assert_allclose(affinity.task_features["label_std"], [y.std() for y in labels])


def test_divergence_energy_distance_is_scipys_with_the_within_task_means_unbiased():
    """scipy's estimator includes the self-pairs (``d^V = d^U (N - 1) / N``), so ours, with the U-statistic
    within each task, is ``scipy**2 - d_i / N_i - d_j / N_j``."""
    problem = mlp_problem(sizes=(15, 4, 11), dim=1)
    affinity = Divergence(max_samples=1000).compute(problem, seed=0)
    data = problem.task_data
    xs = [torch.cat([data.train.inputs[t], data.test.inputs[t]]).double().numpy().ravel()
          for t in problem.task_names]
    d = affinity.task_features["intra_distance"]
    for i, j in itertools.product(range(3), repeat=2):
        expected = scipy.stats.energy_distance(xs[i], xs[j]) ** 2
        if i != j:
            expected -= d[i] / len(xs[i]) + d[j] / len(xs[j])
        assert affinity.features["energy_distance"][i, j] == pytest.approx(expected, abs=1e-10)


def test_divergence_energy_distance_does_not_grow_with_a_size_gap():
    """Two samples of one distribution, 22 and 251 points: the V-statistic gave 0.37 against 0.06 for 251 and 251;
    the U-statistic keeps the pair of unequal sizes near 0 and well below a real shift."""
    from bench.signals.divergence import mean_distances

    gen = np.random.default_rng(0)

    def energy(a, b):
        d = mean_distances([a, b])
        return 2 * d[0, 1] - d[0, 0] - d[1, 1]

    same = [energy(gen.standard_normal((22, 27)), gen.standard_normal((251, 27))) for _ in range(20)]
    shifted = [energy(gen.standard_normal((251, 27)), gen.standard_normal((251, 27)) + 0.1) for _ in range(20)]
    assert abs(np.mean(same)) < 0.5 * np.mean(shifted)  # V-statistic: 0.33 against 0.1


def test_cross_link_shares_ties_and_is_symmetric_in_the_two_tasks():
    from bench.signals.divergence import cross_link

    gen = np.random.default_rng(3)
    a, b = (gen.random((30, 6)) > 0.5).astype(float), (gen.random((25, 6)) > 0.6).astype(float)
    for k in (1, 3, 5):
        assert cross_link(a, b, k) == pytest.approx(cross_link(b, a, k), abs=1e-12)
        assert cross_link(a, b, k) == pytest.approx(_tie_shared_cross_link(a, b, k), abs=1e-12)


def test_pca_alignment_of_a_pair_does_not_depend_on_a_third_small_task():
    from bench.signals.divergence import pca_alignment

    gen = np.random.default_rng(4)
    a, b = gen.standard_normal((100, 6)), gen.standard_normal((100, 6))
    alone = pca_alignment([a, b], 5)
    with_small = pca_alignment([a, b, gen.standard_normal((1, 6)), gen.standard_normal((2, 6))], 5)
    np.testing.assert_allclose(with_small[:2, :2], alone)
    assert with_small[2, 0] == 0 and with_small[2, 2] == 0  # one sample: no direction
    assert alone[0, 0] == pytest.approx(1.0) and with_small[3, 3] == pytest.approx(1.0)


def test_divergence_subsample_is_capped_and_seeded():
    problem = planted_problem(shift=3.0)
    first = Divergence(max_samples=20).compute(problem, seed=1)
    assert first.info["subsample"] == [20] * problem.n_tasks
    again = Divergence(max_samples=20).compute(problem, seed=1)
    other = Divergence(max_samples=20).compute(problem, seed=2)
    np.testing.assert_array_equal(first.features["cross_distance"], again.features["cross_distance"])
    assert not np.array_equal(first.features["cross_distance"], other.features["cross_distance"])
    # only the mean distances are estimated from the subsample; the ranks, components and KNN graph see every
    # sample (the features of max_samples=1000, above every task's size)
    whole = Divergence(max_samples=1000).compute(problem, seed=1)
    for name in ("rank_div", "pca_align", "cross_link", "cosine_sim", "feature_mean_gap", "data_size"):
        np.testing.assert_allclose(first.features[name], whole.features[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert not np.allclose(first.features["cross_distance"], whole.features["cross_distance"])


def test_divergence_separates_clusters_that_differ_in_input_distribution():
    problem = planted_problem(shift=3.0)
    affinity = Divergence().compute(problem, seed=0)
    assert within_minus_cross(affinity.matrix, problem) > 0


# ----------------------------------------------------------------------------------------------------------------
# task_features


def test_curve_features_match_a_manual_fit():
    curve = [4.0, 2.5, 1.8, 1.5, 1.3, 1.25, 1.2, 1.1]
    end = curve[-1]
    y = (np.array(curve) - end) / end
    (a, b), _ = scipy.optimize.curve_fit(lambda x, a, b: a * np.log(x) + b, np.arange(1, 9), y)
    assert log_fit(curve) == pytest.approx((a, b), rel=1e-6)
    assert curve_gradient(curve, 25) == pytest.approx((curve[1] - end) / end)  # 25% of 8 epochs: epoch 2
    assert curve_gradient(curve, 50) == pytest.approx((curve[3] - end) / end)
    assert curve_gradient(curve, 1) == pytest.approx((curve[0] - end) / end)
    assert curve_gradient(curve, 100) == 0.0


class _FakeTrainer:
    """Deterministic made-up group results (what a method's cached trainer returns), counting the calls."""

    def __init__(self, problem):
        self.calls = []
        self.index = {t: k for k, t in enumerate(problem.task_names)}

    def loss(self, task, group):
        base = 1.0 + 0.5 * self.index[task]
        partner = sum(self.index[t] + 1 for t in group if t != task)
        return base * (1.0 - 0.05 * partner) if len(group) > 1 else base

    def __call__(self, group):
        group = make_group(group)
        self.calls.append(group)
        val_loss = {t: self.loss(t, group) for t in group}
        k = self.index[group[0]]
        curve = [3.0 + k, 2.0, 1.5 + 0.1 * k, 1.2] if len(group) == 1 else [1.0]
        return GroupResult(group, 0, val=dict(val_loss), test=dict(val_loss), val_loss=val_loss,
                           curves={"val_loss": curve, "train_loss": [1.0]})


def _pair_mean(x: np.ndarray, y: np.ndarray, metric) -> float:
    return float(np.mean([metric(u, v) for u in x for v in y]))


def _within_mean(x: np.ndarray, metric) -> float:
    return float(np.mean([metric(x[a], x[b]) for a in range(len(x)) for b in range(len(x)) if a != b]))


@pytest.mark.parametrize("binary", [False, True])
def test_task_features_match_manual_computation(binary):
    problem = mlp_problem(binary_inputs=binary, sizes=(8, 4, 4))
    fake = _FakeTrainer(problem)
    affinity = TaskFeatures(max_samples=1000, head_weights=False).compute(problem, seed=0, train=fake)
    tasks = problem.task_names
    n = len(tasks)
    pairs = [make_group(p) for p in itertools.combinations(tasks, 2)]
    assert sorted(fake.calls) == sorted([(t,) for t in tasks] + pairs)
    assert affinity.info["trainings"] == n + n * (n - 1) // 2 and affinity.info["direct_trainings"] == 0
    stl = {t: fake.loss(t, (t,)) for t in tasks}
    for i, j in itertools.product(range(n), repeat=2):
        a, b = tasks[i], tasks[j]
        if i == j:
            assert affinity.matrix[i, j] == 0.0
            continue
        pair = make_group((a, b))
        joint = fake.loss(a, pair) + fake.loss(b, pair)
        assert affinity.matrix[i, j] == pytest.approx((stl[a] + stl[b] - joint) / (stl[a] + stl[b]))
        assert affinity.features["directed_gain"][i, j] == pytest.approx((stl[a] - fake.loss(a, pair)) / stl[a])
    train = problem.task_data.train
    xs = [train.inputs[t].double().numpy() for t in tasks]
    ys = [train.targets[t].double().numpy().ravel() for t in tasks]
    single = affinity.task_features
    np.testing.assert_allclose(single["target_var"], [y.var() for y in ys])
    np.testing.assert_allclose(single["data_size"], [len(x) for x in xs])
    for k, t in enumerate(tasks):
        curve = [3.0 + k, 2.0, 1.5 + 0.1 * k, 1.2]
        assert single["curve_grad_50"][k] == pytest.approx(curve_gradient(curve, 50))
        assert (single["log_fit_a"][k], single["log_fit_b"][k]) == pytest.approx(log_fit(curve))
    metrics = {"euclidean": lambda u, v: np.linalg.norm(u - v), "manhattan": lambda u, v: np.abs(u - v).sum()}
    if binary:
        metrics["hamming"] = lambda u, v: np.mean(u != v)
    for name, metric in metrics.items():
        within = [_within_mean(x, metric) for x in xs]
        np.testing.assert_allclose(single[f"distance_{name}"], within)
        for i, j in itertools.combinations(range(n), 2):
            between = _pair_mean(xs[i], xs[j], metric)
            union = np.concatenate([xs[i], xs[j]])
            combined = _within_mean(union, metric)
            f = affinity.features
            assert f[f"between_{name}"][i, j] == pytest.approx(between)
            assert f[f"between_{name}_nS"][i, j] == pytest.approx(between / (within[i] + within[j]))
            assert f[f"between_{name}_nP"][i, j] == pytest.approx(between**2 / (within[i] * within[j]))
            assert f[f"combined_{name}_nS"][i, j] == pytest.approx(combined / (within[i] + within[j]))
            assert f[f"combined_{name}_nP"][i, j] == pytest.approx(combined**2 / (within[i] * within[j]))
            v_union = np.concatenate([ys[i], ys[j]]).var()
            assert f["combined_var_nP"][i, j] == pytest.approx(v_union**2 / (ys[i].var() * ys[j].var()))
    expected_distance = affinity.features["between_hamming" if binary else "between_euclidean"]
    np.testing.assert_array_equal(affinity.features["task_distance"], expected_distance)


def test_task_features_head_dot_products_come_from_one_all_task_model():
    problem = planted_problem()
    fake = _FakeTrainer(problem)
    affinity = TaskFeatures().compute(problem, seed=4, train=fake)
    assert affinity.info["direct_trainings"] == 1 and affinity.info["trainings"] == 6 + 15 + 1
    model, _ = train_all_tasks(problem, 4, "cpu")
    w = np.stack([torch.cat([model.heads[t].weight.reshape(-1), model.heads[t].bias]).detach().double().numpy()
                  for t in problem.task_names])
    np.testing.assert_allclose(affinity.features["head_dot"], w @ w.T, rtol=1e-12)


def test_task_features_separate_planted_clusters():
    problem = planted_problem()
    affinity = TaskFeatures(head_weights=False).compute(problem, seed=0)
    assert within_minus_cross(affinity.matrix, problem) > 0
    np.testing.assert_array_equal(affinity.matrix, affinity.matrix.T)


# ----------------------------------------------------------------------------------------------------------------
# grad_tae


def test_grad_tae_jacobians_match_autograd_loop():
    problem = mlp_problem()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = problem.model_factory(make_group(problem.task_names))
    model.eval()
    for t in problem.task_names:
        x = problem.task_data.train.inputs[t][:4]
        base, jac = output_jacobians(model, t, x)
        params = {**model.shared_parameters(), **model.task_parameters(t)}
        assert set(jac) == set(params)
        for s in range(4):
            out = model({t: x[s : s + 1]})[t].reshape(-1)
            torch.testing.assert_close(base[s], out.detach())
            for k in range(out.numel()):
                grads = torch.autograd.grad(out[k], list(params.values()), retain_graph=True)
                for name, g in zip(params, grads):
                    torch.testing.assert_close(jac[name][s, k], g, rtol=1e-5, atol=1e-6)


def test_grad_tae_projection_is_rademacher_and_chunk_independent():
    sizes = {"a": 7, "b": 5}
    projector = Projector(11, 6, sizes, torch.device("cpu"))
    block = projector.block("a", 7)
    assert set(np.unique(block.numpy() * math.sqrt(6))) <= {-1.0, 1.0}
    grads = {"a": torch.randn(4, 7, generator=torch.Generator().manual_seed(0)),
             "b": torch.randn(4, 5, generator=torch.Generator().manual_seed(1))}
    whole = projector.project(grads, 4)
    fresh = Projector(11, 6, sizes, torch.device("cpu"))
    parts = torch.cat([fresh.project({k: v[:1] for k, v in grads.items()}, 1),
                       fresh.project({k: v[1:] for k, v in grads.items()}, 3)])
    torch.testing.assert_close(whole, parts)
    dense = torch.cat([projector.block("a", 7), projector.block("b", 5)])
    torch.testing.assert_close(whole, torch.cat([grads["a"], grads["b"]], dim=1) @ dense)
    uncached = Projector(11, 6, {"a": 7, "b": 5, "huge": 1 << 30}, torch.device("cpu"))
    assert not uncached.cache_all
    torch.testing.assert_close(uncached.project(grads, 4), whole)


def _blocks(loss, n, k, d, seed, offset=True):
    gen = np.random.default_rng(seed)
    z = gen.standard_normal((n, k, d))
    f0 = gen.standard_normal((n, k)) if offset else np.zeros((n, k))
    if loss == "cross_entropy":
        y = gen.integers(0, k, n).astype(np.float64)
    elif loss == "bce":
        y = (gen.random((n, k)) > 0.5).astype(np.float64).reshape(n)
    else:
        y = gen.standard_normal(n * k).reshape(n) if k == 1 else gen.standard_normal((n, k))
    return {"Z": z, "f0": f0, "y": y, "loss": loss}


def test_grad_tae_fit_matches_sklearn_without_offsets():
    blocks = [_blocks("bce", 40, 1, 5, 0, offset=False), _blocks("bce", 30, 1, 5, 1, offset=False)]
    w = fit_linearised(blocks, C=0.3)
    X = np.concatenate([b["Z"][:, 0] for b in blocks])
    y = np.concatenate([b["y"] for b in blocks])
    ref = LogisticRegression(C=0.3, fit_intercept=False, tol=1e-10, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(w, ref.coef_[0], rtol=1e-4, atol=1e-6)
    blocks = [_blocks("mse", 25, 1, 4, 2), _blocks("mse", 15, 1, 4, 3)]
    w = fit_linearised(blocks, C=0.05)
    X = np.concatenate([b["Z"][:, 0] for b in blocks])
    r = np.concatenate([b["y"] - b["f0"][:, 0] for b in blocks])
    closed = np.linalg.solve(X.T @ X + np.eye(4) / (2 * 0.05), X.T @ r)
    np.testing.assert_allclose(w, closed, rtol=1e-8)
    np.testing.assert_allclose(w, Ridge(alpha=10.0, fit_intercept=False).fit(X, r).coef_, rtol=1e-8)


def test_grad_tae_mixed_fit_is_the_optimum_of_the_taylor_objective():
    blocks = [_blocks("mse", 20, 1, 6, 4), _blocks("bce", 20, 1, 6, 5), _blocks("cross_entropy", 20, 3, 6, 6)]
    C = 0.2
    w = torch.tensor(fit_linearised(blocks, C), requires_grad=True)
    total = 0.5 * (w * w).sum()
    for b in blocks:
        u = torch.tensor(b["f0"]) + torch.einsum("nkd,d->nk", torch.tensor(b["Z"]), w)
        y = torch.tensor(b["y"])
        if b["loss"] == "mse":
            total = total + C * ((u[:, 0] - y) ** 2).sum()
        elif b["loss"] == "bce":
            total = total + C * nn.functional.binary_cross_entropy_with_logits(u[:, 0], y, reduction="sum")
        else:
            total = total + C * nn.functional.cross_entropy(u, y.long(), reduction="sum")
    (grad,) = torch.autograd.grad(total, w)
    assert grad.abs().max() < 1e-5


def test_grad_tae_affinity_matches_a_manual_loop():
    subsets = [(0, 1), (0, 2), (1, 2), (0, 1, 2), (0, 1)]
    scores = [[-1.0, -2.0], [-1.5, -0.5], [-2.5, -0.7], [-1.2, -2.2, -0.6], [-0.9, -1.8]]
    T = affinity_from_scores(3, subsets, scores)
    per_task = {i: [(s, sc[s.index(i)]) for s, sc in zip(subsets, scores) if i in s] for i in range(3)}
    for i in range(3):
        values = [v for _, v in per_task[i]]
        mu, sigma = sum(values) / len(values), float(np.std(values))
        for j in range(3):
            chosen = [(v - mu) / (sigma + 1e-3) for s, v in per_task[i] if j in s]
            assert T[i, j] == pytest.approx(sum(chosen) / len(chosen))
    assert np.allclose(np.diag(T), 0.0)


def test_grad_tae_subsets_cover_every_pair():
    for n, size, count in [(6, 3, 24), (9, 2, 5), (12, 6, 8)]:
        subsets = sample_subsets(n, size, count, seed=5)
        assert all(len(set(s)) == size for s in subsets)
        covered = {p for s in subsets for p in itertools.combinations(sorted(s), 2)}
        assert covered == set(itertools.combinations(range(n), 2))
        assert subsets == sample_subsets(n, size, count, seed=5)
    assert len(sample_subsets(6, 3, 24, seed=0)) == 20  # all C(6, 3) subsets when there are no more


def test_grad_tae_runs_on_mixed_losses():
    problem = mlp_problem()
    affinity = GradTAE(project_dim=8, max_samples=6).compute(problem, seed=0)
    assert affinity.info["trainings"] == 1 and affinity.info["n_subsets"] == 3
    assert np.allclose(np.diag(affinity.matrix), 0.0)
    sym = affinity.features["symmetric"]
    np.testing.assert_allclose(sym, sym.T)


def test_grad_tae_separates_synthetic_clusters():
    problem = registry.create("dataset", "synthetic[clusters=[3,3],noise=0.3]").load("mini")
    affinity = GradTAE().compute(problem, seed=0)
    assert within_minus_cross(affinity.features["symmetric"], problem) > 0


# ----------------------------------------------------------------------------------------------------------------
# shared contract


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_deterministic_and_leaves_the_problem_untouched(name):
    problem = planted_problem(shift=1.0, sizes=(16, 16, 16))
    signal = SIGNALS[name](**SIGNALS[name].test_parameters)
    before = snapshot(problem)
    first = signal.compute(problem, seed=2)
    second = signal.compute(problem, seed=2)
    for old, new in zip(before, snapshot(problem)):
        assert torch.equal(old, new)
    np.testing.assert_array_equal(first.matrix, second.matrix)
    assert first.features.keys() == second.features.keys()
    for key in first.features:
        np.testing.assert_array_equal(first.features[key], second.features[key])
    assert first.tasks == problem.task_names and first.signal == signal.id
    assert signal.during_training is False and signal.name == name
    assert registry.create("signal", signal.id) == signal


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_tabulated_dataset_is_unsupported(name, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    problem = registry.create("dataset", "taskonomy").load("smoke")
    with pytest.raises(Unsupported):
        SIGNALS[name]().compute(problem, seed=0)


def test_grad_tae_refuses_a_subset_size_that_leaves_one_subset():
    """Three tasks in subsets of 3: one subset, every z-scored score 0, an all-zero affinity; refused before any
    training."""
    from bench.errors import UsageError
    from bench.signals.grad_tae import GradTAE

    problem = mlp_problem()
    with pytest.raises(UsageError, match=r"subset_size=3 leaves one subset of the 3 tasks.*\[2, 2\]"):
        GradTAE(subset_size=3).compute(problem, seed=0)
