"""The search heuristics: ``beam`` (MTG-Net), ``local_search`` (Algorithm 1 with quick reject), ``random_search``.

Heuristics are held to brute force where they provably reach it, and to validity and determinism elsewhere.
"""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import registry
from bench.errors import Unsupported, UsageError
from bench.solvers._search import GroupOracle, reachable_groups
from bench.solvers.base import Candidate, PairwiseScore, PartitionProblem, SelectProblem, TableScore
from bench.solvers.local_search import RidgePredictor, mutate_groups, run_local_search

TOL = 1e-9


def _solver(spec: str):
    return registry.create("solver", spec)


def _canon(groups):
    return tuple(sorted(tuple(sorted(g)) for g in groups))


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def _best_partition(problem: PartitionProblem) -> float:
    return max(problem.objective(p) for p in _partitions(list(problem.tasks))
               if len(p) == problem.k and all(problem.allowed(len(g)) for g in p))


def _best_selection(problem: SelectProblem) -> float:
    best = -math.inf
    for r in range(1, problem.max_groups + 1):
        for combo in itertools.combinations(problem.candidates, r):
            if {t for c in combo for t in c.group} != set(problem.tasks):
                continue
            if problem.budget is not None and sum(c.cost for c in combo) > problem.budget + TOL:
                continue
            best = max(best, problem.objective([c.group for c in combo]))
    return best


def _planted(n: int, k: int, seed: int, noise: float = 0.3) -> PartitionProblem:
    """Tasks in ``k`` hidden blocks: affinity +1 inside a block, -1 across, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n)]
    block = rng.permutation(np.arange(n) % k)
    S = np.where(block[:, None] == block[None, :], 1.0, -1.0) + noise * rng.normal(size=(n, n))
    np.fill_diagonal(S, 0.0)
    return PartitionProblem(tuple(tasks), k, PairwiseScore(S, tasks))


def _random_partition_problem(n, k, seed, lo=1, hi=None):
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n)]
    return PartitionProblem(tuple(tasks), k, PairwiseScore(rng.normal(size=(n, n)), tasks), lo, hi)


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 4


def test_mutate_groups_covers_every_case_of_algorithm_4_with_its_probabilities():
    start = (("a", "b", "c"), ("d",), ("e", "f"))
    rng = np.random.default_rng(0)
    counts = collections.Counter()
    draws = 6000
    for _ in range(draws):
        out = mutate_groups(start, rng)
        flat = [t for g in out for t in g]
        assert sorted(flat) == list("abcdef") and all(out)
        assert _canon(out) != _canon(start)
        delta = len(out) - len(start)
        counts[delta] += 1
        if delta == -1:  # lines 3-6: the singleton {d} disappears into another group
            assert ("d",) not in out and any("d" in g and len(g) > 1 for g in out)
        if delta == 1:  # lines 11-12: a new singleton {t}, appended
            assert len(out[-1]) == 1 and out[-1][0] != "d"
    # t uniform over the 6 tasks; from a group of two or more, k = 3 equally likely targets (2 groups + new)
    assert counts[-1] / draws == pytest.approx(1 / 6, abs=0.02)
    assert counts[1] / draws == pytest.approx(5 / 6 * 1 / 3, abs=0.02)
    assert counts[0] / draws == pytest.approx(5 / 6 * 2 / 3, abs=0.02)


def test_mutate_groups_small_cases():
    rng = np.random.default_rng(1)
    assert mutate_groups([["a"]], rng) == (("a",),)
    assert _canon(mutate_groups([["a", "b"]], rng)) == (("a",), ("b",))  # the only target is a new singleton
    assert _canon(mutate_groups([["a"], ["b"]], rng)) == (("a", "b"),)


# ---------------------------------------------------------------------------------------------------------------
# local search and random search on random instances


@st.composite
def _partition_instances(draw):
    n = draw(st.integers(2, 7))
    k = draw(st.integers(1, n))
    lo = draw(st.integers(1, n // k))
    hi = draw(st.integers(max(lo, -(-n // k)), n))
    return n, k, lo, hi, draw(st.integers(0, 2**31))


@settings(max_examples=25, deadline=None)
@given(_partition_instances(), st.sampled_from([("local_search", {}), ("local_search", {"predictor": "none"}),
                                                ("random_search", {})]))
def test_partition_searches_are_valid_deterministic_and_bounded_by_the_optimum(instance, spec):
    n, k, lo, hi, seed = instance
    problem = _random_partition_problem(n, k, seed, lo, hi)
    cls = registry.components("solver")[spec[0]]
    solver = cls(**{**cls.test_parameters, **spec[1]})
    first, second = solver.solve(problem, seed=seed % 7), solver.solve(problem, seed=seed % 7)  # base validates
    assert first.groups == second.groups and first.info == second.info
    assert first.status == "heuristic"
    assert first.objective <= _best_partition(problem) + TOL
    assert first.info["oracle_calls"] >= 1


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("predictor", ["ridge", "none"])
def test_local_search_finds_the_planted_optimum(k, predictor):
    for seed in range(3):
        problem = _planted(6, k, seed)
        solution = _solver(f"local_search[predictor={predictor},iterations=300]").solve(problem, seed=seed)
        assert solution.objective == pytest.approx(_best_partition(problem), abs=1e-9)


def test_quick_reject_saves_oracle_calls():
    problem = _planted(10, 3, seed=5)
    plain_calls = quick_calls = 0
    for seed in range(3):
        plain = _solver("local_search[predictor=none,iterations=150]").solve(problem, seed=seed)
        quick = _solver("local_search[iterations=150]").solve(problem, seed=seed)
        assert quick.info["oracle_calls"] < plain.info["oracle_calls"]
        assert quick.info["quick_rejected"] > 0 and plain.info["quick_rejected"] == 0
        plain_calls += plain.info["oracle_calls"]
        quick_calls += quick.info["oracle_calls"]
    assert quick_calls < 0.75 * plain_calls  # about 0.6 here


def test_run_local_search_counts_distinct_groups_with_any_oracle_and_predictor():
    tasks = [f"t{i}" for i in range(8)]
    S = np.random.default_rng(3).normal(size=(8, 8))
    score = PairwiseScore(S, tasks)
    asked = []

    def fn(group):
        asked.append(group)
        return score.value(group)

    class Mean:  # any object with fit/predict is a predictor
        def fit(self, groups, values):
            self.mean = float(np.mean(values))

        def predict(self, groups):
            return np.full(len(groups), self.mean)

    oracle = GroupOracle(fn)
    best, history = run_local_search(tasks, 3, oracle, Mean(), np.random.default_rng(0), 40, initial_partitions=4)
    assert len(history) == 40 and oracle.calls == len(asked) == len(set(asked))
    assert history[-1].oracle_calls == oracle.calls
    assert len(best) == 3 and sorted(t for g in best for t in g) == tasks
    assert -oracle.partition_value(best) <= min(s.loss for s in history if s.loss is not None) + TOL


def test_ridge_predictor_learns_a_pairwise_score():
    tasks = [f"t{i}" for i in range(6)]
    S = np.random.default_rng(4).normal(size=(6, 6))
    score = PairwiseScore(S, tasks)
    groups = [g for r in range(2, 7) for g in itertools.combinations(tasks, r)]
    values = [score.value(g) for g in groups]
    predicted = RidgePredictor(tasks, alpha=1e-6).fit(groups, values).predict(groups)
    assert np.allclose(predicted, values, atol=1e-3)  # pair features averaged over partners are exact here


@pytest.mark.parametrize("budget", [5, 37, 200])
def test_random_search_spends_its_oracle_budget_and_stops(budget):
    problem = _random_partition_problem(10, 3, seed=2)
    solution = _solver(f"random_search[oracle_calls={budget}]").solve(problem, seed=1)
    assert budget <= solution.info["oracle_calls"] < budget + problem.k


def test_random_search_stops_at_the_reachable_groups():
    problem = _random_partition_problem(4, 2, seed=0)
    solution = _solver("random_search").solve(problem, seed=0)
    assert solution.info["oracle_calls"] == reachable_groups(4, 2, 1, 4) == 14
    assert solution.objective == pytest.approx(_best_partition(problem))


@pytest.mark.parametrize("spec", ["local_search", "random_search"])
def test_single_partition_cases(spec):
    for k, expected in [(1, (("t0", "t1", "t2"),)), (3, (("t0",), ("t1",), ("t2",)))]:
        solution = _solver(spec).solve(_random_partition_problem(3, k, seed=0), seed=0)
        assert _canon(solution.groups) == expected


def test_local_search_under_tight_size_bounds_keeps_the_sample_best():
    problem = _random_partition_problem(6, 2, seed=1, lo=3, hi=3)  # no single move keeps sizes 3 + 3
    solution = _solver("local_search[iterations=20]").solve(problem, seed=0)
    assert solution.info["no_valid_move"] == 20 and all(len(g) == 3 for g in solution.groups)


def test_sample_partition_fallback_respects_the_size_bounds(monkeypatch):
    from bench.solvers import _search

    monkeypatch.setattr(_search, "RANDOM_TRIES", 0)  # force the size-first construction
    tasks = [f"t{i}" for i in range(9)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        blocks = _search.sample_partition(tasks, 3, rng, 2, 4)
        assert len(blocks) == 3 and all(2 <= len(b) <= 4 for b in blocks)
        assert sorted(t for b in blocks for t in b) == tasks


def test_disallowed_groups_are_avoided_or_reported():
    tasks = ("a", "b", "c", "d")
    score = TableScore({("a", "b"): 1.0, ("c", "d"): 2.0, ("a", "c"): 5.0, ("b", "d"): 0.0}, tasks)
    problem = PartitionProblem(tasks, 2, score)
    for spec in ("local_search", "random_search"):
        assert _solver(spec).solve(problem, seed=0).objective == pytest.approx(5.0)
    nothing = PartitionProblem(tasks, 2, TableScore({("a", "b", "c"): 1.0}, tasks))
    with pytest.raises(Unsupported):
        _solver("random_search").solve(nothing, seed=0)


@pytest.mark.parametrize("spec", ["local_search[predictor=mlp]", "local_search[iterations=-1]",
                                  "local_search[pi0=2.0]", "random_search[oracle_calls=0]", "beam[beams=0]"])
def test_bad_parameters_are_usage_errors(spec):
    problem = _random_partition_problem(4, 2, seed=0)
    if spec.startswith("beam"):
        problem = SelectProblem(("a", "b"), (Candidate(("a", "b"), {"a": 1.0, "b": 1.0}),), k=1)
    with pytest.raises(UsageError):
        _solver(spec).solve(problem, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# beam search


def _random_select(n, seed, k=None, budget=None, n_cands=10, costs=False):
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n)]
    cands = {(t,): Candidate((t,), {t: float(rng.normal())}, 1.0) for t in tasks}  # singletons: always a cover
    for _ in range(n_cands):
        group = tuple(sorted(rng.choice(tasks, size=int(rng.integers(2, n + 1)), replace=False)))
        cost = float(rng.choice([0.5, 1.0, 1.5])) if costs else 1.0
        cands[group] = Candidate(group, {t: float(rng.normal()) for t in group}, cost)
    return SelectProblem(tuple(tasks), tuple(cands.values()), k=k, budget=budget)


def test_beam_is_valid_under_k_and_never_beats_brute_force():
    solved = 0
    for seed in range(40):
        n = 3 + seed % 4
        problem = _random_select(n, seed, k=1 + seed % n)
        optimum = _best_selection(problem)
        try:
            solution = _solver("beam").solve(problem, seed=0)  # base validates the selection
        except Unsupported:
            assert optimum == -math.inf  # on these instances the beams or the greedy cover find a cover
            continue
        solved += 1
        assert len(solution.groups) <= problem.k and solution.objective <= optimum + TOL
    assert solved >= 30


def test_beam_is_valid_under_a_budget():
    for seed in range(30):
        n = 3 + seed % 4
        problem = _random_select(n, seed, budget=float(n) * 0.6, costs=True)
        optimum = _best_selection(problem)
        try:
            solution = _solver("beam").solve(problem, seed=0)
        except Unsupported:
            assert optimum == -math.inf
            continue
        table = {c.group: c for c in problem.candidates}
        assert sum(table[g].cost for g in solution.groups) <= problem.budget + TOL
        assert solution.objective <= optimum + TOL


def test_beam_is_optimal_on_disjoint_candidates():
    """Disjoint candidates: a cover must take every one of them, and the greedy does (k or budget permitting)."""
    rng = np.random.default_rng(7)
    for trial in range(10):
        n = int(rng.integers(3, 8))
        tasks = [f"t{i}" for i in range(n)]
        labels = rng.integers(0, int(rng.integers(1, n + 1)), size=n)
        blocks = [tuple(t for t, b in zip(tasks, labels) if b == lab) for lab in sorted(set(labels))]
        cands = tuple(Candidate(g, {t: float(rng.normal()) for t in g}, float(rng.choice([0.5, 1.0])))
                      for g in blocks)
        for problem in (SelectProblem(tuple(tasks), cands, k=len(blocks) + trial % 2),
                        SelectProblem(tuple(tasks), cands, budget=sum(c.cost for c in cands))):
            solution = _solver("beam").solve(problem, seed=0)
            assert solution.objective == pytest.approx(_best_selection(problem))
            assert _canon(solution.groups) == _canon(blocks)


def test_beam_with_one_group_takes_the_best_full_candidate():
    tasks = ("a", "b", "c")
    cands = (Candidate(("a", "b", "c"), {"a": 1.0, "b": 1.0, "c": 1.0}),
             Candidate(("a", "b", "c"), {"a": 2.0, "b": 2.0, "c": 2.0}),  # repeated group: the last one counts
             Candidate(("a", "b"), {"a": 9.0, "b": 9.0}), Candidate(("c",), {"c": 9.0}))
    solution = _solver("beam").solve(SelectProblem(tasks, cands, k=1), seed=0)
    assert solution.groups == (("a", "b", "c"),) and solution.objective == 6.0
    solution = _solver("beam").solve(SelectProblem(tasks, cands, k=2), seed=0)
    assert _canon(solution.groups) == (("a", "b"), ("c",)) and solution.objective == 27.0


def test_beam_is_suboptimal_on_the_documented_example():
    tasks = ("a", "b", "c", "d")
    cands = [Candidate(("a", "b"), {"a": 10.0, "b": 10.0}), Candidate(("c", "d"), {"c": 10.0, "d": 10.0})]
    cands += [Candidate(g, {t: 0.0 for t in g}) for r in (3, 4) for g in itertools.combinations(tasks, r)]
    problem = SelectProblem(tasks, tuple(cands), k=2)
    assert _best_selection(problem) == 40.0
    assert _solver("beam").solve(problem, seed=0).objective == 20.0


def test_beam_falls_back_to_the_greedy_cover():
    tasks = ("a", "b", "c", "d")
    cands = [Candidate(g, {t: 1.0 for t in g}, 1.6) for g in itertools.combinations(tasks, 3)]
    cands += [Candidate(("a", "b"), {"a": 0.0, "b": 0.0}, 1.0), Candidate(("c", "d"), {"c": 0.0, "d": 0.0}, 1.0)]
    problem = SelectProblem(tasks, tuple(cands), budget=2.0)
    solution = _solver("beam[beams=4]").solve(problem, seed=0)  # the 4 seeds are the triples: none can finish
    assert solution.info["fallback"] and solution.notes
    assert _canon(solution.groups) == (("a", "b"), ("c", "d"))
    with pytest.raises(Unsupported):
        _solver("beam").solve(SelectProblem(tasks, tuple(cands), budget=1.7), seed=0)


def test_beam_is_deterministic_and_ignores_candidate_order():
    problem = _random_select(6, seed=11, k=3, n_cands=15)
    reordered = SelectProblem(problem.tasks, tuple(reversed(problem.candidates)), k=3)
    first = _solver("beam").solve(problem, seed=0)
    assert first.groups == _solver("beam").solve(problem, seed=5).groups == \
        _solver("beam").solve(reordered, seed=0).groups


def test_registered():
    solvers = registry.components("solver")
    assert solvers["beam"].problems == ("select",)
    assert solvers["local_search"].problems == solvers["random_search"].problems == ("partition",)
    assert not any(solvers[s].exact for s in ("beam", "local_search", "random_search"))
