"""Grouping solvers: one module per solver, discovered by the registry (kind ``solver``).

The problems, the solution type and the solver base class live in :mod:`bench.solvers.base`; shared subset
machinery in :mod:`bench.solvers._subsets`. ``python -m bench list solvers`` lists them with the problems they
solve and whether they are exact.
"""

from bench.solvers.base import (
    Candidate,
    CallableScore,
    GroupScore,
    InvalidSolution,
    MIQPProblem,
    PairwiseScore,
    PartitionProblem,
    SelectProblem,
    Solution,
    Solver,
    TableScore,
)

__all__ = [
    "Candidate", "CallableScore", "GroupScore", "InvalidSolution", "MIQPProblem", "PairwiseScore",
    "PartitionProblem", "SelectProblem", "Solution", "Solver", "TableScore",
]
