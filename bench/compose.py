"""Methods as compositions: a signal, a gain predictor and a grouping solver, named by parameters.

Every published method and grouping baseline is one file that subclasses :class:`Composed` and sets its
defaults, e.g. TAG = signal ``tag`` + network selection over the affinity-scored groups (solver ``dp``), ETAP =
signal ``etap`` + predictor ``etap`` + network selection, transfer-gain-mip = signal ``transfer_gain`` + the MIQP.
Ablations are parameter changes, not code: ``tag[problem=miqp,solver=miqp_gurobi]`` is TAG-MP.

The phases the runner times separately:

``collect``
    the signal (one MTL training observed by a callback, or a look at the data), through the context so that
    the trainings a signal asks for (task features: STL and pairs) are cached and counted;
``fit``
    the predictor's ground truth (the single-task models and the predictor's training groups, each a counted
    training), then the predictor's fit (MTG-Net asks for more groups as it goes, through an oracle);
``solve``
    the grouping problem for one split count, built from the predictor or directly from the affinity, and the
    solver.

Grouping problems (parameter ``problem``):

``select``
    network selection among the candidate groups: each member's utility is its predicted gain (predictor) or its
    TAG group score ``mean_{j != i} A[i, j]`` (affinity only). Singletons: a predictor gives them gain 0 (the
    task's own STL model); with an affinity only, ``singletons`` decides: ``forbid`` (TAG's ``-1e6`` sentinel; the
    default), ``diagonal`` or ``zero``. ``utility=improvement`` multiplies a predicted gain by the task's
    single-task validation value ``|m_S|`` (:attr:`Fitted.scale`): the fall of the task's metric in its units, so
    the selection minimises the sum of the tasks' metrics (HOA's objective) rather than maximising the sum of
    relative gains (``gain``, the default). The candidates (``pool``): ``all``, every group of up to ``max_size`` tasks
    (at most :data:`MAX_CANDIDATES`, else the method is unsupported on that problem); or ``beam``, the groups a
    beam search grows (:func:`beam_pool`, at most ``pool_size``), the tabular-divergence paper's candidates on its
    29- to 139-task data sets (Section 4.3.3); every group when they fit. On a problem that can evaluate some groups
    only (:meth:`bench.dataset.Problem.listed_groups`: MIMIC-III's table lists 3,185 of 2^27 - 1), ``all`` is every
    listed group of those sizes and ``beam`` keeps the listed groups it grows; a predictor's training groups are
    drawn from the listed ones too. Over many tasks the exact solver is then ``select_highs`` (``dp`` enumerates
    subsets of at most 16 tasks).
``partition``
    exactly k disjoint groups; the group score is :class:`~bench.solvers.base.PairwiseScore` of the affinity or
    of the predictor's pairwise matrix (clustering solvers need a matrix), or the sum of the predictor's member
    gains when ``score=predicted`` (exact solvers only need group values). With an affinity only, a singleton's
    score follows ``singletons`` as in network selection (``forbid``: TAG's ``-1e6``; the clustering solvers
    replace the diagonal themselves).
``miqp`` / ``miqp-partition``
    transfer-gain-mip Formulation 8 with ``S`` the affinity (or the predictor's pairwise matrix) and ``m = k``
    labelled groups; overlapping groups, or the partition variant. ``S`` is used as it is, its diagonal included
    (Formulation 8's objective reads it: the transfer gain of a task with itself, TAG's self-affinity for TAG-MP).

``max_size`` bounds the groups of every problem: network selection's candidates, a partition's groups (solvers
that cannot bound sizes, the clustering ones, refuse it) and Formulation 8's ``m2`` (Section 5.3: ``X' 1 <= m2``).

The groups so chosen are trained and scored by the runner (each task served by its best chosen group on
validation).
"""

from __future__ import annotations

import itertools
from math import comb
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import registry
from bench.errors import Unsupported, UsageError
from bench.gains import Observation, gain_unit, observe
from bench.method import Context, Method
from bench.predictors.base import Evidence, Predictor, listed_pool
from bench.signals.base import Affinity
from bench.solvers.base import (
    CallableScore,
    Candidate,
    MIQPProblem,
    PairwiseScore,
    PartitionProblem,
    SelectProblem,
)
from bench.types import Group, Grouping, make_group

PROBLEMS = ("select", "partition", "miqp", "miqp-partition")
SINGLETONS = ("forbid", "diagonal", "zero")
FORBIDDEN_SINGLETON = -1e6
"""A singleton's score under ``singletons=forbid`` in a partition (TAG's sentinel: a partition with a singleton
loses to every one without, and stays possible where ``k > n/2`` needs one)."""
MAX_CANDIDATES = 1 << 16
"""Network selection enumerates candidate groups; above this many, ``max_size`` must bound them."""
POOLS = ("all", "beam")
UTILITIES = ("gain", "improvement")
SERVES = ("val", "predicted")


def served_by_utility(groups: Sequence[Group], candidates: Sequence[Candidate]) -> dict[str, Group]:
    """Per task, the chosen group where the candidates give it the largest utility (MTG-Net's evaluation: "the
    chosen group with the highest predicted gain"); ties go to the first in canonical order, and for a group listed
    twice among the candidates the last counts, as in the selection problem's objective."""
    utility = {c.group: c.utility for c in candidates}
    served: dict[str, Group] = {}
    for group in sorted({make_group(g) for g in groups}, key=lambda g: (len(g), g)):
        for t in group:
            if t not in served or utility[group][t] > utility[served[t]][t]:
                served[t] = group
    return served


def beam_pool(matrix: np.ndarray, lo: int, hi: int, size: int) -> list[tuple[int, ...]]:
    """Candidate groups (tuples of task indices) of ``lo .. hi`` tasks grown by a beam search over a pairwise
    ``matrix`` (``[i, j]``: effect of ``j`` on ``i``), at most ``size`` of them.

    When every group of ``lo .. hi`` tasks fits in ``size``, all of them, in size then lexicographic order. Otherwise
    (tabular-divergence-features Section 4.3.3 / Appendix A.6: "the top-scoring candidate groups are expanded by
    adding new tasks, scored using predicted gains, and pruned to retain only the best candidates"):

    * a group's score is its members' total TAG/HOA aggregation ``sum_{i in G} mean_{j in G, j != i} M[i, j]``
      (Eq. 15 summed over the members), ``= sum_{i != j in G} M[i, j] / (|G| - 1)``;
    * the beam of size 2 is the ``width`` best pairs; the beam of size ``s + 1`` the ``width`` best distinct groups
      made by adding one task to a group of the beam of size ``s``;
    * the pool is every singleton (when ``lo`` is 1) and the beams of sizes ``max(lo, 2) .. hi``, with ``width`` =
      what is left of ``size`` after the singletons, shared equally by those sizes (at least 1).

    Choices: the beam keeps ``width`` groups at every size, so large groups (which k groups need to cover many
    tasks) are always among the candidates; ties go to the earlier group in the order of the expansions (beam
    order, then task index), so the pool is deterministic.
    """
    n = len(matrix)
    if sum(comb(n, s) for s in range(lo, hi + 1)) <= size:
        return [c for s in range(lo, hi + 1) for c in itertools.combinations(range(n), s)]
    out: list[tuple[int, ...]] = [(i,) for i in range(n)] if lo <= 1 else []
    first = max(lo, 2)
    if first > hi:
        return out[:size]
    width = max(1, (size - len(out)) // (hi - first + 1))
    sym = matrix + matrix.T
    np.fill_diagonal(sym, 0.0)
    a, b = np.triu_indices(n, 1)
    sums = sym[a, b]  # sum over the ordered pairs of the group
    keep = np.argsort(-sums, kind="stable")[:width]
    beam = np.zeros((len(keep), n), dtype=bool)
    beam[np.arange(len(keep)), a[keep]] = beam[np.arange(len(keep)), b[keep]] = True
    sums = sums[keep]
    if first == 2:
        out += [tuple(np.flatnonzero(row)) for row in beam]
    for s in range(3, hi + 1):
        grown = sums[:, None] + beam.astype(np.float64) @ sym  # the sum of the group plus task t
        grown[beam] = -np.inf
        flat = grown.ravel()
        rows, new_sums, seen = [], [], set()
        for idx in np.argsort(-flat, kind="stable"):
            if flat[idx] == -np.inf or len(rows) == width:
                break
            g, t = divmod(int(idx), n)
            row = beam[g].copy()
            row[t] = True
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
                new_sums.append(flat[idx])
        beam, sums = np.array(rows), np.array(new_sums)
        if s >= first:
            out += [tuple(np.flatnonzero(row)) for row in beam]
    return [tuple(int(i) for i in g) for g in out]



@dataclass
class Fitted:
    """What ``fit`` hands to ``solve``: the affinity, the fitted predictor, and the observations behind it."""

    affinity: Affinity | None
    predictor: Predictor | None
    observations: list[Observation] = field(default_factory=list)
    scale: dict[str, float] = field(default_factory=dict)
    """Per task, :func:`bench.gains.gain_unit` of its single-task validation value."""

    def matrix(self) -> np.ndarray:
        """The pairwise matrix a clustering solver or the MIQP works on."""
        if self.predictor is not None:
            return self.predictor.pairwise()
        assert self.affinity is not None
        return np.asarray(self.affinity.matrix)


class Composed(Method):
    """A method composed of a signal, a predictor and a solver (see the module docstring)."""

    defaults: dict[str, Any] = {
        "signal": None,
        "predictor": None,
        "n_train": 10,
        "solver": "dp",
        "problem": "select",
        "singletons": "forbid",
        "score": "pairwise",
        "max_size": None,
        "pool": "all",
        "pool_size": MAX_CANDIDATES,
        "utility": "gain",
        "serve": "val",
    }
    test_parameters: dict[str, Any] = {}

    @property
    def semantics(self) -> str:  # type: ignore[override]
        return "partition" if self.problem in ("partition", "miqp-partition") else "select"

    def identity(self) -> dict[str, Any]:
        """The method's parameters plus the versions of the parts they name (they change the results)."""
        parts = {}
        for kind, text in (("signal", self.signal), ("predictor", self.predictor), ("solver", self.solver)):
            if text is not None:
                parts[kind] = registry.create(kind, text).identity()
        return {**super().identity(), "parts": parts}

    # -------------------------------------------------------------------------------------------- the phases

    def check(self) -> None:
        if self.problem not in PROBLEMS:
            raise UsageError(f"{self.id}: problem must be one of {', '.join(PROBLEMS)}, got {self.problem!r}")
        if self.singletons not in SINGLETONS:
            raise UsageError(f"{self.id}: singletons must be one of {', '.join(SINGLETONS)}, got {self.singletons!r}")
        if self.utility not in UTILITIES:
            raise UsageError(f"{self.id}: utility must be one of {', '.join(UTILITIES)}, got {self.utility!r}")
        if self.utility == "improvement" and self.predictor is None:
            raise UsageError(f"{self.id}: utility=improvement scales predicted gains and needs a predictor")
        if self.serve not in SERVES:
            raise UsageError(f"{self.id}: serve must be one of {', '.join(SERVES)}, got {self.serve!r}")
        if self.serve == "predicted" and self.problem != "select":
            raise UsageError(f"{self.id}: serve=predicted needs problem=select (a partition serves each task by "
                             f"its only group)")
        if self.pool not in POOLS:
            raise UsageError(f"{self.id}: pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.max_size is not None and (isinstance(self.max_size, bool) or not isinstance(self.max_size, int)
                                          or self.max_size < 1):
            raise UsageError(f"{self.id}: max_size must be a positive number of tasks, got {self.max_size!r}")
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise UsageError(f"{self.id}: pool_size must be a positive number of groups, got {self.pool_size!r}")
        if self.score not in ("pairwise", "predicted"):
            raise UsageError(f"{self.id}: score must be pairwise or predicted, got {self.score!r}")
        if self.signal is None and self.predictor is None:
            raise UsageError(f"{self.id}: a composition needs a signal, a predictor or both")
        if self.signal is not None:
            registry.create("signal", self.signal)
        predictor = self.make_predictor()
        if predictor is not None and "affinity" in predictor.requires and self.signal is None:
            raise UsageError(f"{self.id}: predictor {predictor.id} needs a signal (e.g. signal={predictor.signal})")
        solver = registry.create("solver", self.solver)
        kind = "miqp" if self.problem.startswith("miqp") else self.problem
        if kind not in solver.problems:
            raise UsageError(f"{self.id}: solver {solver.id} solves {'/'.join(solver.problems)}, not {kind}")

    def make_predictor(self) -> Predictor | None:
        return registry.create("predictor", self.predictor) if self.predictor is not None else None

    def collect(self, ctx: Context) -> Affinity | None:
        self.check()
        if self.problem == "select":  # too many candidates: say so before any training
            self._sizes(len(ctx.tasks), self.predictor is not None, ctx.problem.listed_groups())
        if self.signal is None:
            return None
        return ctx.signal(ctx.create("signal", self.signal))

    def fit(self, affinity: Affinity | None, ctx: Context) -> Fitted:
        if self.predictor is None:
            return Fitted(affinity, None)
        predictor = ctx.create("predictor", self.predictor)
        tasks = ctx.problem.tasks
        stl = {g[0]: r for g, r in ctx.train_many((t,) for t in ctx.tasks).items()}

        def oracle(group: Group) -> Observation:
            return observe(ctx.train(group), stl, tasks)

        listed = ctx.problem.listed_groups()
        # a plugin written without the ``listed`` parameter still runs (its groups must then be measurable)
        extra = {"listed": listed} if listed is not None else {}
        groups = predictor.training_groups(ctx.tasks, self.n_train, ctx.rng(self.name, "training_groups"), **extra)
        trained = ctx.train_many(groups)
        observations = [observe(trained[make_group(g)], stl, tasks) for g in groups]
        evidence = Evidence(ctx.tasks, affinity, oracle, listed)
        predictor.fit(observations, evidence, ctx.seed)
        return Fitted(affinity, predictor, observations, {t.name: gain_unit(t, stl[t.name].val[t.name]) for t in tasks})

    def solve(self, model: Fitted, n_groups: int, ctx: Context) -> Grouping | Sequence[Grouping]:
        solver = ctx.create("solver", self.solver)
        tasks = ctx.tasks
        if self.problem == "select":
            candidates = self.candidates(model, tasks, ctx.problem.listed_groups())
            problem: Any = SelectProblem(tasks, tuple(candidates), n_groups)
        elif self.problem == "partition":
            if self.score == "predicted":
                if model.predictor is None:
                    raise UsageError(f"{self.id}: score=predicted needs a predictor")
                predictor = model.predictor
                score: Any = CallableScore(lambda g: sum(predictor.predict(g).values()), tasks)
            else:
                score = PairwiseScore(self._affinity_matrix(model), tasks)
            problem = PartitionProblem(tasks, n_groups, score, max_size=self._max_size(len(tasks)))
        else:
            problem = MIQPProblem(tasks, model.matrix(), n_groups, max_size=self._max_size(len(tasks)),
                                  partition=self.problem == "miqp-partition")
        solution = solver.solve(problem, ctx.seed)
        served = served_by_utility(solution.groups, problem.candidates) if self.serve == "predicted" else None
        return Grouping.of(solution.groups, self.semantics, served, (solution.solver, solution.status))

    @property
    def serve_by(self) -> str:  # type: ignore[override]
        return "predicted" if self.serve == "predicted" else "val"

    # ------------------------------------------------------------------------------------------- candidates

    def _affinity_matrix(self, model: Fitted) -> np.ndarray:
        """The pairwise matrix network selection and a partition score groups with; with an affinity only, its
        diagonal (a singleton's score; groups of two or more never read it) follows ``singletons``: ``forbid`` puts
        TAG's sentinel :data:`FORBIDDEN_SINGLETON` there (network selection then offers no singleton at all),
        ``zero`` 0, ``diagonal`` keeps the signal's own (TAG's self-affinity, CS's 1: the largest entries, with
        which an exact partition solver splits off singletons)."""
        matrix = np.array(model.matrix(), dtype=np.float64)
        if model.predictor is None and self.singletons != "diagonal":
            np.fill_diagonal(matrix, FORBIDDEN_SINGLETON if self.singletons == "forbid" else 0.0)
        return matrix

    def _max_size(self, n: int) -> int | None:
        return None if self.max_size is None else min(int(self.max_size), n)

    def _sizes(self, n: int, predicted: bool, listed: Sequence[Group] | None = None) -> tuple[int, int]:
        """The candidates' sizes ``lo .. hi`` for ``n`` tasks; :class:`Unsupported` above :data:`MAX_CANDIDATES` in
        the ``all`` pool."""
        hi = self._max_size(n) or n
        lo = 1 if predicted or self.singletons != "forbid" else 2
        if listed is not None:
            count = sum(1 for g in listed if lo <= len(g) <= hi)
            if count > MAX_CANDIDATES and self.pool == "all":
                raise Unsupported(f"{self.id}: network selection over the {count} listed groups of {lo} to {hi} "
                                  f"tasks is more than {MAX_CANDIDATES} candidates; bound them with max_size")
            return lo, hi
        count = sum(comb(n, s) for s in range(lo, hi + 1))
        if count > MAX_CANDIDATES and self.pool == "all":
            fits = max((m for m in range(lo, hi + 1) if sum(comb(n, s) for s in range(lo, m + 1)) <= MAX_CANDIDATES),
                       default=None)
            bound = f"max_size={fits} or less" if fits is not None else "a smaller max_size"
            raise Unsupported(f"{self.id}: network selection over {count} candidate groups of {n} tasks is more "
                              f"than {MAX_CANDIDATES} (every group of {lo} to {hi} tasks is a candidate); bound "
                              f"them with {bound} (k groups of at most that size must still cover every task)")
        return lo, hi

    def candidates(self, model: Fitted, tasks: Sequence[str], listed: Sequence[Group] | None = None) -> list[Candidate]:
        """The scored candidates; ``listed``: the only groups the problem can evaluate (a partial published table),
        to which every pool is restricted."""
        lo, hi = self._sizes(len(tasks), model.predictor is not None, listed)
        known = None if listed is None else {make_group(g) for g in listed}
        if self.pool == "beam":
            groups = [make_group(tasks[i] for i in g)
                      for g in beam_pool(np.asarray(model.matrix(), dtype=np.float64), lo, hi, self.pool_size)]
            groups = groups if known is None else [g for g in groups if g in known]
        elif listed is not None:
            groups = listed_pool(listed, lo, hi)
        else:
            groups = [make_group(c) for s in range(lo, hi + 1) for c in itertools.combinations(tasks, s)]
        if model.predictor is not None:
            scale = model.scale if self.utility == "improvement" else {}
            return [Candidate(g, {t: u * scale.get(t, 1.0) for t, u in gains.items()})
                    for g, gains in zip(groups, model.predictor.selection_gains(groups))]
        score = PairwiseScore(self._affinity_matrix(model), tasks)
        return [Candidate(g, {t: score.member_value(g, t) for t in g}) for g in groups]
