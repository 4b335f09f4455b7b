"""Linear surrogate (Li et al. 2023): ridge regression of each task's gain on group membership + selection.

Predictor ``surrogate`` fitted on ``n_train`` sampled groups, then network selection of at most k groups by the
predicted gains (exact, ``dp``).
"""

from __future__ import annotations

from bench.compose import Composed


class Surrogate(Composed):
    name = "surrogate"
    version = "1"
    defaults = {**Composed.defaults, "predictor": "surrogate", "n_train": 10}
    test_parameters = {"n_train": 5}
