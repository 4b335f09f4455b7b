"""Randomized local search with quick reject (affinity-predictor-local-search, Section 5.1, Algorithm 1).

The paper partitions tasks to minimise the total MTL loss ``L(G) = sum_{g in G} L_g``. Here a group's value comes
from an *oracle* (larger is better; in the solver ``problem.score.value``, in a method that trains networks the
negated trained loss), so ``L(G) = -sum_g value(g)``. Algorithm 1, as implemented by :func:`run_local_search`:

1. Evaluate the *partition sample* **G** (``initial_partitions`` uniformly random partitions into exactly ``k``
   groups) and start from its best partition ``G`` with loss ``L`` (lines 1-2); fit the predictor on every group
   evaluated so far.
2. For ``i = 0 .. iterations-1`` (``gamma_max``): ``G' = MutateGroups(G)`` (Appendix F.1, Algorithm 4); query the
   predictor for ``L_pred(G')``; if ``L_pred < L`` train, else train only with probability ``pi_i`` (quick
   reject, lines 5-10). Training means evaluating ``G'``'s groups with the oracle; the move is accepted with
   probability ``exp((L - L') K)`` (always when ``L' <= L``, lines 12-16). Every ``retrain_every``
   (``gamma_retrain``) iterations the predictor is refit on all groups evaluated so far (lines 19-21).
3. Return the best partition evaluated (line 23).

Cost is counted as in the paper's Section 6.1: one oracle call per *distinct* group evaluated (memoised, the
authors' code also skips groups it has trained before); the initial sample's groups count as well.

Choices the paper leaves open, and departures:

* **Exactly k groups.** Algorithm 4 may create a group (a task leaves a group of two or more for a new singleton)
  or destroy one (a singleton joins another group), while the ``partition`` problem fixes ``k``. The search
  conditions the mutation on keeping ``k`` groups and the size bounds: a mutation that breaks them is redrawn, up
  to ``MAX_TRIES`` times, after which the iteration counts as a rejected move (tight size bounds, e.g. all groups
  at ``min_size == max_size``, leave no valid move of Algorithm 4, and the answer is the sample's best). For
  ``k = 1`` and ``k = n`` only one partition exists and it is returned directly.
* **Predicted loss.** ``L_pred(G') = L + sum_{g in G \\ G'} p(g) - sum_{g in G' \\ G} p(g)``: the predictor's
  estimate of the change, with the groups a mutation removes and adds both predicted; a partition whose groups
  were all evaluated is known exactly. The authors' code (``*_QR.py``) instead adds predictions for the changed
  groups to the true values of the others; with a shrinking predictor (ridge pulls good groups towards the mean)
  that rejects nearly every move away from a good partition, while the difference of predictions cancels the
  bias.
* **Predictor.** The paper's predictor is an MLP chosen by architecture search, on groupwise task features (mean,
  variance of pairwise MTL gains, dataset sizes, ...), regressing the relative MTL gain of groups of three or more
  tasks; it arrives with the task-feature signal in another module. The default here is a ridge regression
  (:class:`RidgePredictor`, ``alpha = 0.1``) of the group value on the group's multi-hot membership, its pairs of
  tasks (averaged over partners) and its size, fit on every evaluated group with a finite value. Any object with
  ``fit(groups, values)`` and ``predict(groups)`` (:class:`GroupPredictor`) can be passed; ``predictor="none"``
  is the plain randomized local search (every mutation is trained).
* **Schedule of pi.** The paper starts at ``pi_0 = 0.1`` and "decreases pi over time" without a schedule; here
  ``pi_i = pi0 / (1 + i / pi_decay)`` (``pi_decay = 50``: halved after 50 iterations, 0.02 at 200). The
  authors' code uses steps: 0.1, 0.05 after 50 trained mutations, 0.005 after 100.
* **Temperature.** The paper gives no value of ``K`` (the authors' code uses ``K = 5`` on raw summed MSE). To be
  independent of the loss scale, ``K = temperature / s`` with ``s`` the standard deviation of the initial
  sample's losses (a change of loss the size of the spread between random partitions; ``|L|`` of the start when
  the sample has no spread, 1 when that is 0): a move that is worse by ``s / temperature`` is accepted with
  probability ``1/e``. ``temperature = 10`` by default. The spread is used rather than ``|L|`` because it does not
  move when a constant is added to every group's value.
* **Retraining.** The predictor is refit after every ``retrain_every`` iterations (``(i + 1) mod gamma = 0``;
  Algorithm 1's ``i mod gamma = 0`` would also refit right after the first iteration).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bench.errors import Unsupported, UsageError
from bench.solvers._search import GroupOracle, Partition, fits, sample_partition
from bench.solvers.base import PartitionProblem, Raw, Solver
from bench.types import Group, make_group

MAX_TRIES = 100
"""Redraws of Algorithm 4 per iteration before the iteration counts as a rejected move."""


def mutate_groups(partition: Sequence[Sequence[str]], rng: np.random.Generator) -> Partition:
    """Algorithm 4 (Appendix F.1): move one uniformly chosen task to another group or to a new singleton.

    ``t`` is drawn uniformly from all tasks. If its group ``g_old`` is a singleton, ``g_old`` disappears and ``t``
    joins a uniformly chosen remaining group (the number of groups drops by one). Otherwise ``t`` leaves
    ``g_old`` for a uniform choice among the other groups and the new singleton ``{t}`` (which adds a group). The
    groups keep their positions; a new singleton is appended. A single task has nowhere to go: returned as is.
    """
    groups = [make_group(g) for g in partition]
    tasks = sorted(t for g in groups for t in g)
    t = tasks[int(rng.integers(len(tasks)))]
    old = next(i for i, g in enumerate(groups) if t in g)
    if len(groups[old]) == 1:
        rest = groups[:old] + groups[old + 1:]
        if not rest:
            return tuple(groups)
        j = int(rng.integers(len(rest)))
        rest[j] = make_group((*rest[j], t))
        return tuple(rest)
    groups[old] = tuple(x for x in groups[old] if x != t)
    others = [i for i in range(len(groups)) if i != old]
    j = int(rng.integers(len(others) + 1))
    if j == len(others):
        groups.append((t,))
    else:
        groups[others[j]] = make_group((*groups[others[j]], t))
    return tuple(groups)


class GroupPredictor(Protocol):
    """Predicts a group's oracle value (larger is better) from groups already evaluated."""

    def fit(self, groups: Sequence[Group], values: Sequence[float]) -> Any: ...

    def predict(self, groups: Sequence[Group]) -> np.ndarray: ...


class RidgePredictor:
    """Ridge regression of a group's value on its composition.

    Features: the multi-hot membership over ``tasks``, the co-membership of every pair of tasks divided by
    ``|g| - 1`` (a group's pair features then average over partners, like the mean pairwise MTL gain, the
    groupwise feature the paper found most predictive, Section 4.2) and the size. Pair features are needed: under
    a model additive over members every partition into ``k`` groups has the same predicted total.
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 0.1) -> None:
        self.index = {t: i for i, t in enumerate(tasks)}
        self.alpha = alpha
        self.model_ = None

    def _features(self, groups: Sequence[Group]) -> np.ndarray:
        n = len(self.index)
        upper = np.triu_indices(n, 1)
        X = np.zeros((len(groups), n + len(upper[0]) + 1))
        for row, group in enumerate(groups):
            hot = np.zeros(n)
            hot[[self.index[t] for t in group]] = 1.0
            X[row, :n] = hot
            if len(group) > 1:
                X[row, n:-1] = np.outer(hot, hot)[upper] / (len(group) - 1)
            X[row, -1] = len(group)
        return X

    def fit(self, groups: Sequence[Group], values: Sequence[float]) -> RidgePredictor:
        from sklearn.linear_model import Ridge

        self.model_ = Ridge(alpha=self.alpha).fit(self._features(groups), np.asarray(values, dtype=np.float64))
        return self

    def predict(self, groups: Sequence[Group]) -> np.ndarray:
        return self.model_.predict(self._features(groups))


@dataclass(frozen=True)
class Step:
    """One iteration of Algorithm 1: the mutation tried and what happened to it.

    ``partition`` is ``None`` when no valid mutation was found; ``predicted_loss`` is ``None`` without a
    predictor; ``loss`` is ``None`` when the mutation was quickly rejected (not trained). ``oracle_calls`` counts
    distinct groups evaluated so far (initial sample included).
    """

    iteration: int
    partition: Partition | None
    predicted_loss: float | None
    trained: bool
    loss: float | None
    accepted: bool
    current_loss: float
    oracle_calls: int


def run_local_search(tasks: Sequence[str], k: int, oracle: Callable[[Group], float] | GroupOracle,
                     predictor: GroupPredictor | None, rng: np.random.Generator, iterations: int = 200, *,
                     initial_partitions: int = 10, retrain_every: int = 5, pi0: float = 0.1,
                     pi_decay: float = 50.0, temperature: float = 10.0, min_size: int = 1,
                     max_size: int | None = None) -> tuple[Partition, list[Step]]:
    """Algorithm 1 (see the module docstring); returns the best partition evaluated and one :class:`Step` per
    iteration. Pass a :class:`GroupOracle` to read its ``calls`` (distinct groups evaluated) afterwards."""
    oracle = oracle if isinstance(oracle, GroupOracle) else GroupOracle(oracle)
    tasks = tuple(tasks)
    n = len(tasks)
    max_size = n if max_size is None else max_size
    if not (1 <= k <= n and 1 <= min_size <= max_size and k * min_size <= n <= k * max_size):
        raise UsageError(f"no partition of {n} tasks into {k} groups has every size between {min_size} and "
                         f"{max_size}")
    if iterations < 0 or initial_partitions < 1 or retrain_every < 1:
        raise UsageError(f"local search needs iterations >= 0, initial_partitions >= 1 and retrain_every >= 1, got "
                         f"{iterations}, {initial_partitions}, {retrain_every}")
    if not (0.0 <= pi0 <= 1.0 and pi_decay > 0 and temperature > 0):
        raise UsageError(f"local search needs 0 <= pi0 <= 1, pi_decay > 0 and temperature > 0, got {pi0}, "
                         f"{pi_decay}, {temperature}")

    def loss(partition: Partition) -> float:
        return -oracle.partition_value(partition)

    if k in (1, n):  # a single partition exists; Algorithm 4 cannot keep k groups
        only = tuple(make_group(g) for g in ((tasks,) if k == 1 else [(t,) for t in tasks]))
        loss(only)
        return only, []

    sample = [sample_partition(tasks, k, rng, min_size, max_size) for _ in range(initial_partitions)]
    losses = [loss(p) for p in sample]
    start = int(np.argmin(losses))
    current, L = sample[start], losses[start]
    best, best_L = current, L
    finite = np.array([x for x in losses if math.isfinite(x)])
    scale = float(finite.std()) if finite.size > 1 else 0.0
    scale = scale or (abs(L) if math.isfinite(L) else 0.0) or 1.0
    K = temperature / scale

    def refit() -> bool:
        known = [(g, v) for g, v in oracle.values.items() if math.isfinite(v)]
        if predictor is None or not known:
            return False
        predictor.fit([g for g, _ in known], [v for _, v in known])
        return True

    fitted = refit()
    history: list[Step] = []
    for i in range(iterations):
        cand = None
        for _ in range(MAX_TRIES):
            proposal = mutate_groups(current, rng)
            if fits(proposal, k, min_size, max_size):
                cand = proposal
                break
        predicted, trained, new_L, accepted = None, False, None, False
        if cand is not None:
            if fitted:
                if all(oracle.known(g) for g in cand):
                    predicted = loss(cand)
                else:  # the predictor's estimate of the change: its bias cancels between both sides
                    added = [g for g in cand if g not in current]
                    removed = [g for g in current if g not in cand]
                    predicted = L + float(np.sum(predictor.predict(removed)) - np.sum(predictor.predict(added)))
                trained = predicted < L or rng.random() < pi0 / (1.0 + i / pi_decay)
            else:
                trained = True
            if trained:
                new_L = loss(cand)
                accepted = new_L <= L or rng.random() < math.exp((L - new_L) * K)
                if accepted:
                    current, L = cand, new_L
                if new_L < best_L:
                    best, best_L = cand, new_L
        if predictor is not None and (i + 1) % retrain_every == 0:
            fitted = refit()
        history.append(Step(i, cand, predicted, trained, new_L, accepted, L, oracle.calls))
    return best, history


class LocalSearch(Solver):
    """Randomized local search with quick reject (affinity-predictor-local-search Algorithm 1, Algorithm 4 moves).

    Partitions into exactly ``k`` groups; see :mod:`bench.solvers.local_search` for the choices. The oracle is
    ``problem.score.value``; ``info["oracle_calls"]`` counts the distinct groups it was asked (the
    paper's MTL trainings). ``predictor``: ``ridge`` (default) or ``none`` (no quick reject).
    """

    name = "local_search"
    version = "1"
    problems = ("partition",)
    exact = False
    defaults = {"iterations": 200, "initial_partitions": 10, "retrain_every": 5, "pi0": 0.1, "pi_decay": 50.0,
                "temperature": 10.0, "predictor": "ridge"}
    parameters = {"predictor": ["ridge", "none"]}
    test_parameters = {"iterations": 30, "initial_partitions": 3}

    def _solve(self, problem: PartitionProblem, seed: int) -> Raw:
        if self.predictor not in ("ridge", "none", None):  # an id's "none" parses to None
            raise UsageError(f"parameter 'predictor' of solver 'local_search' must be 'ridge' or 'none', got "
                             f"{self.predictor!r}")
        oracle = GroupOracle(problem.score.value)
        predictor = RidgePredictor(problem.tasks) if self.predictor == "ridge" else None
        best, history = run_local_search(
            problem.tasks, problem.k, oracle, predictor, np.random.default_rng(seed), self.iterations,
            initial_partitions=self.initial_partitions, retrain_every=self.retrain_every, pi0=self.pi0,
            pi_decay=self.pi_decay, temperature=self.temperature, min_size=problem.min_size,
            max_size=problem.max_size)
        if not math.isfinite(oracle.partition_value(best)):
            raise Unsupported(f"local search evaluated no partition whose groups are all allowed by the score "
                              f"({oracle.calls} groups tried); use an exact solver (dp) or more iterations")
        info = {
            "oracle_calls": oracle.calls,
            "iterations": len(history),
            "trained": sum(s.trained for s in history),
            "quick_rejected": sum(s.partition is not None and not s.trained for s in history),
            "no_valid_move": sum(s.partition is None for s in history),
            "accepted": sum(s.accepted for s in history),
        }
        notes = ("k = 1 or k = n: the only partition was returned without search",) \
            if problem.k in (1, problem.n) else ()
        return Raw(best, "heuristic", info, notes)
