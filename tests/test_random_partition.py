"""The Random baseline's sampler: uniform partitions into exactly k non-empty blocks."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import bench  # noqa: F401  (installs the plugin finder)
from bench.errors import Unsupported
from bench.solvers.random import random_partition, stirling2


def _canonical(blocks):
    return tuple(sorted(tuple(sorted(b)) for b in blocks))


def _all_partitions(items):
    """Every set partition of ``items`` (reference enumeration)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _all_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]
        yield [[first]] + part


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n), st.integers(0, 2**32 - 1))))
def test_exactly_k_disjoint_nonempty_blocks(args):
    n, k, seed = args
    items = [f"t{i}" for i in range(n)]
    blocks = random_partition(items, k, np.random.default_rng(seed))
    assert len(blocks) == k
    assert all(len(b) >= 1 for b in blocks)
    flat = [t for b in blocks for t in b]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))


def test_k_one_and_k_n():
    gen = np.random.default_rng(0)
    items = ["a", "b", "c", "d"]
    assert _canonical(random_partition(items, 1, gen)) == (("a", "b", "c", "d"),)
    assert _canonical(random_partition(items, 4, gen)) == (("a",), ("b",), ("c",), ("d",))
    assert random_partition(iter(["x"]), 1, gen) == [["x"]]  # any iterable


@pytest.mark.parametrize("n, k", [(5, 3), (4, 2), (6, 4)])
def test_uniform_over_partitions(n, k):
    items = list(range(n))
    everyone = {_canonical(p) for p in _all_partitions(items) if len(p) == k}
    assert len(everyone) == stirling2(n, k)
    draws = 20000
    gen = np.random.default_rng(20240611 + n * 10 + k)
    counts = collections.Counter(_canonical(random_partition(items, k, gen)) for _ in range(draws))
    assert set(counts) == everyone  # every partition is reachable, nothing else appears
    observed = [counts[p] for p in sorted(everyone)]
    expected = [draws / len(everyone)] * len(everyone)
    _, p_value = chisquare(observed, expected)
    assert p_value > 1e-4, (n, k, p_value, observed)


def test_chi_square_would_catch_a_biased_sampler():
    """The uniformity check has power: a naive sampler (each item into a random block) is rejected."""
    n, k, draws = 5, 3, 20000
    gen = np.random.default_rng(1)
    counts = collections.Counter()
    while sum(counts.values()) < draws:
        labels = gen.integers(k, size=n)
        if len(set(labels)) == k:
            counts[_canonical([[i for i in range(n) if labels[i] == b] for b in range(k)])] += 1
    everyone = sorted({_canonical(p) for p in _all_partitions(list(range(n))) if len(p) == k})
    observed = [counts[p] for p in everyone]
    # rejection sampling of surjective labellings IS uniform over partitions (each has k! labellings) ...
    assert chisquare(observed)[1] > 1e-4
    # ... whereas choosing the block sizes uniformly first is not
    counts = collections.Counter()
    sizes_of = collections.defaultdict(list)
    for p in everyone:
        sizes_of[tuple(sorted(len(b) for b in p))].append(p)
    shapes = sorted(sizes_of)
    for _ in range(draws):
        shape = shapes[gen.integers(len(shapes))]
        counts[sizes_of[shape][gen.integers(len(sizes_of[shape]))]] += 1
    assert chisquare([counts[p] for p in everyone])[1] < 1e-4


def test_seeded_draws_are_reproducible():
    a = [random_partition(range(7), 3, g) for g in [np.random.default_rng(5)] for _ in range(20)]
    b = [random_partition(range(7), 3, g) for g in [np.random.default_rng(5)] for _ in range(20)]
    assert a == b
    assert len({_canonical(p) for p in a}) > 1


@pytest.mark.parametrize("n, k", [(3, 0), (3, 4), (0, 0), (0, 1), (2, -1)])
def test_unsupported_k(n, k):
    with pytest.raises(Unsupported, match="cannot partition"):
        random_partition(list(range(n)), k, np.random.default_rng(0))


@pytest.mark.parametrize(
    "n, k, value",
    [(0, 0, 1), (1, 1, 1), (3, 0, 0), (3, 4, 0), (4, 2, 7), (5, 3, 25), (6, 3, 90), (7, 1, 1), (7, 7, 1),
     (10, 4, 34105), (10, 5, 42525), (12, 6, 1323652)],
)
def test_stirling2_known_values(n, k, value):
    assert stirling2(n, k) == value


def test_stirling2_sums_to_bell_numbers():
    bell = [1, 1, 2, 5, 15, 52, 203, 877, 4140]
    assert [sum(stirling2(n, k) for k in range(n + 1)) for n in range(9)] == bell


# ------------------------------------------------------------------ draw=groups: MTG-Net's random baseline


def _covers(problem, k, repeats, seed=0, **params):
    from bench import registry
    from bench.method import Context

    method = registry.create("baseline", "random").__class__(draw="groups", repeats=repeats, **params)
    ctx = Context(problem, seed, trainer=None)
    return method.covers(ctx, k, np.random.default_rng(seed))


def test_random_groups_are_uniform_over_the_covers_of_k_distinct_groups():
    """Three tasks, k = 2: every pair of distinct non-empty subsets that covers the tasks is equally likely."""
    from bench.runner import load_problem

    problem = load_problem("synthetic[clusters=[3]]", "smoke", None)
    draws = _covers(problem, 2, 3000)
    counts = collections.Counter(frozenset(g) for g in draws)
    subsets = [tuple(t for i, t in enumerate(problem.task_names) if m >> i & 1) for m in range(1, 8)]
    expected = {frozenset((a, b)) for a, b in itertools.combinations(subsets, 2)
                if set(a) | set(b) == set(problem.task_names)}
    assert set(counts) == expected and len(expected) == 12  # 6 with the whole set, 6 without
    assert chisquare(list(counts.values())).pvalue > 1e-3


def test_random_groups_of_a_partial_table_are_listed_and_cover(tmp_path):
    from bench.runner import Cell, Settings, load_problem, run_cell

    problem = load_problem("mimic27_tab", "smoke", None)
    listed = set(problem.listed_groups())
    for groups in _covers(problem, 2, 20):
        assert len(set(groups)) == 2 and set(groups) <= listed
        assert set().union(*groups) == set(problem.task_names)
    settings = Settings(str(tmp_path / "out"), str(tmp_path / "cache"), profile="smoke")
    records = run_cell(Cell("mimic27_tab", "random[draw=groups]", 0, (2, 3)), settings)
    assert [r["status"] for r in records] == ["ok", "ok"] and records[0]["semantics"] == "select"
    # every cover is in the record, each group a bitmask over the record's tasks
    from bench.runner import mask_group

    for record in records:
        covers = [[tuple(mask_group(m, record["tasks"])) for m in cover] for cover in record["grouping_masks"]]
        assert len(covers) == len(record["grouping_totals"]) == 10
        assert [list(g) for g in covers[0]] == record["groups"]
        assert all(set(cover) <= listed and set().union(*cover) == set(problem.task_names) for cover in covers)
    # the default (partitions) is a skip there: a partition's groups are mostly not listed
    (skipped,) = run_cell(Cell("mimic27_tab", "random", 0, (3,)), settings)
    assert skipped["status"] == "skipped"


def test_random_groups_give_up_after_max_draws():
    from bench.runner import load_problem

    problem = load_problem("synthetic[clusters=[10,10,10,10]]", "smoke", None)
    with pytest.raises(Unsupported, match="in 50 draws"):
        _covers(problem, 2, 1, max_draws=50)
