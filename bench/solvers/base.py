"""Grouping problems, their objectives, and the base class of every solver.

Three problems (``../shared/DESIGN.md``, "Selection semantics"); every solver declares which it solves:

``select`` (network selection; HOA, TAG, ETAP, MTG-Net, Optimal)
    Candidate groups, each with a utility per member task (larger is better: a loss enters negated). Choose at
    most ``k`` candidates covering every task; groups may overlap; every task is scored in the chosen group best
    for it; the objective is the sum over tasks. Optionally each candidate has a cost and the chosen candidates'
    total cost must stay within ``budget`` (HOA: half-size single-task networks cost 0.5, full networks 1).

``partition``
    Exactly ``k`` disjoint non-empty groups covering all tasks, maximising the sum of a group score. The score
    is either built from a pairwise matrix (:class:`PairwiseScore`, the TAG/ETAP/HOA aggregation) or given per
    group (:class:`TableScore`, :class:`CallableScore`).

``miqp`` (transfer-gain-mip Formulation 8, solved in the paper through its Formulation 9)
    Labelled groups ``j = 1..m`` (columns of a binary ``n x m`` matrix ``X``), objective
    ``sum_j X_j' S X_j / |G_j|``, every task in at least one group, every group non-empty, pairwise distinct
    columns, budgets ``(B o X)' 1 <= b``, size bounds ``m1 <= X' 1 <= m2``. With ``partition=True`` every task is
    in exactly one group (the partition variant).

Group sizes can be bounded in every problem (``min_size``/``max_size``).

A :class:`Solution` carries the grouping, its objective recomputed from the problem's own definition (never the
solver's internal number), the solve time, and a status: ``optimal`` (proved), ``feasible`` (valid, optimality not
proved, e.g. a time limit) or ``heuristic`` (a method without a proof).
"""

from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np

from bench.component import Component
from bench.errors import UsageError
from bench.types import Group, Grouping, make_group

ProblemKind = Literal["select", "partition", "miqp"]
Status = Literal["optimal", "feasible", "heuristic"]
STATUSES = ("optimal", "feasible", "heuristic")
TOL = 1e-9

# --------------------------------------------------------------------------------------------------------------
# bit masks over a task order


def mask_of(group: Iterable[str], index: Mapping[str, int]) -> int:
    return sum(1 << index[t] for t in set(group))


def group_of(mask: int, tasks: Sequence[str]) -> Group:
    return tuple(sorted(tasks[i] for i in range(len(tasks)) if mask >> i & 1))


@lru_cache(maxsize=8)
def bit_table(n: int) -> np.ndarray:
    """``(2**n, n)`` float array: row ``m`` holds the bits of mask ``m``."""
    masks = np.arange(1 << n)
    return ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)


@lru_cache(maxsize=8)
def popcount(n: int) -> np.ndarray:
    return bit_table(n).sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# group scores for partitions


class GroupScore(ABC):
    """The score of a group as a whole (larger is better); a partition's value is the sum over its groups.

    ``values()`` returns the score of every subset of the tasks as an array indexed by bit mask (``-inf`` where a
    group is not allowed); solvers that enumerate subsets use it, the others call ``value(group)``.
    """

    tasks: tuple[str, ...]
    matrix: np.ndarray | None = None
    """The pairwise matrix behind the score, when there is one (clustering solvers need it)."""

    @abstractmethod
    def value(self, group: Group) -> float: ...

    def values(self) -> np.ndarray:
        n = len(self.tasks)
        out = np.empty(1 << n)
        out[0] = -math.inf
        for mask in range(1, 1 << n):
            out[mask] = self.value(group_of(mask, self.tasks))
        return out


def _check_matrix(S: Any, tasks: Sequence[str], what: str) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    n = len(tasks)
    if S.shape != (n, n):
        raise UsageError(f"{what} must be a square {n} x {n} matrix (one row and column per task), got {S.shape}")
    if not np.all(np.isfinite(S)):
        raise UsageError(f"{what} holds non-finite entries; every entry must be a finite number")
    return S


class PairwiseScore(GroupScore):
    """The TAG/ETAP/HOA aggregation of a pairwise matrix.

    ``S[i, j]`` is the effect of task ``j`` (source) on task ``i`` (recipient), TAG's ``[recipient][source]``
    convention. In a group ``G`` with ``|G| >= 2`` task ``i`` scores ``mean_{j in G, j != i} S[i, j]`` (TAG's
    network-selection score); a singleton scores the diagonal ``S[i, i]`` (the task alone: HOA puts the STL value
    there; to forbid singletons as TAG's ``-1e6`` sentinel does, put a very negative diagonal). The group's score is
    the sum over its members, i.e. ``|G|`` times the average of ``S`` over the ordered pairs of the group, which
    does not depend on the orientation of ``S``.
    """

    def __init__(self, S: Any, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self.matrix = _check_matrix(S, self.tasks, "the affinity matrix")

    def member_value(self, group: Group, task: str) -> float:
        idx = [self.tasks.index(t) for t in group]
        i = self.tasks.index(task)
        if len(idx) == 1:
            return float(self.matrix[i, i])
        return float(sum(self.matrix[i, j] for j in idx if j != i) / (len(idx) - 1))

    def value(self, group: Group) -> float:
        return float(sum(self.member_value(group, t) for t in group))

    def candidates(self, min_size: int = 1, max_size: int | None = None) -> tuple[Candidate, ...]:
        """Every group within the size bounds as a network-selection candidate, members scored as above."""
        hi = len(self.tasks) if max_size is None else max_size
        return tuple(Candidate(g, {t: self.member_value(g, t) for t in g})
                     for r in range(min_size, hi + 1) for g in itertools.combinations(self.tasks, r))

    def values(self) -> np.ndarray:
        n = len(self.tasks)
        size = popcount(n)
        pair = pair_sums(self.matrix)
        out = np.full(1 << n, -math.inf)
        many = size >= 2
        out[many] = pair[many] / (size[many] - 1)
        for i in range(n):
            out[1 << i] = self.matrix[i, i]
        return out


class TableScore(GroupScore):
    """Scores given for some groups only; every other group is not allowed."""

    def __init__(self, scores: Mapping[Group, float], tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self._scores = {make_group(g): float(v) for g, v in scores.items()}

    def value(self, group: Group) -> float:
        return self._scores.get(make_group(group), -math.inf)

    def values(self) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.tasks)}
        out = np.full(1 << len(self.tasks), -math.inf)
        for g, v in self._scores.items():
            out[mask_of(g, index)] = v
        return out


class CallableScore(GroupScore):
    """Any function of a group (e.g. a trained predictor); each group is asked at most once."""

    def __init__(self, fn: Callable[[Group], float], tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self._fn = fn
        self._memo: dict[Group, float] = {}

    def value(self, group: Group) -> float:
        group = make_group(group)
        if group not in self._memo:
            self._memo[group] = float(self._fn(group))
        return self._memo[group]


def pair_sums(S: np.ndarray) -> np.ndarray:
    """``P[mask] = sum over ordered pairs i != j in mask of S[i, j]``, for every mask (``O(n 2^n)``)."""
    n = S.shape[0]
    T = S + S.T
    np.fill_diagonal(T, 0.0)
    bits = bit_table(n)
    out = np.zeros(1 << n)
    for i in range(n):
        lo, hi = 1 << i, 1 << (i + 1)
        rest = np.arange(lo) if lo else np.zeros(0, dtype=np.int64)
        out[lo:hi] = out[rest] + bits[rest] @ T[i]
    return out


# --------------------------------------------------------------------------------------------------------------
# problems


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(str(t) for t in tasks)
    if not tasks:
        raise UsageError("a grouping problem needs at least one task")
    if len(set(tasks)) != len(tasks):
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        raise UsageError(f"task names must be unique, repeated: {dup}")
    return tasks


def _check_sizes(min_size: int, max_size: int | None, n: int) -> tuple[int, int]:
    max_size = n if max_size is None else int(max_size)
    if min_size < 1 or max_size < min_size:
        raise UsageError(f"group size bounds must satisfy 1 <= min-size <= max-size, got {min_size} and {max_size}")
    return int(min_size), max_size


@dataclass(frozen=True)
class Candidate:
    """A candidate group with the utility (larger is better) of each member task in it, and its cost."""

    group: Group
    utility: Mapping[str, float]
    cost: float = 1.0


@dataclass(frozen=True)
class SelectProblem:
    """Network selection: at most ``k`` candidates (and total cost <= ``budget``) covering all tasks."""

    tasks: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    k: int | None = None
    budget: float | None = None
    min_size: int = 1
    max_size: int | None = None
    kind: ClassVar[str] = "select"

    def __post_init__(self) -> None:
        tasks = _check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        lo, hi = _check_sizes(self.min_size, self.max_size, len(tasks))
        object.__setattr__(self, "max_size", hi)
        if self.k is None and self.budget is None:
            raise UsageError("network selection needs a number of groups k, a budget, or both")
        if self.k is not None and self.k < 1:
            raise UsageError(f"the number of groups must be at least 1, got {self.k}")
        if self.budget is not None and not self.budget > 0:
            raise UsageError(f"the budget must be positive, got {self.budget}")
        known = set(tasks)
        cands = []
        for cand in self.candidates:
            group = make_group(cand.group)
            extra = set(group) - known
            if extra:
                raise UsageError(f"candidate group {'+'.join(group)} names unknown tasks {sorted(extra)}; "
                                 f"tasks are {list(tasks)}")
            missing = [t for t in group if t not in cand.utility]
            if missing:
                raise UsageError(f"candidate group {'+'.join(group)} has no score for member tasks {missing}")
            if not all(math.isfinite(float(cand.utility[t])) for t in group):
                raise UsageError(f"candidate group {'+'.join(group)} has a non-finite score")
            if not (cand.cost >= 0 and math.isfinite(cand.cost)):
                raise UsageError(f"candidate group {'+'.join(group)} has an invalid cost {cand.cost}")
            if lo <= len(group) <= hi:
                cands.append(Candidate(group, {t: float(cand.utility[t]) for t in group}, float(cand.cost)))
        object.__setattr__(self, "candidates", tuple(cands))
        covered = {t for c in cands for t in c.group}
        if covered != known:
            raise UsageError(f"no allowed candidate group contains tasks {sorted(known - covered)}")

    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def max_groups(self) -> int:
        return self.n if self.k is None else min(self.k, self.n)

    def infeasible(self) -> Infeasible:
        """The error of an exact solver that proved no selection satisfies the constraints."""
        budget = "" if self.budget is None else f" within budget {self.budget}"
        return Infeasible(f"no selection of at most {self.max_groups} candidate groups{budget} covers every task")

    def objective(self, groups: Sequence[Group]) -> float:
        return select_value(self, groups)

    def check(self, groups: Sequence[Group]) -> None:
        check_select(self, groups)


@dataclass(frozen=True)
class PartitionProblem:
    """Exactly ``k`` disjoint non-empty groups covering all tasks, maximising the sum of ``score``."""

    tasks: tuple[str, ...]
    k: int
    score: GroupScore
    min_size: int = 1
    max_size: int | None = None
    kind: ClassVar[str] = "partition"

    def __post_init__(self) -> None:
        tasks = _check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if tuple(self.score.tasks) != tasks:
            raise UsageError("the group score must be defined over the problem's tasks in the same order")
        if not 1 <= self.k <= len(tasks):
            raise UsageError(f"cannot split {len(tasks)} tasks into {self.k} non-empty groups; "
                             f"k must be between 1 and {len(tasks)}")
        lo, hi = _check_sizes(self.min_size, self.max_size, len(tasks))
        object.__setattr__(self, "max_size", hi)
        if self.k * lo > len(tasks) or self.k * hi < len(tasks):
            raise UsageError(f"no partition of {len(tasks)} tasks into {self.k} groups has every group size "
                             f"between {lo} and {hi}")

    @property
    def n(self) -> int:
        return len(self.tasks)

    def allowed(self, size: int) -> bool:
        return self.min_size <= size <= self.max_size

    def objective(self, groups: Sequence[Group]) -> float:
        return float(sum(self.score.value(make_group(g)) for g in groups))

    def check(self, groups: Sequence[Group]) -> None:
        check_partition(self, groups)


@dataclass(frozen=True)
class MIQPProblem:
    """transfer-gain-mip Formulation 8: ``m`` labelled, distinct, non-empty groups (see the module docstring).

    ``B`` is ``n x m`` (cost of task ``i`` in group ``j``) and ``b`` has ``m`` capacities; both or neither.
    ``min_size``/``max_size`` are the paper's ``m1``/``m2``, one value for every group or one per group.
    """

    tasks: tuple[str, ...]
    S: np.ndarray
    m: int
    B: np.ndarray | None = None
    b: np.ndarray | None = None
    min_size: int | Sequence[int] = 1
    max_size: int | Sequence[int] | None = None
    partition: bool = False
    kind: ClassVar[str] = "miqp"
    m1: np.ndarray = field(init=False, repr=False)
    m2: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tasks = _check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        n = len(tasks)
        object.__setattr__(self, "S", _check_matrix(self.S, tasks, "the transfer-gain matrix S"))
        if not 1 <= self.m <= (n if self.partition else (1 << n) - 1):
            limit = n if self.partition else (1 << n) - 1
            raise UsageError(f"{'a partition of' if self.partition else ''} {n} tasks cannot have {self.m} "
                             f"distinct non-empty groups; the number of groups must be between 1 and {limit}")
        if (self.B is None) != (self.b is None):
            raise UsageError("a budget needs both the budget matrix B and the capacity vector b")
        if self.B is not None:
            B = np.asarray(self.B, dtype=np.float64)
            b = np.asarray(self.b, dtype=np.float64).reshape(-1)
            if B.shape != (n, self.m):
                raise UsageError(f"the budget matrix B must be {n} x {self.m} (tasks x groups), got {B.shape}")
            if b.shape != (self.m,):
                raise UsageError(f"the capacity vector b must hold {self.m} values (one per group), got {b.size}")
            if not (np.all(np.isfinite(B)) and np.all(np.isfinite(b))):
                raise UsageError("the budget matrix and capacities must be finite numbers")
            object.__setattr__(self, "B", B)
            object.__setattr__(self, "b", b)
        m1 = np.broadcast_to(np.asarray(self.min_size, dtype=np.int64), (self.m,)).copy()
        hi = n if self.max_size is None else self.max_size
        m2 = np.broadcast_to(np.asarray(hi, dtype=np.int64), (self.m,)).copy()
        if np.any(m1 < 1) or np.any(m2 < m1):
            raise UsageError(f"group size bounds must satisfy 1 <= m1 <= m2, got m1={m1.tolist()} m2={m2.tolist()}")
        object.__setattr__(self, "m1", m1)
        object.__setattr__(self, "m2", np.minimum(m2, n))

    @property
    def n(self) -> int:
        return len(self.tasks)

    def group_value(self, group: Group) -> float:
        idx = [self.tasks.index(t) for t in group]
        return float(self.S[np.ix_(idx, idx)].sum() / len(idx))

    def fits(self, group: Group, j: int) -> bool:
        """Whether ``group`` may be column ``j`` (size bounds and budget)."""
        if not self.m1[j] <= len(group) <= self.m2[j]:
            return False
        if self.B is not None:
            idx = [self.tasks.index(t) for t in group]
            return bool(self.B[idx, j].sum() <= self.b[j] + 1e-9)
        return True

    def objective(self, groups: Sequence[Group]) -> float:
        return float(sum(self.group_value(make_group(g)) for g in groups))

    def check(self, groups: Sequence[Group]) -> None:
        check_miqp(self, groups)


Problem = SelectProblem | PartitionProblem | MIQPProblem


def select_value(problem: SelectProblem, groups: Sequence[Group]) -> float:
    """Sum over tasks of the task's best utility among the chosen candidates (``-inf`` if a task is uncovered)."""
    best = {t: -math.inf for t in problem.tasks}
    table = {c.group: c for c in problem.candidates}
    for g in groups:
        cand = table[make_group(g)]
        for t in cand.group:
            best[t] = max(best[t], cand.utility[t])
    return float(sum(best.values()))


class Infeasible(UsageError):
    """The constraints admit no grouping (a usage error: the user's constraints are contradictory)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"infeasible: {detail}")


class InvalidSolution(AssertionError):
    """A solver returned groups that break its problem's constraints (a bug in the solver)."""


def check_select(problem: SelectProblem, groups: Sequence[Group]) -> None:
    table = {c.group: c for c in problem.candidates}
    groups = [make_group(g) for g in groups]
    if len(set(groups)) != len(groups):
        raise InvalidSolution(f"repeated group in {groups}")
    unknown = [g for g in groups if g not in table]
    if unknown:
        raise InvalidSolution(f"groups {unknown} are not allowed candidates")
    if problem.k is not None and len(groups) > problem.k:
        raise InvalidSolution(f"{len(groups)} groups chosen, at most {problem.k} allowed")
    if problem.budget is not None and sum(table[g].cost for g in groups) > problem.budget + 1e-9:
        raise InvalidSolution(f"cost {sum(table[g].cost for g in groups)} exceeds the budget {problem.budget}")
    missing = set(problem.tasks) - {t for g in groups for t in g}
    if missing:
        raise InvalidSolution(f"tasks {sorted(missing)} are not covered")


def check_partition(problem: PartitionProblem, groups: Sequence[Group]) -> None:
    groups = [make_group(g) for g in groups]
    used = [t for g in groups for t in g]
    if sorted(used) != sorted(problem.tasks):
        raise InvalidSolution(f"{groups} is not a partition of {list(problem.tasks)}")
    if len(groups) != problem.k:
        raise InvalidSolution(f"{len(groups)} groups, exactly {problem.k} required")
    bad = [g for g in groups if not problem.allowed(len(g))]
    if bad:
        raise InvalidSolution(f"groups {bad} break the size bounds")
    if any(not math.isfinite(problem.score.value(g)) for g in groups):
        raise InvalidSolution(f"groups {groups} include a group the score does not allow")


def check_miqp(problem: MIQPProblem, groups: Sequence[Group]) -> None:
    groups = [make_group(g) for g in groups]
    if len(groups) != problem.m:
        raise InvalidSolution(f"{len(groups)} groups, exactly {problem.m} labelled groups required")
    if len(set(groups)) != len(groups):
        raise InvalidSolution(f"groups must be pairwise distinct: {groups}")
    used = [t for g in groups for t in g]
    if set(used) != set(problem.tasks) or (problem.partition and len(used) != len(set(used))):
        raise InvalidSolution(f"{groups} does not cover every task {'exactly once' if problem.partition else ''}")
    bad = [(j, g) for j, g in enumerate(groups) if not problem.fits(g, j)]
    if bad:
        raise InvalidSolution(f"groups break their size bounds or budgets: {bad}")


# --------------------------------------------------------------------------------------------------------------
# solutions and solvers


@dataclass(frozen=True)
class Solution:
    """What every solver returns.

    ``groups`` keeps the solver's order (for ``miqp`` the label order ``j = 1..m``); ``grouping`` is the canonical
    form. ``objective`` is recomputed from the problem's definition. ``info`` holds solver-specific counts (nodes,
    oracle calls) and ``notes`` anything a user must know (e.g. a fallback to another solver).
    """

    groups: tuple[Group, ...]
    objective: float
    status: Status
    solver: str
    problem: str
    solve_time_s: float
    info: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def grouping(self) -> Grouping:
        return Grouping.of(self.groups, "partition" if self.problem == "partition" or
                           (self.problem == "miqp" and self.info.get("partition")) else "select",
                           solved_by=(self.solver, self.status))

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [list(g) for g in self.groups],
            "objective": self.objective,
            "status": self.status,
            "solver": self.solver,
            "problem": self.problem,
            "solve_time_s": self.solve_time_s,
            "info": dict(self.info),
            "notes": list(self.notes),
        }


@dataclass
class Raw:
    """A solver's answer before the base class checks, scores and times it."""

    groups: Sequence[Iterable[str]]
    status: Status
    info: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class Solver(Component, ABC):
    """Base of every grouping solver.

    Subclasses declare ``problems`` (the problem kinds they solve), ``exact`` (whether an ``optimal`` status is a
    proof) and implement ``_solve(problem, seed) -> Raw``. :meth:`solve` checks the problem kind, times the call,
    validates the groups against the problem's constraints and recomputes the objective.
    """

    kind = "solver"
    problems: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[bool] = False

    def supports(self, problem: Problem) -> bool:
        return problem.kind in self.problems

    def solve(self, problem: Problem, seed: int = 0) -> Solution:
        if not self.supports(problem):
            raise UsageError(f"solver '{self.id}' solves {', '.join(self.problems)} problems, not {problem.kind}; "
                             f"choose another solver (python -m bench list solvers)")
        start = time.perf_counter()
        raw = self._solve(problem, seed)
        elapsed = time.perf_counter() - start
        groups = tuple(make_group(g) for g in raw.groups)
        problem.check(groups)
        if problem.kind != "miqp":
            groups = Grouping.of(groups).groups
        if raw.status not in STATUSES:
            raise InvalidSolution(f"solver {self.id} returned unknown status {raw.status!r}")
        info = dict(raw.info)
        if problem.kind == "miqp":
            info.setdefault("partition", problem.partition)
        return Solution(groups, problem.objective(groups), raw.status, self.id, problem.kind, elapsed, info,
                        tuple(raw.notes))

    @abstractmethod
    def _solve(self, problem: Problem, seed: int) -> Raw: ...
