"""Grad-TAE's SDP clustering (Li et al. 2024, ``ScalableMTL/exps_on_graph_datasets/run_clustering.py``; also used by
tabular-divergence-features, Section 4 and Appendix "Spectral SDP-Based Clustering").

With the symmetrised affinity ``A`` (:func:`bench.solvers._clustering.affinity`), optionally ``A <- exp(A / tau)``,
and the cost ``C = max(A) - A``, solve the relaxation of k-way clustering::

    minimise tr(C X)  subject to  X PSD,  X >= 0 elementwise,  tr(X) = k,  X 1 = 1

(the cluster matrix ``X = sum_G 1_G 1_G' / |G|`` of any partition into ``k`` groups is feasible), then round ``X``.

Departures from the reference code:

* ``A = (S + S') / 2``: the reference minimises ``tr(T X)`` over symmetric ``X``, which equals ``tr(sym(T) X)``,
  so this changes nothing.
* The diagonal of ``A`` is made constant, because the score's diagonal is a singleton score (STL value, or the
  ``-1e6`` sentinel that would dominate ``C``), not an affinity. This is the one change of the SDP: the reference
  keeps whatever diagonal its affinity has; with a constant one, ``diag(C)`` only adds ``k * const`` (``tr(X) = k``),
  i.e. the SDP sees the pairwise affinities alone.
* ``exp(A / tau)`` is computed as ``exp((A - max A) / tau)`` and ``C`` is divided by its largest entry: positive
  rescalings of ``C`` (same minimiser) that cannot overflow and keep the solver's tolerances meaningful.
* The solver is named (``CLARABEL``, tolerances 1e-7, or ``SCS``); the reference calls ``prob.solve()`` and lets
  CVXPY choose, which picks a commercial solver when one is installed. A failed solve or any status other than
  ``optimal`` raises a :class:`~bench.errors.BenchError` (no silent fallback), except ``optimal_inaccurate`` (the
  solver met only its reduced tolerances) with a point whose constraint violation is at most
  :data:`INACCURATE_RESIDUAL`: the rounding needs ``X`` near the optimum, not the last digits of the gap (School's
  139-task relaxation at k = 4 ended so). ``info`` names the status and the violation (``sdp_status``,
  ``sdp_residual``) of every solve.
* Rounding. The reference rounding (:func:`threshold_rounding`) thresholds ``X > 1/n`` and scans the rows; it
  can return more or fewer than ``k`` clusters and leave tasks unassigned (e.g. ``X = J/n``, the optimum for
  ``k = 1``, assigns nobody; a 6-ring with ``k = 3`` gives 4 clusters). Here ``X`` is rounded spectrally
  (:func:`spectral_rounding`): the rows of ``V_k diag(sqrt(lambda_k))`` (top-``k`` eigenpairs of ``X``; for the
  cluster matrix of a partition these rows coincide within a group and are orthogonal across groups) are
  clustered by k-means into ``k`` clusters, repaired to exactly ``k`` non-empty groups if k-means finds fewer
  (identical rows). ``info`` reports how many clusters and unassigned tasks the reference rounding would give.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError, UsageError
from bench.solvers._clustering import affinity, kmeans_labels, to_groups, trivial
from bench.solvers.base import PartitionProblem, Raw, Solver

SDP_SOLVERS = ("CLARABEL", "SCS")
SOLVER_SETTINGS = {"CLARABEL": {"tol_gap_abs": 1e-7, "tol_gap_rel": 1e-7, "tol_feas": 1e-7}, "SCS": {}}
"""CLARABEL's default 1e-8 sometimes stalls just above it (status ``optimal_inaccurate``; 3 in 1500 random
instances); 1e-7 never did, and the rounding needs far less. SCS keeps its defaults (eps 1e-4)."""


INACCURATE_RESIDUAL = 1e-5
"""The largest constraint violation (``|tr X - k|``, ``|X 1 - 1|``, negative entries or eigenvalues) accepted from
a solve that ended ``optimal_inaccurate``."""


def sdp_residual(X: np.ndarray, k: int) -> float:
    """How far ``X`` is from the feasible set: the largest violation of ``tr X = k``, ``X 1 = 1``, ``X >= 0`` and
    ``X PSD``."""
    return float(max(abs(np.trace(X) - k), np.abs(X.sum(axis=1) - 1).max(), -min(X.min(), 0.0),
                     -min(np.linalg.eigvalsh(X).min(), 0.0)))


def solve_sdp(C: np.ndarray, k: int, solver: str, settings: dict | None = None) -> tuple[np.ndarray, dict]:
    """The optimal ``X`` of ``min tr(C X) s.t. X PSD, X >= 0, tr(X) = k, X 1 = 1`` (symmetrised) and the solve's
    ``{"sdp_status", "sdp_residual"}``; ``settings`` replace the solver's (:data:`SOLVER_SETTINGS`)."""
    import cvxpy as cp  # imported when used: discovery imports every solver module

    n = len(C)
    X = cp.Variable((n, n), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >= 0, cp.trace(X) == k, cp.sum(X, axis=1) == 1])
    try:
        prob.solve(solver=solver, **(SOLVER_SETTINGS[solver] if settings is None else settings))
    except cp.error.SolverError as exc:
        raise BenchError(f"the SDP solver {solver} failed on the {n}-task clustering relaxation: {exc}") from exc
    others = f"try the other solver ({', '.join(SDP_SOLVERS)})"
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or X.value is None:
        raise BenchError(f"the SDP solver {solver} ended with status '{prob.status}' on the {n}-task clustering "
                         f"relaxation (need 'optimal'); {others}")
    value = (X.value + X.value.T) / 2
    residual = sdp_residual(value, k)
    if prob.status == cp.OPTIMAL_INACCURATE and residual > INACCURATE_RESIDUAL:
        raise BenchError(f"the SDP solver {solver} ended with status '{prob.status}' on the {n}-task clustering "
                         f"relaxation and a point that violates the constraints by {residual:.2g} (more than "
                         f"{INACCURATE_RESIDUAL:g}); {others}")
    return value, {"sdp_status": prob.status, "sdp_residual": residual}


def threshold_rounding(X: np.ndarray) -> list[list[int]]:
    """The reference rounding of Grad-TAE, kept as is: clusters of task indices; a task may be left out.

    Threshold ``B = X > 1/n``; scan rows ``i = 0..n-1``: for each ``j >= i`` with ``B[i, j]`` and ``j`` not yet
    assigned, ``i`` (if not yet assigned) and ``j`` join the current cluster; a new cluster is opened after every
    row that assigned somebody. Nothing forces the number of clusters to be ``k``, and a task whose row is below
    the threshold for every ``j >= i`` and that no earlier row picked stays unassigned.
    """
    n = len(X)
    B = X > 1 / n
    assigned = np.zeros(n, dtype=bool)
    clusters: list[list[int]] = []
    for i in range(n):
        cluster = []
        for j in range(i, n):
            if B[i, j] and not assigned[j]:
                for t in (i, j):
                    if not assigned[t]:
                        cluster.append(t)
                        assigned[t] = True
        if cluster:
            clusters.append(cluster)
    return clusters


def spectral_rounding(X: np.ndarray, k: int, gen: np.random.Generator) -> tuple[np.ndarray, int]:
    """Labels of exactly ``k`` non-empty clusters: k-means on the top-``k`` spectral embedding of ``X``.

    ``E = V_k diag(sqrt(max(lambda_k, 0)))``, so ``E E'`` is the best rank-``k`` approximation of ``X`` and
    ``|e_i - e_j|^2 ~ X_ii + X_jj - 2 X_ij``. Returns the labels and the number of repairs.
    """
    w, V = np.linalg.eigh(X)
    top = np.argsort(w)[::-1][:k]
    E = V[:, top] * np.sqrt(np.clip(w[top], 0.0, None))
    return kmeans_labels(E, k, 10, gen)


class SDP(Solver):
    name = "sdp"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"solver": "CLARABEL", "use_exp": False, "tau": 1.0}
    test_parameters = {"solver": "CLARABEL"}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        if self.solver not in SDP_SOLVERS:
            raise UsageError(f"solver '{self.id}': unknown SDP solver '{self.solver}'; choose one of "
                             f"{', '.join(SDP_SOLVERS)}")
        if not self.tau > 0:
            raise UsageError(f"solver '{self.id}': the temperature tau must be positive, got {self.tau}")
        A = affinity(problem, self.id)
        groups = trivial(problem)
        if groups is not None:
            return Raw(groups, "heuristic")
        if self.use_exp:
            A = np.exp((A - A.max()) / self.tau)
        C = A.max() - A
        if C.max() > 0:
            C = C / C.max()
        X, solved = solve_sdp(C, problem.k, self.solver)
        labels, repairs = spectral_rounding(X, problem.k, np.random.default_rng(seed))
        reference = threshold_rounding(X)
        info = {**solved, "repairs": repairs, "threshold_clusters": len(reference),
                "threshold_unassigned": problem.n - sum(len(c) for c in reference)}
        return Raw(to_groups(labels, problem.tasks), "heuristic", info)
