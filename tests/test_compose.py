"""Methods as compositions of signal, predictor and solver; a user's own signal and predictor are one file each."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench import registry
from bench.compose import Composed
from bench.errors import UsageError
from bench.runner import Cell, Settings, run_cell

DATASET = "synthetic[clusters=[2,2],noise=0.3]"


def _run(method: str, tmp_path, splits=(2,)) -> list[dict]:
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    records = run_cell(Cell(DATASET, method, 0, splits), settings)
    assert all(r["status"] == "ok" for r in records), records
    return records


@pytest.mark.parametrize("problem, solver", [("select", "dp"), ("select", "branch_and_bound"),
                                             ("partition", "dp"), ("partition", "sdp"), ("miqp", "dp"),
                                             ("miqp-partition", "dp")])
def test_a_perfect_signal_recovers_the_planted_clusters_through_every_problem(plugins, tmp_path, problem, solver):
    [record] = _run(f"tag[signal=planted,problem={problem},solver={solver}]", tmp_path)
    assert sorted(record["groups"]) == [["t0", "t1"], ["t2", "t3"]]
    assert record["solved_by"] == [[solver, "heuristic" if solver == "sdp" else "optimal"]]
    assert record["semantics"] == ("partition" if "partition" in problem else "select")
    assert record["n_trainings"] == 0  # a signal without trainings; the chosen groups are the runner's


@pytest.mark.parametrize("problem", ["partition", "miqp", "miqp-partition"])
def test_max_size_bounds_the_groups_of_every_problem(plugins, tmp_path, problem):
    """Planted clusters of 3 and 1 tasks: unbounded, a group of 3 or more is chosen; with ``max_size=2`` two pairs."""
    def run(method, where):
        settings = Settings(str(tmp_path / where), str(tmp_path / "cache"), profile="smoke")
        [record] = run_cell(Cell("synthetic[clusters=[3,1],noise=0.3]", method, 0, (2,)), settings)
        assert record["status"] == "ok", record
        return sorted(len(g) for g in record["groups"])

    # singletons=zero: a singleton is allowed in a partition (the MIQP reads the matrix as it is)
    assert max(run(f"tag[signal=planted,problem={problem},solver=dp,singletons=zero]", "free")) >= 3
    assert run(f"tag[signal=planted,problem={problem},solver=dp,singletons=zero,max_size=2]", "bounded") == [2, 2]


@pytest.mark.parametrize("singletons, sizes", [("forbid", [2, 2, 2]), ("zero", [1, 2, 3]), ("diagonal", [1, 2, 3])])
def test_a_partition_scores_singletons_as_the_singletons_parameter_says(plugins, tmp_path, singletons, sizes):
    """Two planted clusters of 3, k = 3, an exact solver: forbidding singletons (TAG's sentinel) gives three pairs;
    a singleton worth 0 or the diagonal (1) gives the cluster of 3, a pair and a singleton."""
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    method = f"tag[signal=planted,problem=partition,solver=dp,singletons={singletons}]"
    [record] = run_cell(Cell("synthetic[clusters=[3,3],noise=0.3]", method, 0, (3,)), settings)
    assert record["status"] == "ok", record
    assert sorted(len(g) for g in record["groups"]) == sizes


def test_a_predictor_composition_counts_its_trainings(plugins, tmp_path):
    [record] = _run("surrogate[predictor=pair_mean,selection=network]", tmp_path)
    assert record["n_trainings"] == 4 + 6  # single-task models + every pair
    assert record["t_fit_s"] > 0 and record["t_signal_s"] >= 0 and record["t_solve_s"] >= 0


def test_candidates_score_members_by_the_tag_aggregation():
    from bench.compose import Fitted
    from bench.signals.base import Affinity

    S = np.array([[9.0, 1.0, 2.0], [3.0, 9.0, 4.0], [5.0, 6.0, 9.0]])
    fitted = Fitted(Affinity(("a", "b", "c"), S, "x"), None)
    tag = registry.create_method("tag")
    by_group = {c.group: c.utility for c in tag.candidates(fitted, ("a", "b", "c"))}
    assert ("a",) not in by_group  # singletons forbidden, as TAG's -1e6 sentinel
    assert by_group[("a", "b", "c")] == {"a": 1.5, "b": 3.5, "c": 5.5}
    diag = registry.create_method("tag[singletons=diagonal]")
    assert {c.group: c.utility for c in diag.candidates(fitted, ("a", "b", "c"))}[("b",)] == {"b": 9.0}


def test_bad_compositions_fail_with_clear_errors(plugins):
    with pytest.raises(UsageError, match="max_size must be a positive"):
        registry.create_method("tag[signal=planted,max_size=0]").check()
    with pytest.raises(UsageError, match="solves partition"):
        registry.create_method("sca[problem=select]").check()
    with pytest.raises(UsageError, match="problem must be one of"):
        registry.create_method("tag[problem=overlap]").check()
    with pytest.raises(UsageError, match="needs a signal, a predictor or both"):
        registry.create_method("tag[signal=none]").check()
    with pytest.raises(UsageError, match="unknown signal"):
        registry.create_method("tag[signal=tagg]").check()


def test_the_identity_names_the_parts_versions():
    identity = registry.create_method("tag").identity()
    assert identity["parts"]["signal"]["name"] == "tag"
    assert identity["parts"]["solver"]["name"] == "dp"


def test_every_composed_method_is_valid_as_registered():
    composed = [cls for kind in ("method", "baseline") for cls in registry.components(kind).values()
                if issubclass(cls, Composed)]
    assert len(composed) >= 13
    for cls in composed:
        cls().check()


def test_signals_are_cached_with_their_original_cost_and_trainings(plugins, tmp_path):
    settings = Settings(str(tmp_path / "out1"), str(tmp_path / "cache"), profile="smoke")
    method = "tag[signal=planted[train_pair=true],problem=partition]"
    [first] = run_cell(Cell(DATASET, method, 0, (2,)), settings)
    again = Settings(str(tmp_path / "out2"), str(tmp_path / "cache"), profile="smoke")
    [second] = run_cell(Cell(DATASET, method, 0, (2,)), again)
    assert first["status"] == second["status"] == "ok"
    assert first["n_trainings"] == second["n_trainings"] == 1  # the pair the signal trained, replayed on a hit
    assert second["t_signal_s"] == pytest.approx(first["t_signal_s"], rel=0.5, abs=0.05)
    assert second["cache_hits"] > first["cache_hits"]
    assert first["groups"] == second["groups"]


def test_surrogate_selects_each_targets_sources_above_the_threshold(plugins):
    from types import SimpleNamespace

    from bench.compose import Fitted

    predictor = registry.create("predictor", "surrogate")
    predictor.tasks_ = ("a", "b", "c", "d")
    predictor.index_ = {t: i for i, t in enumerate(predictor.tasks_)}
    # row i: relevance of every source j to target i (the diagonal is never read)
    predictor.coef_ = np.array([[9.0, 0.2, -0.1, 0.0],
                                [0.3, 9.0, 0.05, -1.0],
                                [-0.2, -0.3, 9.0, -0.4],
                                [0.1, 0.1, 0.1, 9.0]])
    ctx = SimpleNamespace(tasks=predictor.tasks_)
    fitted = Fitted(None, predictor)
    method = registry.create_method("surrogate")
    assert method.uses_splits is False
    grouping = method.solve(fitted, None, ctx)
    assert set(grouping.groups) == {("a", "b"), ("a", "b", "c"), ("c",), ("a", "b", "c", "d")}
    assert grouping.semantics == "select"
    strict = registry.create_method("surrogate[threshold=0.15]").solve(fitted, None, ctx)
    assert set(strict.groups) == {("a", "b"), ("c",), ("d",)}
    assert registry.create_method("surrogate[selection=network]").uses_splits is True


def test_surrogate_runs_once_without_splits_and_per_split_as_network_selection(plugins, tmp_path):
    [record] = _run("surrogate", tmp_path, splits=(2, 3))
    assert record["uses_splits"] is False and record["n_groups"] is None
    assert all(t in {m for g in record["groups"] for m in g} for t in ("t0", "t1", "t2", "t3"))
    records = _run("surrogate[selection=network]", tmp_path, splits=(2, 3))
    assert [r["n_groups"] for r in records] == [2, 3]
    with pytest.raises(UsageError, match="selection must be one of sources, network"):
        registry.create_method("surrogate[selection=pairs]").check()
    with pytest.raises(UsageError, match="threshold must be a finite number"):
        registry.create_method("surrogate[threshold=inf]").check()


@pytest.mark.parametrize("method, bound", [("hoa", "max_size=6 or less"), ("tag", "max_size=6 or less")])
def test_too_many_candidates_are_refused_before_any_training(method, bound):
    """Network selection over every group of 20 tasks (over 2^16 candidates) stops at once, naming a bound that
    fits; no signal or training runs first (the trainer would fail)."""
    from bench.errors import Unsupported
    from bench.method import Context
    from bench.types import Task, make_group

    class Problem:
        task_names = tuple(f"t{i:02d}" for i in range(20))
        tasks = tuple(Task(t) for t in task_names)

        def check_group(self, group):
            return make_group(group)

        def listed_groups(self):
            return None

    def no_training(group, seed):
        raise AssertionError(f"trained {group}")

    with pytest.raises(Unsupported, match=f"more than 65536 .* bound them with {bound}"):
        registry.create_method(method).collect(Context(Problem(), 0, no_training, signals=no_training))


def _slow_beam_pool(M, lo, hi, width):
    """An independent reading of the beam pool: frozensets, sorted() with the score, every expansion listed."""
    n = len(M)

    def score(g):
        return sum(M[i, j] for i in g for j in g if i != j) / (len(g) - 1)

    pool = [frozenset([i]) for i in range(n)] if lo <= 1 else []
    beam = sorted((frozenset(p) for p in itertools.combinations(range(n), 2)), key=score, reverse=True)[:width]
    pool += beam if lo <= 2 else []
    for s in range(3, hi + 1):
        grown = {g | {t} for g in beam for t in range(n) if t not in g}
        beam = sorted(grown, key=score, reverse=True)[:width]
        pool += beam if s >= lo else []
    return pool


@pytest.mark.parametrize("lo, hi", [(1, 9), (2, 9), (3, 6)])
def test_the_beam_pool_keeps_the_best_expansions_at_every_size(lo, hi):
    from bench.compose import beam_pool

    M = np.random.default_rng(4).normal(size=(9, 9))  # continuous: no ties
    levels = hi - max(lo, 2) + 1
    size = (9 if lo <= 1 else 0) + 5 * levels
    got = beam_pool(M, lo, hi, size)
    assert len(got) == len(set(got)) <= size  # the largest sizes hold fewer than 5 groups
    assert {frozenset(g) for g in got} == set(_slow_beam_pool(M, lo, hi, width=5))


def test_the_beam_pool_is_every_group_when_they_fit():
    from bench.compose import beam_pool

    M = np.random.default_rng(0).normal(size=(5, 5))
    assert beam_pool(M, 1, 5, 31) == [c for s in range(1, 6) for c in itertools.combinations(range(5), s)]
    assert len(beam_pool(M, 1, 5, 30)) <= 30


def test_network_selection_over_a_beam_pool_runs_on_many_tasks():
    """20 tasks (over 2^16 groups): with ``pool=beam`` no check refuses them, the candidates are at most
    ``pool_size`` groups with TAG's utilities, the all-task group among them, and the beam solver covers the
    tasks with k groups."""
    from bench.compose import Fitted
    from bench.signals.base import Affinity
    from bench.solvers.base import SelectProblem

    tasks = tuple(f"t{i:02d}" for i in range(20))
    S = np.random.default_rng(1).normal(size=(20, 20))
    method = registry.create_method("tag[pool=beam,pool_size=300,solver=beam]")
    method.check()
    assert method._sizes(20, False) == (2, 20)
    candidates = method.candidates(Fitted(Affinity(tasks, S, "x"), None), tasks)
    assert len(candidates) <= 300 and any(len(c.group) == 20 for c in candidates)
    some = candidates[7]
    i = tasks.index(some.group[0])
    others = [tasks.index(t) for t in some.group[1:]]
    assert some.utility[some.group[0]] == pytest.approx(np.mean([S[i, j] for j in others]))
    chosen = registry.create("solver", "beam").solve(SelectProblem(tasks, tuple(candidates), 3), 0).groups
    assert len(chosen) <= 3 and set().union(*chosen) == set(tasks)
    with pytest.raises(UsageError, match="pool must be one of all, beam, got 'some'"):
        registry.create_method("tag[pool=some]").check()


def test_each_split_count_counts_its_own_solve(plugins, tmp_path):
    """The trainings a split count consumes are its signal's, its fit's and its own solve's: the same whether the
    cell also ran other split counts (their solves' trainings are not added to it)."""
    method = "task_features_ls[iterations=4,initial_partitions=2]"
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    both = {r["n_groups"]: r for r in run_cell(Cell(DATASET, method, 0, (2, 3)), settings)}
    alone = run_cell(Cell(DATASET, method, 0, (3,)), Settings(str(tmp_path / "out3"), str(tmp_path / "cache"),
                                                               profile="smoke"))
    assert all(r["status"] == "ok" for r in [*both.values(), *alone]), both
    assert both[3]["n_trainings"] == alone[0]["n_trainings"]
    assert both[3]["n_trainings_solve"] == alone[0]["n_trainings_solve"]
    # the signal's 4 single-task and 6 pair trainings are shared; a solve counts only the groups it adds (its
    # single-task models and the pairs it asks for again are the signal's)
    for record in both.values():
        assert record["n_trainings"] - record["n_trainings_solve"] == 4 + 6


class _FixedGains:
    """A fitted predictor stub: fixed per-group member gains."""

    def __init__(self, gains):
        self.gains = gains

    def predict(self, group):
        return dict(self.gains[group])

    def predict_many(self, groups):
        return [self.predict(g) for g in groups]

    def selection_gains(self, groups):  # no measured gains: the predictions
        return self.predict_many(groups)


def _best_selection(candidates, tasks, k):
    """Exhaustive network selection: at most k candidates covering every task, each task served by its best."""
    best = None
    for r in range(1, k + 1):
        for chosen in itertools.combinations(candidates, r):
            if set().union(*(c.group for c in chosen)) != set(tasks):
                continue
            value = sum(max(c.utility[t] for c in chosen if t in c.group) for t in tasks)
            if best is None or value > best[0] + 1e-12:
                best = (value, {c.group for c in chosen})
    return best[1]


def test_hoa_minimises_the_sum_of_losses_not_of_relative_gains():
    """HOA's utilities are predicted gains times the single-task losses, so its selection is the one with the
    lowest summed loss; on these draws the sum of relative gains would choose other groups."""
    from bench.compose import Fitted
    from bench.solvers.base import SelectProblem

    tasks = ("a", "b", "c", "d")
    groups = [g for r in (1, 2, 3, 4) for g in itertools.combinations(tasks, r)]
    hoa, plain = registry.create_method("hoa[solver=dp]"), registry.create_method("hoa[solver=dp,utility=gain]")
    assert hoa.utility == "improvement"
    differ = 0
    for seed in range(20):
        gen = np.random.default_rng(seed)
        gains = {g: {t: 0.0 if len(g) == 1 else float(gen.normal(0.1, 0.3)) for t in g} for g in groups}
        scale = {t: float(s) for t, s in zip(tasks, gen.uniform(0.1, 10.0, size=4))}
        fitted = Fitted(None, _FixedGains(gains), [], scale)
        candidates = hoa.candidates(fitted, tasks)
        assert candidates[5].utility == {t: gains[candidates[5].group][t] * scale[t] for t in candidates[5].group}
        chosen = set(registry.create("solver", "dp").solve(SelectProblem(tasks, tuple(candidates), 2), 0).groups)
        assert chosen == _best_selection(candidates, tasks, 2)
        relative = set(registry.create("solver", "dp").solve(
            SelectProblem(tasks, tuple(plain.candidates(fitted, tasks)), 2), 0).groups)
        differ += relative != chosen
    assert differ > 0
    with pytest.raises(UsageError, match="utility=improvement scales predicted gains and needs a predictor"):
        registry.create_method("tag[utility=improvement]").check()


def test_mtg_net_serves_each_task_by_its_highest_predicted_gain():
    """MTG-Net's evaluation takes each task from the chosen group with its highest predicted gain: the grouping
    names that group (ties: the first in canonical order), and the record's method serves by it."""
    from bench.compose import served_by_utility
    from bench.solvers.base import Candidate

    candidates = [Candidate(("a", "b"), {"a": 0.3, "b": 0.1}), Candidate(("b", "c"), {"b": 0.4, "c": 0.2}),
                  Candidate(("a", "c"), {"a": 0.3, "c": 0.5}), Candidate(("a", "b"), {"a": 0.1, "b": 0.1})]
    served = served_by_utility([("b", "c"), ("a", "b"), ("a", "c")], candidates)
    # a: 0.1 in a+b (its last candidate counts) against 0.3 in a+c; b: 0.4 in b+c; c: 0.5 in a+c
    assert served == {"a": ("a", "c"), "b": ("b", "c"), "c": ("a", "c")}
    assert served_by_utility([("a", "c"), ("a", "b")], candidates[:2] + candidates[2:3])["a"] == ("a", "b")
    method = registry.create_method("mtg_net")
    assert method.serve == "predicted" and method.serve_by == "predicted"
    assert registry.create_method("hoa").serve_by == "val"
    with pytest.raises(UsageError, match="serve=predicted needs problem=select"):
        registry.create_method("tag[serve=predicted,problem=partition,solver=sdp]").check()


def test_on_eighteen_tasks_divergence_beam_runs_and_hoa_is_skipped_before_training(tmp_path):
    """Over 2^16 groups: the tabular-divergence method selects among its beam-grown pool, as its paper does on
    its 29- to 139-task data sets; HOA, which enumerates every group, is recorded as skipped, naming the bound."""
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    dataset = "synthetic[clusters=[6,6,6]]"
    [beam] = run_cell(Cell(dataset, "divergence_beam", 0, (2,)), settings)
    assert beam["status"] == "ok" and len(beam["groups"]) <= 2 and beam["n_trainings"] > 0
    [hoa] = run_cell(Cell(dataset, "hoa", 0, (2,)), settings)
    assert hoa["status"] == "skipped" and "bound them with max_size=" in hoa["reason"]
