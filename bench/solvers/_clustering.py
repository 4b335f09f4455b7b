"""Shared machinery of the clustering solvers (``sdp``, ``gat_gmm``, ``hierarchical``, ``kmeans``).

Clustering methods see a partition problem through its pairwise matrix only. :func:`affinity` turns the score's
matrix into the symmetric affinity every clustering solver works on, :func:`exactly_k` repairs a labelling to
exactly ``k`` non-empty clusters, :func:`to_groups` turns labels into groups of task names. sklearn, cvxpy and
torch are imported inside the functions that use them: solver discovery imports every solver module.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from bench.errors import UsageError
from bench.solvers.base import PartitionProblem

SIZE_BOUND_SOLVERS = ("dp", "exhaustive", "local_search")
"""Solvers that honour group size bounds (named in the error of the clustering solvers, which do not)."""


def affinity(problem: PartitionProblem, solver_id: str, symmetric: bool = True) -> np.ndarray:
    """The symmetric affinity ``A = (S + S') / 2`` of the problem's matrix, with a constant diagonal
    (``symmetric=False``: ``S`` itself, rows as they are, with the same diagonal).

    Symmetrising loses nothing: a :class:`~bench.solvers.base.PairwiseScore` partition's value depends on ``S``
    only through ``S + S'``. The diagonal of ``S`` is the score of a task alone (an STL value, or TAG's ``-1e6``
    sentinel forbidding singletons), not an affinity between two tasks, and on another scale; clustering treats a
    task as at least as close to itself as to any other, so the diagonal is set to the largest off-diagonal
    entry. Then ``max(A)`` is the largest pairwise affinity and ``max(A) - A`` has a zero diagonal.

    Raises a :class:`UsageError` when the score has no matrix or the problem bounds the group sizes.
    """
    S = problem.score.matrix
    if S is None:
        raise UsageError(f"solver '{solver_id}' needs a pairwise affinity matrix (bench group --affinity), "
                         f"not per-group scores")
    check_no_size_bounds(problem, solver_id)
    A = (S + S.T) / 2 if symmetric else np.array(S, dtype=np.float64)
    n = len(A)
    off = A[~np.eye(n, dtype=bool)]
    np.fill_diagonal(A, off.max() if off.size else 0.0)
    return A


def check_no_size_bounds(problem: PartitionProblem, solver_id: str) -> None:
    if problem.min_size != 1 or problem.max_size != problem.n:
        raise UsageError(f"solver '{solver_id}' does not support group size bounds (got min-size "
                         f"{problem.min_size}, max-size {problem.max_size}); use one of "
                         f"{', '.join(SIZE_BOUND_SOLVERS)}, or drop the bounds")


def distances(A: np.ndarray) -> np.ndarray:
    """``D = max(A) - A`` with a zero diagonal: non-negative, small for tasks with a high affinity."""
    D = A.max() - A
    np.fill_diagonal(D, 0.0)
    return D


def euclidean(Z: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances between the rows of ``Z``."""
    diff = Z[:, None, :] - Z[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


def trivial(problem: PartitionProblem) -> list[list[str]] | None:
    """The only partition when ``k = 1`` (all tasks) or ``k = n`` (singletons), else ``None``."""
    if problem.k == 1:
        return [list(problem.tasks)]
    if problem.k == problem.n:
        return [[t] for t in problem.tasks]
    return None


def random_state(gen: np.random.Generator) -> int:
    """A seed for sklearn or torch drawn from ``gen`` (the only source of randomness of a solver)."""
    return int(gen.integers(2**31 - 1))


def relabel(labels) -> np.ndarray:
    """Labels renumbered ``0..m-1`` in order of first appearance."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse.reshape(-1)]


def exactly_k(labels, k: int, D: np.ndarray, avoid_singletons: bool = False) -> tuple[np.ndarray, int]:
    """Repair a labelling to exactly ``k`` non-empty clusters; returns the labels and the number of repairs.

    While there are too few clusters the largest one (first on ties) is split in two: its two members farthest
    apart under ``D`` seed the halves and every other member joins the nearer seed (the first on ties), so both
    halves are non-empty even when all members coincide. With ``avoid_singletons``, a split of four or more
    members that leaves a seed alone gives it the other half's member nearest to it (the farthest member is often
    the one task a singleton refinement has just merged, which the split would otherwise cut off again). While
    there are too many, the two clusters with the smallest average distance are merged (average linkage).
    Deterministic; ``D`` is any symmetric dissimilarity (``max(A) - A``, or Euclidean distances in an embedding).
    """
    labels = relabel(labels)
    repairs = 0
    while labels.max() + 1 < k:
        big = np.bincount(labels).argmax()
        members = np.flatnonzero(labels == big)
        sub = D[np.ix_(members, members)]
        a, b = np.unravel_index(np.argmax(sub), sub.shape)
        if a == b:  # all distances zero: argmax is (0, 0)
            a, b = 0, 1
        to_b = sub[:, b] < sub[:, a]
        to_b[a], to_b[b] = False, True
        if avoid_singletons and len(members) >= 4:
            for seed, side in ((a, ~to_b), (b, to_b)):
                if side.sum() == 1:  # the seed alone: its nearest member of the other half joins it
                    other = np.flatnonzero(~side)
                    to_b[other[np.argmin(sub[seed, other])]] = seed == b
        labels[members[to_b]] = labels.max() + 1
        repairs += 1
    while labels.max() + 1 > k:
        m = labels.max() + 1
        link = np.full((m, m), np.inf)
        for p in range(m):
            for q in range(p + 1, m):
                link[p, q] = D[np.ix_(labels == p, labels == q)].mean()
        p, q = np.unravel_index(np.argmin(link), link.shape)
        labels[labels == q] = p
        labels = relabel(labels)
        repairs += 1
    return labels, repairs


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny numerical work on one thread (OpenMP/BLAS pools and torch's intra-op pool, restored afterwards).

    The matrices here have a few dozen rows: extra threads only add synchronisation, which on a busy machine made
    a k-means or GAT run 10-100x slower, and with one thread the float reductions (hence the results) do not depend
    on the machine's core count.
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only when a solver has imported it
    threads = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(threads)


def kmeans_labels(Z: np.ndarray, k: int, n_init: int, gen: np.random.Generator) -> tuple[np.ndarray, int]:
    """sklearn k-means labels of the rows of ``Z`` repaired to exactly ``k`` clusters (labels, number of repairs).

    k-means finds fewer than ``k`` clusters when fewer than ``k`` rows are distinct; :func:`exactly_k` then splits.
    """
    from sklearn.cluster import KMeans  # imported when used: discovery imports every solver module
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(), one_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)  # "fewer distinct points than clusters": repaired below
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=random_state(gen)).fit_predict(Z)
    return exactly_k(labels, k, euclidean(Z))


def to_groups(labels, tasks) -> list[list[str]]:
    """Clusters as lists of task names, in order of their first task."""
    labels = relabel(labels)
    return [[t for t, lab in zip(tasks, labels) if lab == c] for c in range(labels.max() + 1)]
