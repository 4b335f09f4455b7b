"""Linear surrogate (Li, Nguyen, Zhang, TMLR'23): a per-task linear model of the gain on group membership, fitted
on ``n_train`` sampled groups (predictor ``surrogate``, :mod:`bench.predictors.surrogate`), then a grouping.

``selection`` says how the surrogate becomes a grouping:

- ``sources`` (default; the paper's use, and the "Linear Surrogate"/"Surrogate" rows of transfer-gain-mip Tables
  2, 4 and 5, which are independent of the split count): for every target task ``i`` the sources ``j`` whose
  relevance ``w_i[j]`` exceeds ``threshold`` (default 0: every source predicted to raise ``i``'s gain) join it,
  giving the group ``{i} + sources``; the chosen groups are these ``n`` groups (duplicates once). Li et al. train
  target ``i`` with its sources and report ``i`` on that model; here, as for every network-selection method of
  the harness, each task is served by the chosen group holding it that is best on validation (``i``'s own group is
  among them, so it is served at least as well on validation). ``n_groups`` is ignored (``uses_splits`` is False).
- ``network``: network selection of at most ``k`` groups by the predicted gains (exact, solver ``dp``), one grouping
  per split count: the surrogate as a gain predictor composed like the other predictors.

A target with no source above the threshold keeps its single-task model (the group ``{i}``).
"""

from __future__ import annotations

import math

from bench.compose import Composed
from bench.errors import UsageError
from bench.types import Grouping

SELECTIONS = ("sources", "network")


class Surrogate(Composed):
    name = "surrogate"
    version = "2"
    defaults = {**Composed.defaults, "predictor": "surrogate", "n_train": 10, "selection": "sources",
                "threshold": 0.0}
    test_parameters = {"n_train": 5}

    @property
    def uses_splits(self) -> bool:  # type: ignore[override]
        return self.selection == "network"

    def check(self) -> None:
        if self.selection not in SELECTIONS:
            raise UsageError(f"{self.id}: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise UsageError(f"{self.id}: threshold must be a finite number, got {self.threshold!r}")
        super().check()

    def solve(self, model, n_groups, ctx):
        if self.selection == "network":
            return super().solve(model, n_groups, ctx)
        predictor = model.predictor
        if not hasattr(predictor, "relevance"):
            raise UsageError(f"{self.id}: selection=sources needs a predictor with per-source relevance scores "
                             f"(surrogate), got {predictor.id}")
        return Grouping.of(((target, *(t for t, w in predictor.relevance(target).items() if w > self.threshold))
                            for target in ctx.tasks), "select")  # duplicates once
