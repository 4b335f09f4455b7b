"""Task-relation (data-divergence) features of every ordered task pair, from the data alone.

Paper: "tabular-divergence-features" (Section 3.1, Eq. 4-13): statistics that characterise the relationship of two
tasks' datasets ``D_i`` and ``D_j`` without any training. With ``|D_t|`` the number of samples of task ``t``,
``d_t = E_{x,x' ~ D_t} ||x - x'||`` the intra-task and ``d_ij = E_{x ~ D_i, x' ~ D_j} ||x - x'||`` the cross-task
mean Euclidean distance (Eq. 6-7), ``features`` holds one ``n x n`` matrix per feature, entry ``[i, j]`` for
recipient ``i`` and source ``j``:

- ``data_size``: ``|D_i| + |D_j|`` (Eq. 4); diagonal ``2 |D_i|``;
- ``data_ratio``: ``|D_i| / (|D_i| + |D_j|)`` (Eq. 4, the recipient's share); diagonal 0.5;
- ``size_gap``: ``||D_i| - |D_j|| / (|D_i| + |D_j|)`` (Eq. 5); diagonal 0;
- ``cross_distance``: ``d_ij`` (Eq. 7); diagonal ``d_i``;
- ``intra_gap_sum``: ``|d_i - d_j| / (d_i + d_j)``; ``intra_gap_product``: ``|d_i - d_j| / sqrt(d_i d_j)``;
  diagonals 0;
- ``cross_distance_sum``: ``d_ij / (d_i + d_j)`` (diagonal 0.5); ``cross_distance_product``:
  ``d_ij / sqrt(d_i d_j)`` (diagonal 1);
- ``energy_distance``: ``2 d_ij - d_i - d_j`` (Eq. 8); diagonal 0;
- ``feature_mean_gap``: ``||mu_i - mu_j||`` (Eq. 9); diagonal 0;
- ``cosine_sim``: ``E_{x ~ D_i, x' ~ D_j} <x, x'> / (||x|| ||x'||)`` (Eq. 10); diagonal: the same mean within
  ``D_i``;
- ``pca_align``: ``(1/k) sum_l |<u_l^(i), u_l^(j)>|`` (Eq. 11); diagonal 1;
- ``rank_div``: ``(1/p) sum_k |rbar_i^(k) - rbar_j^(k)|`` (Eq. 12); diagonal 0;
- ``cross_link``: cross-task edges / all edges of the KNN graph of ``D_i ∪ D_j`` (Eq. 13); diagonal 0.5 (the value
  for two equal-size samples of one distribution; the sample of a task against itself would coincide point by
  point).

The four normalised distances are the ones the paper lists in Section 3.1 and Figure 1. ``task_features`` holds
``data_size`` (``|D_t|``), ``intra_distance`` (``d_t``) and the label statistics ``label_var`` / ``label_std``.

``matrix = -energy_distance``: the single similarity (larger = the two input distributions are closer). The energy
distance is the feature the paper finds consistently informative across benchmarks (Section 4.2.1), it is a
metric between distributions (zero iff they are equal) and it is symmetric; the diagonal is 0, the row maximum.

Choices where the paper leaves room:

- Data (Section 3.1): input features use each task's **train + test** inputs (flattened to vectors); label
  features use the **train** labels only (to avoid leakage); the validation split is not used. ``|D_t|`` counts
  train + test samples, the data the input features describe.
- The mean distances (``d_t``, ``d_ij`` and the features made of them: the normalised distances and the energy
  distance), O(N^2) in the samples, use a seeded subsample of at most ``max_samples`` samples per task (the paper:
  ``d_t`` "estimated from a random subset"). Every other feature uses every sample: sizes and means, the cosine
  similarity (the mean pairwise cosine equals the inner product of the mean unit vectors, so it is exact in O(N)),
  the principal components (O(N p^2)), the ranks (O(N log N)) and the KNN graph (a tree search).
- ``d_t`` is the U-statistic (the mean over the ``N (N - 1)`` ordered pairs of distinct samples: ``x, x'`` are
  "two independent samples", Section 3.1), ``d_ij`` the mean over all ``N_i N_j`` pairs; a task with one sample
  has ``d_t = 0``. The V-statistic (self-pairs included, ``scipy.stats.energy_distance ** 2`` in one dimension)
  shrinks ``d_t`` by ``(N - 1) / N``, so on tasks of unequal size it turns size into "divergence": two samples of
  one 27-dimensional Gaussian of 22 and 251 points have an energy distance of 0.37 against 0.06 at 251 and 251
  (a real mean shift of 0.1 per dimension gives 0.10). The U-statistic is unbiased and can be slightly negative.
- ``cosine_sim`` is Eq. 10 (the mean over sample pairs); a zero input vector counts as cosine 0.
- ``pca_align``: per pair, the top ``k = min(pca_components, p, N_i - 1, N_j - 1)`` principal components of each
  task (``sklearn.decomposition.PCA`` on the task's centred samples; ``N - 1`` components span centred samples),
  the ``l``-th of one task against the ``l``-th of the other; 0 against a task of one sample (no direction).
- ``rank_div``: ranks of the pooled values of both tasks per input feature (``scipy.stats.rankdata``, ties get
  their average rank), unnormalised as in Eq. 12 (it grows with the pooled sample size).
- ``cross_link``: directed ``k``-nearest-neighbour graph (Euclidean, a point is not its own neighbour) on the union
  of the two tasks' samples; ``k`` is capped by the union size minus 1. Points tied at the ``k``-th distance share
  the remaining edges equally (one-hot and indicator inputs tie often; a neighbour search breaks ties by position
  in the union, which made ``[i, j]`` depend on which task came first: 0.37 against 0.51 on one-hot pairs).
- A ratio with a zero denominator (a task whose samples are all identical) is 0.
- Tasks whose inputs differ in dimension have no common feature space: the signal raises ``Unsupported``.
- Problems with one shared input tensor give identical input distributions for every task, so every input feature
  is the same for all pairs (energy distance 0); only the label features differ.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import rankdata
from sklearn.decomposition import PCA

from bench.dataset import Problem
from bench.errors import Unsupported, UsageError
from bench.seeding import rng
from bench.signals.base import Affinity, Signal, Trainer

_BLOCK_ENTRIES = 1 << 23
"""Distance-matrix entries computed at once (64 MiB of float64)."""


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def mean_distances(samples: list[np.ndarray]) -> np.ndarray:
    """``D[i, j]``: mean Euclidean distance over the pairs ``(x in samples[i], x' in samples[j])``; on the diagonal
    over the pairs of distinct samples (U-statistic; 0 for one sample)."""
    n = len(samples)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            total, rows = 0.0, samples[i].shape[0]
            step = max(1, _BLOCK_ENTRIES // max(1, samples[j].shape[0]))
            for start in range(0, rows, step):
                total += cdist(samples[i][start : start + step], samples[j]).sum()
            pairs = rows * (rows - 1) if i == j else rows * samples[j].shape[0]  # distinct samples within a task
            out[i, j] = out[j, i] = total / pairs if pairs else 0.0
    return out


def cosine_similarity(full: list[np.ndarray]) -> np.ndarray:
    """Eq. 10 exactly: the mean pairwise cosine is the inner product of the tasks' mean unit vectors."""
    units = []
    for x in full:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        units.append(_safe_div(x, norms).mean(axis=0))
    u = np.stack(units)
    return u @ u.T


def pca_alignment(samples: list[np.ndarray], components: int) -> np.ndarray:
    """Eq. 11 per pair with the top ``k = min(components, p, N_i - 1, N_j - 1)`` components of each task."""
    p = samples[0].shape[1]
    ranks = [min(components, p, x.shape[0] - 1) for x in samples]
    bases = [PCA(n_components=r, svd_solver="full").fit(x).components_ if r > 0 else np.zeros((0, p))
             for x, r in zip(samples, ranks)]
    n = len(samples)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            k = min(ranks[i], ranks[j])
            if k > 0:
                out[i, j] = np.abs(np.sum(bases[i][:k] * bases[j][:k], axis=1)).mean()
    return out


def rank_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """Eq. 12: pooled ranks per feature, mean absolute gap of the two tasks' mean ranks, averaged over features."""
    ranks = rankdata(np.concatenate([a, b]), axis=0)
    gap = np.abs(ranks[: a.shape[0]].mean(axis=0) - ranks[a.shape[0] :].mean(axis=0))
    return float(gap.mean())


def cross_link(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Eq. 13: fraction of the directed KNN edges of ``a ∪ b`` that join samples of different tasks; the points
    tied at a point's ``k``-th distance share its remaining edges equally (symmetric in ``a`` and ``b``)."""
    union = np.concatenate([a, b])
    size = union.shape[0]
    k = min(k, size - 1)
    if k < 1:
        return 0.0
    other = np.repeat([0, 1], [a.shape[0], b.shape[0]])
    other = other[None, :] != other[:, None]  # (N, N): the two points belong to different tasks
    cross = 0.0
    step = max(1, _BLOCK_ENTRIES // size)
    for start in range(0, size, step):
        dist = cdist(union[start : start + step], union)
        rows = np.arange(dist.shape[0])
        dist[rows, start + rows] = np.inf  # a point is not its own neighbour
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]
        closer, tied = dist < kth, dist == kth
        share = (k - closer.sum(axis=1, keepdims=True)) / tied.sum(axis=1, keepdims=True)
        block = other[start : start + step]
        cross += float((closer & block).sum() + (share * (tied & block)).sum())
    return cross / (size * k)


def pair_features(full: list[np.ndarray], samples: list[np.ndarray], k: int, pca_components: int,
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every Section 3.1 feature (``[recipient, source]``) and the single-task statistics, from flattened inputs.

    ``full[t]``: all of task ``t``'s inputs; ``samples[t]``: its subsample for the mean distances.
    """
    n = len(full)
    size = np.array([x.shape[0] for x in full], dtype=np.float64)
    total = size[:, None] + size[None, :]
    cross = mean_distances(samples)
    intra = np.diag(cross).copy()
    di, dj = intra[:, None], intra[None, :]
    means = np.stack([x.mean(axis=0) for x in full])
    rank = np.zeros((n, n))
    # A task against itself: its two samples would coincide point by point; the diagonal is set to the value of two
    # equal-size samples of one distribution (each neighbour equally likely from either), 0.5.
    link = np.full((n, n), 0.5)
    for i in range(n):
        for j in range(i + 1, n):
            rank[i, j] = rank[j, i] = rank_divergence(full[i], full[j])
            link[i, j] = link[j, i] = cross_link(full[i], full[j], k)
    features = {
        "data_size": total,
        "data_ratio": size[:, None] / total,
        "size_gap": np.abs(size[:, None] - size[None, :]) / total,
        "cross_distance": cross,
        "intra_gap_sum": _safe_div(np.abs(di - dj), di + dj),
        "intra_gap_product": _safe_div(np.abs(di - dj), np.sqrt(di * dj)),
        "cross_distance_sum": _safe_div(cross, di + dj),
        "cross_distance_product": _safe_div(cross, np.sqrt(di * dj)),
        "energy_distance": 2.0 * cross - di - dj,
        "feature_mean_gap": np.linalg.norm(means[:, None, :] - means[None, :, :], axis=2),
        "cosine_sim": cosine_similarity(full),
        "pca_align": pca_alignment(full, pca_components),
        "rank_div": rank,
        "cross_link": link,
    }
    return features, {"data_size": size, "intra_distance": intra}


class Divergence(Signal):
    """Data-divergence task-relation features (tabular-divergence-features Section 3.1); see the module docstring."""

    name = "divergence"
    version = "3"
    during_training = False
    defaults = {"max_samples": 256, "k": 5, "pca_components": 5}
    parameters = {"max_samples": [128, 256, 1024], "k": [5, 10]}
    test_parameters = {"max_samples": 32, "k": 3, "pca_components": 2}

    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        problem = self.trained_problem(problem, self.id)
        if self.max_samples < 2 or self.k < 1 or self.pca_components < 1:
            raise UsageError("divergence needs max_samples >= 2, k >= 1 and pca_components >= 1")
        tasks = problem.task_names
        data = problem.task_data
        full, samples, label_var, label_std = [], [], [], []
        for t in tasks:
            # Copies in float64: the problem's tensors are never touched.
            x = np.concatenate([data.train.inputs[t].detach().cpu().double().reshape(
                data.train.inputs[t].shape[0], -1).numpy(), data.test.inputs[t].detach().cpu().double().reshape(
                data.test.inputs[t].shape[0], -1).numpy()])
            full.append(x)
            gen = rng(seed, "divergence", "subsample", t)
            keep = np.sort(gen.choice(x.shape[0], size=self.max_samples, replace=False)) \
                if x.shape[0] > self.max_samples else np.arange(x.shape[0])
            samples.append(x[keep])
            y = data.train.targets[t].detach().cpu().double().numpy().ravel()
            label_var.append(float(y.var()))
            label_std.append(float(y.std()))
        if len({x.shape[1] for x in full}) > 1:
            raise Unsupported("divergence needs every task's inputs in one common feature space (same dimension)")
        features, single = pair_features(full, samples, self.k, self.pca_components)
        single.update(label_var=np.array(label_var), label_std=np.array(label_std))
        matrix = -features["energy_distance"]
        info = {"trainings": 0, "extra_forward": 0, "extra_backward": 0,
                "subsample": [int(s.shape[0]) for s in samples]}
        return Affinity(tasks, matrix, self.id, info, features=features, task_features=single)
