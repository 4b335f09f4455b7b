"""SCA's task grouping (Thakur et al., sca-sample-wise, Section 4.2.2 and supplement "GAT architecture" / "GMM for
task groupings"): a graph-attention autoencoder embeds the tasks, a Gaussian mixture clusters the embeddings.

Procedure, run ``restarts`` times (the paper: 10), keeping the run with the largest mean silhouette score
(paper eq. 5-6) of its final labels on its embedding ``Z``:

1. Graph: one node per task, the complete graph with self loops; node features ``F`` = rows of the affinity
   (``f_i = A[i, :]``, paper: "each node is represented by the i-th row of the affinity matrix"), with ``A`` the
   problem's matrix as it is (not symmetrised: SCA's eq. 17 normalises each row by its own largest distance, and
   the rows keep that), its diagonal set to the largest off-diagonal entry as
   :func:`bench.solvers._clustering.affinity` does (a diagonal may be a sentinel; SCA's is 1, its largest value),
   min-max scaled to ``[0, 1]`` (the paper's SCA affinities lie in ``[0, 1]`` by its eq. 17; the scaling makes
   ``lr`` independent of the matrix's units).
2. Autoencoder: ``Z = ELU(GATConv(n -> n, 2 heads, concat)(F))`` (``n x 2n``), ``F' = GATConv(2n -> n, 1 head)(Z)``;
   MSE(F', F), Adam (``lr`` 1e-3), ``epochs`` 100 full-batch steps. The paper's table gives the second layer
   "T x 2 units"; reconstructing ``F`` (``T`` columns) needs ``T`` outputs, so it has ``n`` (its *input* is
   ``2n``). ``sigma`` of eq. 19 is not named in the paper; ELU is the original GAT's choice.
   The paper's graph has "weighted edges" with weight ``w_ij`` = affinity, but its attention (eq. 20) uses the node
   features only: on a complete graph the softmax over ``j`` then barely depends on ``i`` and all embeddings almost
   coincide (planted 3 x 3 blocks were recovered in 7-8 of 10 runs, against 10 of 10 with edge weights), so the
   edge weight ``F[i, j]`` enters the attention logits (PyG ``edge_dim=1``).
3. GMM (sklearn ``GaussianMixture``, ``k`` components) on ``Z``; hard labels by the largest responsibility (eq. 4).
   The paper lets "a node be assigned to more than one cluster" without a threshold; the ``partition`` problem
   gives every task one group, so only the most likely cluster is used.
   ``n`` points in ``2n`` dimensions make a full covariance singular, so the covariance is ``spherical``
   (default) or ``diag``, regularised by sklearn's ``reg_covar``.
4. Singleton refinement (paper): while a cluster has a single task and there are other clusters, the first such
   task joins the cluster whose mean embedding is nearest.
5. The GMM may leave components empty and the refinement removes clusters, so a run can end with fewer than ``k``
   groups, which the paper allows ("b mixtures" is a budget). A partition needs exactly ``k``: the largest group
   is split at its two farthest-apart embeddings until there are ``k``
   (:func:`bench.solvers._clustering.exactly_k`), a seed left alone taking its nearest member of the other half
   (the farthest embedding is often the task the refinement has just merged: without this the split cut it off
   again, and Parkinson's, Chemical's and Landmine's SCA matrices ended with a one-task group at most ``k``).
   A split of two or three tasks can still leave one alone, and for ``k > n/2`` a one-task group is unavoidable.
6. The best of ``restarts`` runs: the fewest one-task groups when ``k <= n/2`` (the paper's definition of a
   grouping has none), then the largest mean silhouette of the embedding.

``k = 1`` and ``k = n`` have a single partition, returned without training, so the silhouette (defined for
``2..n-1`` clusters) always is. Randomness: the torch initialisation (inside ``torch.random.fork_rng``, leaving
the global state alone) and the GMM's ``random_state`` are drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import warnings

import numpy as np

from bench.errors import UsageError
from bench.solvers._clustering import affinity, euclidean, exactly_k, one_thread, random_state, to_groups, trivial
from bench.solvers.base import PartitionProblem, Raw, Solver

COVARIANCE_TYPES = ("spherical", "diag")


def embed(A: np.ndarray, epochs: int, lr: float, seed: int) -> np.ndarray:
    """Train the GAT autoencoder on ``A``'s rows and return ``Z`` (``n x 2n``), steps 1-2 of the module doc."""
    import torch  # imported when used: discovery imports every solver module
    from torch_geometric.nn import GATConv

    n = len(A)
    span = A.max() - A.min()
    F = (A - A.min()) / span if span > 0 else np.zeros_like(A)
    dst, src = np.divmod(np.arange(n * n), n)  # every ordered pair (src -> dst), self loops included
    x = torch.tensor(F, dtype=torch.float32)
    edge_index = torch.tensor(np.stack([src, dst]), dtype=torch.long)
    edge_attr = torch.tensor(F[dst, src], dtype=torch.float32)[:, None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = GATConv(n, n, heads=2, concat=True, edge_dim=1, add_self_loops=False)
        dec = GATConv(2 * n, n, heads=1, edge_dim=1, add_self_loops=False)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)

    def encode():
        return torch.nn.functional.elu(enc(x, edge_index, edge_attr))

    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(dec(encode(), edge_index, edge_attr), x)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return encode().double().numpy()


def refine_singletons(labels: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Step 4: move single-task clusters into the cluster with the nearest mean embedding, one at a time."""
    labels = labels.copy()
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        if len(ids) < 2 or counts.min() > 1:
            return labels
        i = int(np.flatnonzero(labels == ids[np.argmax(counts == 1)])[0])
        others = [c for c in ids if c != labels[i]]
        labels[i] = min(others, key=lambda c: np.linalg.norm(Z[labels == c].mean(axis=0) - Z[i]))


class GATGMM(Solver):
    name = "gat_gmm"
    version = "3"
    problems = ("partition",)
    exact = False
    defaults = {"epochs": 100, "lr": 1e-3, "restarts": 10, "covariance_type": "spherical"}
    test_parameters = {"epochs": 20, "restarts": 2}

    def _check(self) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise UsageError(f"solver '{self.id}': covariance_type must be one of {', '.join(COVARIANCE_TYPES)} "
                             f"(a full covariance is singular with n points in 2n dimensions), "
                             f"got '{self.covariance_type}'")
        if self.epochs < 0 or self.restarts < 1 or not self.lr > 0:
            raise UsageError(f"solver '{self.id}' needs epochs >= 0, restarts >= 1 and lr > 0, got epochs "
                             f"{self.epochs}, restarts {self.restarts}, lr {self.lr}")

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        self._check()
        import torch  # noqa: F401  (loaded before one_thread(), which then limits its thread pool too)
        from sklearn.metrics import silhouette_score
        from sklearn.mixture import GaussianMixture

        A = affinity(problem, self.id, symmetric=False)
        groups = trivial(problem)
        if groups is not None:
            return Raw(groups, "heuristic")
        gen = np.random.default_rng(seed)
        best = None
        with one_thread():
            for run in range(self.restarts):
                Z = embed(A, self.epochs, self.lr, random_state(gen))
                gmm = GaussianMixture(problem.k, covariance_type=self.covariance_type,
                                      random_state=random_state(gen))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence warnings on tiny, tied data: the repair follows
                    labels = gmm.fit(Z).predict(Z)
                labels, repairs = exactly_k(refine_singletons(labels, Z), problem.k, euclidean(Z),
                                            avoid_singletons=True)
                score = float(silhouette_score(Z, labels))
                alone = int((np.bincount(labels) == 1).sum()) if 2 * problem.k <= problem.n else 0
                if best is None or (alone, -score) < (best[4], -best[0]):
                    best = (score, labels, run, repairs, alone)
        score, labels, run, repairs, alone = best
        return Raw(to_groups(labels, problem.tasks), "heuristic",
                   {"silhouette": score, "best_run": run, "repairs": repairs, "singletons": alone})
