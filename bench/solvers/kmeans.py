"""k-means on the tasks' affinity profiles.

Ayman et al. (affinity-predictor-local-search, Section 5 and Appendix G.2) run k-means on a vector per task (the
task-specific weights of an all-task MTL model). A grouping problem here carries only the pairwise matrix, so each
task is represented by its row of the symmetrised affinity ``A`` (:func:`bench.solvers._clustering.affinity`):
its affinity with every task. sklearn ``KMeans(n_clusters=k, n_init=10)`` with a ``random_state`` drawn from the
seed. k-means returns fewer than ``k`` clusters when fewer than ``k`` rows are distinct; the labelling is then
repaired to exactly ``k`` (:func:`bench.solvers._clustering.exactly_k`, splitting the largest cluster; counted in
``info['repairs']``).
"""

from __future__ import annotations

import numpy as np

from bench.errors import UsageError
from bench.solvers._clustering import affinity, kmeans_labels, to_groups, trivial
from bench.solvers.base import PartitionProblem, Raw, Solver


class KMeansSolver(Solver):
    name = "kmeans"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"n_init": 10}
    test_parameters = {"n_init": 10}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        if self.n_init < 1:
            raise UsageError(f"solver '{self.id}': n_init must be at least 1, got {self.n_init}")
        A = affinity(problem, self.id)
        groups = trivial(problem)
        if groups is not None:
            return Raw(groups, "heuristic")
        labels, repairs = kmeans_labels(A, problem.k, self.n_init, np.random.default_rng(seed))
        return Raw(to_groups(labels, problem.tasks), "heuristic", {"repairs": repairs})

