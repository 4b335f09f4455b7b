"""The clustering solvers (sdp, gat_gmm, hierarchical, kmeans) and the random partition solver.

Every solver must return exactly k non-empty groups for every k, deterministically under a seed, and the
clustering solvers must recover a strongly planted block structure. (How far these heuristics fall from the exact
optimum is reported elsewhere, not tested here.)
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from bench.errors import BenchError, UsageError
from bench.solvers import CallableScore, PairwiseScore, PartitionProblem, TableScore
from bench.solvers._clustering import affinity, exactly_k, to_groups
from bench.solvers.sdp import INACCURATE_RESIDUAL, sdp_residual, solve_sdp, threshold_rounding

CLUSTERING = ("sdp", "gat_gmm", "hierarchical", "kmeans")
ALL = (*CLUSTERING, "random")


def solver(name: str, **params):
    module = importlib.import_module(f"bench.solvers.{name}")  # not via the registry: it imports every solver
    (cls,) = [c for c in vars(module).values() if getattr(c, "name", None) == name and isinstance(c, type)]
    return cls(**{**cls.test_parameters, **params})


def problem(S, k: int, **bounds) -> PartitionProblem:
    tasks = [f"t{i}" for i in range(len(S))]
    return PartitionProblem(tasks, k, PairwiseScore(S, tasks), **bounds)


def matrix(n: int, seed: int) -> np.ndarray:
    """Random affinities of several kinds: Gaussian (asymmetric, negative), tied rows, constant, huge diagonal."""
    gen = np.random.default_rng(seed)
    kind = seed % 4
    if kind == 0:
        return gen.standard_normal((n, n))
    if kind == 1:  # only two distinct rows/columns: k-means and the GMM see fewer than k distinct points
        lab = gen.integers(2, size=n)
        return np.where(lab[:, None] == lab[None, :], 1.0, 0.0)
    if kind == 2:
        return np.full((n, n), 0.3)
    S = gen.uniform(-1, 1, (n, n)) * 1e-3
    np.fill_diagonal(S, -1e6)  # TAG's sentinel forbidding singletons
    return S


def planted(seed: int, noise: float = 0.05):
    """3 blocks of 3 tasks in a shuffled order: within 1 + noise, across -1."""
    gen = np.random.default_rng(seed)
    lab = gen.permutation(np.repeat(np.arange(3), 3))
    S = np.where(lab[:, None] == lab[None, :], 1.0, -1.0) + noise * gen.standard_normal((9, 9))
    blocks = {tuple(f"t{i}" for i in np.flatnonzero(lab == b)) for b in range(3)}
    return S, blocks


@pytest.mark.parametrize("name", ALL)
def test_exactly_k_groups_for_every_k(name):
    s = solver(name)
    for n in range(2, 10):
        for k in range(1, n + 1):
            sol = s.solve(problem(matrix(n, 7 * n + k), k), seed=n + k)  # the base class validates the partition
            assert len(sol.groups) == k and sol.status == "heuristic", (name, n, k)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_a_seed(name):
    s = solver(name)
    for seed in range(3):
        p = problem(np.random.default_rng(seed).standard_normal((8, 8)), 3)
        a, b = s.solve(p, seed=seed), s.solve(p, seed=seed)
        assert (a.groups, dict(a.info)) == (b.groups, dict(b.info))


def test_global_random_state_untouched():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    for name in ALL:
        solver(name).solve(problem(matrix(6, 0), 3), seed=1)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)


@pytest.mark.parametrize("name", CLUSTERING)
def test_recovers_planted_blocks(name):
    s = solver(name)
    for seed in range(3):
        S, blocks = planted(seed)
        assert set(s.solve(problem(S, 3), seed=seed).groups) == blocks, (name, seed)


def test_planted_blocks_with_paper_parameters():
    S, blocks = planted(11)
    assert set(solver("gat_gmm", epochs=100, restarts=10).solve(problem(S, 3), seed=0).groups) == blocks


def ring(n: int) -> np.ndarray:
    A = np.eye(n)
    for i in range(n):
        A[i, (i + 1) % n] = A[(i + 1) % n, i] = 1.0
    return A


def test_sdp_rounding_gives_k_groups_where_the_reference_rounding_does_not():
    # 6-ring, k = 3: the SDP optimum is the average of the two perfect matchings (X_ii = 1/2, neighbours 1/4);
    # thresholding at 1/6 and scanning gives {0,1,5}, {2}, {3}, {4}: 4 clusters.
    A = ring(6)
    X, solved = solve_sdp(A.max() - A, 3, "CLARABEL")
    assert solved["sdp_status"] == "optimal" and solved["sdp_residual"] < 1e-6
    assert np.allclose(X, 0.5 * np.eye(6) + 0.25 * (np.roll(np.eye(6), 1, 0) + np.roll(np.eye(6), -1, 0)), atol=1e-5)
    assert threshold_rounding(X) == [[0, 1, 5], [2], [3], [4]]
    sol = solver("sdp").solve(problem(A, 3), seed=0)
    assert sol.info["threshold_clusters"] == 4
    assert len(sol.groups) == 3
    assert all(len(g) == 2 and (int(g[1][1]) - int(g[0][1])) % 6 in (1, 5) for g in sol.groups)  # adjacent pairs
    assert sol.objective == pytest.approx(6.0)  # the optimum: every task with a neighbour


def test_threshold_rounding_can_leave_every_task_unassigned():
    assert threshold_rounding(np.full((5, 5), 1 / 5)) == []  # X = J/n, the SDP optimum for k = 1
    blocks = np.zeros((5, 5))
    blocks[:3, :3], blocks[3:, 3:] = 1 / 3, 1 / 2
    assert threshold_rounding(blocks) == [[0, 1, 2], [3, 4]]


def test_sdp_scs_and_exp_preprocessing():
    S, blocks = planted(3)
    assert set(solver("sdp", solver="SCS").solve(problem(S, 3)).groups) == blocks
    assert set(solver("sdp", use_exp=True).solve(problem(S, 3)).groups) == blocks
    assert len(solver("sdp", use_exp=True).solve(problem(S * 1000, 3)).groups) == 3  # exp(1000) would overflow


def test_sdp_solver_failure_is_an_error(monkeypatch):
    import cvxpy as cp

    def fail(self, *args, **kwargs):
        raise cp.error.SolverError("numerical trouble")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    with pytest.raises(BenchError, match="SDP solver CLARABEL failed.*numerical trouble"):
        solver("sdp").solve(problem(matrix(5, 0), 2))
    monkeypatch.setattr(cp.Problem, "solve", lambda self, *args, **kwargs: None)  # no status: not optimal
    with pytest.raises(BenchError, match="ended with status 'None'.*need 'optimal'"):
        solver("sdp").solve(problem(matrix(5, 0), 2))


@pytest.mark.parametrize("name", CLUSTERING)
def test_needs_a_matrix(name):
    tasks = ["a", "b", "c"]
    score = CallableScore(lambda g: float(len(g)), tasks)
    with pytest.raises(UsageError, match=f"solver '{name}.*needs a pairwise affinity matrix"):
        solver(name).solve(PartitionProblem(tasks, 2, score))


@pytest.mark.parametrize("name", CLUSTERING)
def test_size_bounds_are_refused(name):
    with pytest.raises(UsageError, match="does not support group size bounds.*dp, exhaustive, local_search"):
        solver(name).solve(problem(matrix(6, 0), 2, min_size=2))
    with pytest.raises(UsageError, match="does not support group size bounds"):
        solver(name).solve(problem(matrix(6, 0), 2, max_size=4))


def test_random_works_with_any_score_and_honours_constraints():
    tasks = list("abcdef")
    table = {g: 1.0 for g in [("a", "b"), ("c", "d"), ("e", "f"), ("a", "c"), ("b", "d")]}
    sol = solver("random", max_draws=1000).solve(PartitionProblem(tasks, 3, TableScore(table, tasks)), seed=0)
    assert len(sol.groups) == 3 and all(g in table for g in sol.groups)
    bounded = solver("random").solve(problem(matrix(8, 0), 3, min_size=2, max_size=3), seed=4)
    assert sorted(len(g) for g in bounded.groups) == [2, 3, 3]


@pytest.mark.parametrize("name, params", [("sdp", {"solver": "GUROBI"}), ("sdp", {"tau": 0.0}),
                                          ("hierarchical", {"linkage": "ward"}),
                                          ("gat_gmm", {"covariance_type": "full"}), ("kmeans", {"n_init": 0})])
def test_bad_parameters(name, params):
    with pytest.raises(UsageError, match=f"solver '{name}"):
        solver(name, **params).solve(problem(matrix(5, 0), 2))


def test_affinity_is_symmetric_with_constant_diagonal():
    S = np.arange(9.0).reshape(3, 3)
    A = affinity(problem(S, 2), "x")
    assert np.array_equal(A, A.T) and np.all(np.diag(A) == 6.0)  # largest off-diagonal entry of (S + S') / 2


def test_exactly_k_splits_and_merges():
    D = np.zeros((5, 5))
    labels, repairs = exactly_k([0, 0, 0, 0, 0], 3, D)  # identical points still split into non-empty groups
    assert sorted(np.bincount(labels)) == [1, 1, 3] and repairs == 2
    x = np.array([0.0, 0.1, 5.0, 5.1, 9.0])
    labels, repairs = exactly_k([0, 1, 2, 3, 4], 3, np.abs(x[:, None] - x[None, :]))
    assert to_groups(labels, "abcde") == [["a", "b"], ["c", "d"], ["e"]] and repairs == 2


def test_gat_node_features_are_the_rows_of_the_matrix_as_they_are(monkeypatch):
    """SCA's eq. 17 normalises each row by its own largest distance; the GAT's node features are those rows (not the
    symmetrised matrix), with the diagonal set to the largest off-diagonal entry."""
    gat = importlib.import_module("bench.solvers.gat_gmm")
    seen = []

    def embed(A, epochs, lr, seed):
        seen.append(A.copy())
        return np.eye(len(A), 2 * len(A))

    monkeypatch.setattr(gat, "embed", embed)
    S = np.array([[1.0, 0.9, 0.1, 0.0], [0.2, 1.0, 0.3, 0.1], [0.0, 0.4, 1.0, 0.8], [0.1, 0.0, 0.5, 1.0]])
    gat.GATGMM(restarts=1).solve(PartitionProblem(("a", "b", "c", "d"), 2, PairwiseScore(S, ("a", "b", "c", "d"))), 0)
    want = S.copy()
    np.fill_diagonal(want, 0.9)
    np.testing.assert_array_equal(seen[0], want)


def test_exactly_k_can_split_without_cutting_off_the_farthest_member():
    """One cluster of 5 points on a line with an outlier: the plain split cuts the outlier off; with
    ``avoid_singletons`` the outlier's half takes its nearest other member."""
    x = np.array([0.0, 0.1, 0.2, 0.3, 5.0])
    D = np.abs(x[:, None] - x[None, :])
    plain, _ = exactly_k(np.zeros(5, int), 2, D)
    assert sorted(np.bincount(plain)) == [1, 4]
    kept, repairs = exactly_k(np.zeros(5, int), 2, D, avoid_singletons=True)
    assert sorted(np.bincount(kept)) == [2, 3] and repairs == 1
    assert kept[4] == kept[3] != kept[0]  # the outlier with its nearest member
    three, _ = exactly_k(np.zeros(3, int), 2, D[:3, :3], avoid_singletons=True)  # 3 points: 2 + 1 is the only way
    assert sorted(np.bincount(three)) == [1, 2]


def test_gat_gmm_leaves_no_one_task_group_when_k_is_at_most_half_the_tasks():
    """The paper's refinement (no singleton groups) must survive the repair to exactly k groups: a tight block of 6
    tasks and one outlier task, which the GMM tends to put alone and the plain repair cut off again."""
    gen = np.random.default_rng(5)
    S = np.full((7, 7), 0.9) + 0.02 * gen.standard_normal((7, 7))
    S[6, :], S[:, 6] = 0.1, 0.1
    np.fill_diagonal(S, 1.0)
    for k in (2, 3):
        for seed in range(3):
            sol = solver("gat_gmm").solve(problem(S, k), seed=seed)
            assert min(len(g) for g in sol.groups) >= 2 and sol.info["singletons"] == 0, (k, seed, sol.groups)


def test_sdp_accepts_an_inaccurate_solve_only_near_the_feasible_set(monkeypatch):
    """Unreachable tolerances make CLARABEL end ``optimal_inaccurate`` (its reduced tolerances): accepted and named
    when the point violates the constraints by at most INACCURATE_RESIDUAL, an error otherwise."""
    gen = np.random.default_rng(0)
    A = gen.standard_normal((20, 20))
    A = (A + A.T) / 2
    unreachable = {"tol_gap_abs": 1e-14, "tol_gap_rel": 1e-14, "tol_feas": 1e-14}
    X, solved = solve_sdp(A.max() - A, 3, "CLARABEL", unreachable)
    assert solved["sdp_status"] == "optimal_inaccurate"
    assert solved["sdp_residual"] == pytest.approx(sdp_residual(X, 3)) and solved["sdp_residual"] <= INACCURATE_RESIDUAL
    monkeypatch.setattr("bench.solvers.sdp.INACCURATE_RESIDUAL", -1.0)
    with pytest.raises(BenchError, match="optimal_inaccurate.*violates the constraints"):
        solve_sdp(A.max() - A, 3, "CLARABEL", unreachable)
    assert sdp_residual(np.eye(3) * 0.5, 3) == pytest.approx(1.5)  # tr X = 1.5 against k = 3
