"""Agglomerative (hierarchical) clustering of the tasks on an affinity distance.

Ayman et al. (affinity-predictor-local-search, Section 5 and Appendix G.2) compare against hierarchical clustering
with pairwise MTL gains / affinities as the distance between tasks. Here: the symmetrised affinity ``A``
(:func:`bench.solvers._clustering.affinity`), the distance ``D = max(A) - A`` with a zero diagonal, and sklearn's
``AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage=...)``, which always returns exactly ``k``
non-empty clusters. Deterministic (the seed is not used). Ward linkage needs Euclidean inputs, so it is not offered.
"""

from __future__ import annotations

from bench.errors import UsageError
from bench.solvers._clustering import affinity, distances, to_groups, trivial
from bench.solvers.base import PartitionProblem, Raw, Solver

LINKAGES = ("average", "complete", "single")


class Hierarchical(Solver):
    name = "hierarchical"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"linkage": "average"}
    test_parameters = {"linkage": "average"}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        if self.linkage not in LINKAGES:
            raise UsageError(f"solver '{self.id}': unknown linkage '{self.linkage}'; choose one of "
                             f"{', '.join(LINKAGES)}")
        A = affinity(problem, self.id)
        groups = trivial(problem)
        if groups is None:
            from sklearn.cluster import AgglomerativeClustering  # imported when used: discovery imports all solvers

            labels = AgglomerativeClustering(n_clusters=problem.k, metric="precomputed",
                                             linkage=self.linkage).fit_predict(distances(A))
            groups = to_groups(labels, problem.tasks)
        return Raw(groups, "heuristic")
