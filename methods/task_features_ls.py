"""Task features + neural-network predictor + randomized local search with quick reject
(affinity-predictor-local-search, Section 5.1, Algorithm 1).

Signal ``task_features`` (Appendix B: single-task features from the STL trainings and their learning curves,
pairwise MTL gains from every pair trained, head-weight dot products of one all-task model). The local search
partitions the tasks into exactly k groups; a mutated partition is first scored by the group-feature MLP
(:class:`bench.predictors.nn.GroupFeaturePredictor`, refit every ``retrain_every`` iterations on every group
trained so far) and only trained when the prediction beats the current partition, or with the decaying
probability ``pi`` (quick reject). Ground truth is real training: a group's value is the sum over its members of
the measured validation MTL gain against the single-task models (:mod:`bench.gains`; the paper's total loss,
made scale-free across tasks), a singleton's value 0. Every group the search trains is a counted training of the
solve phase. The search itself (moves, acceptance, schedule of ``pi``) is
:func:`bench.solvers.local_search.run_local_search`; its docstring lists the choices made.
"""

from __future__ import annotations

from bench.compose import Composed, Fitted
from bench.gains import observe
from bench.method import Context
from bench.predictors.nn import GroupFeaturePredictor
from bench.solvers.local_search import GroupOracle, run_local_search
from bench.types import Group, Grouping


class TaskFeaturesLs(Composed):
    name = "task_features_ls"
    version = "1"
    defaults = {**Composed.defaults, "signal": "task_features", "problem": "partition", "solver": "local_search",
                "iterations": 100, "initial_partitions": 10, "retrain_every": 5, "pi0": 0.1, "quick_reject": True}
    test_parameters = {"iterations": 6, "initial_partitions": 2}

    def solve(self, model: Fitted, n_groups: int, ctx: Context) -> Grouping:
        tasks = ctx.problem.tasks
        stl = {g[0]: r for g, r in ctx.train_many((t,) for t in ctx.tasks).items()}

        def value(group: Group) -> float:
            if len(group) == 1:
                return 0.0
            return float(sum(observe(ctx.train(group), stl, tasks).gains.values()))

        predictor = GroupFeaturePredictor(model.affinity, ctx.tasks, seed=ctx.seed) if self.quick_reject else None
        best, _ = run_local_search(ctx.tasks, n_groups, GroupOracle(value), predictor, ctx.rng(self.name, n_groups),
                                   self.iterations, initial_partitions=self.initial_partitions,
                                   retrain_every=self.retrain_every, pi0=self.pi0)
        return Grouping.of(best, "partition")
