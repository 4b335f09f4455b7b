"""Conformance tests generated from the solver registry: a solver added as one file gets these checks.

Every solver: declares problems and exactness and a docstring; its id round-trips and it pickles; on a small
instance of every problem it solves it returns a valid grouping (checked by the base class), the objective
recomputed from the problem, a known status, the same answer twice under a seed, and it leaves its input alone.
Exact solvers reach the exhaustive optimum with status ``optimal``; heuristics say ``heuristic`` and never claim
more than the optimum.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from bench import registry
from bench.solvers.base import (
    STATUSES,
    MIQPProblem,
    PairwiseScore,
    PartitionProblem,
    SelectProblem,
)

SOLVERS = sorted(registry.components("solver"))


def _configured(name):
    cls = registry.components("solver")[name]
    return cls(**cls.test_parameters)


def _instances():
    rng = np.random.default_rng(7)
    tasks = tuple(f"t{i}" for i in range(6))
    S = rng.normal(size=(6, 6)) + 1.5 * np.kron(np.eye(3), np.ones((2, 2)))
    score = PairwiseScore(S, tasks)
    cands = score.candidates()
    return {
        "select": SelectProblem(tasks, cands, 3),
        "partition": PartitionProblem(tasks, 3, score),
        "miqp": MIQPProblem(tasks[:5], S[:5, :5], 3, np.ones((5, 3)), np.array([3.0, 4.0, 5.0])),
    }


INSTANCES = _instances()
CASES = [(name, kind) for name in SOLVERS for kind in registry.components("solver")[name].problems]


@pytest.mark.parametrize("name", SOLVERS)
def test_declarations_id_and_pickle(name):
    cls = registry.components("solver")[name]
    assert cls.problems and set(cls.problems) <= {"select", "partition", "miqp"}
    assert isinstance(cls.exact, bool)
    assert (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip(), "no docstring to list it by"
    solver = _configured(name)
    assert registry.create("solver", solver.id) == solver
    assert pickle.loads(pickle.dumps(solver)) == solver


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_valid_deterministic_and_honest(name, kind):
    problem = INSTANCES[kind]
    before = pickle.dumps(problem)
    solver = _configured(name)
    first = solver.solve(problem, seed=3)
    second = solver.solve(problem, seed=3)
    assert pickle.dumps(problem) == before, "the solver changed its input"
    assert first.groups == second.groups and first.objective == second.objective
    assert first.status in STATUSES and first.solver == solver.id and first.problem == kind
    assert first.solve_time_s >= 0
    problem.check(first.groups)
    assert first.objective == pytest.approx(problem.objective(first.groups))
    optimum = registry.create("solver", "exhaustive").solve(problem).objective
    if solver.exact:
        assert first.status == "optimal" and first.objective == pytest.approx(optimum, abs=1e-7)
    else:
        assert first.status == "heuristic" and first.objective <= optimum + 1e-9
