"""HOA (Standley et al. 2020): every pair trained, larger groups by the higher-order approximation, branch and bound.

Predictor ``hoa`` (the measured gains of the pairs; a larger group's member gain is the average of its pair gains
with the other members), network selection of at most k groups by HOA's branch and bound. Costs n(n-1)/2 pair
trainings plus the n single-task models.
"""

from __future__ import annotations

from bench.compose import Composed


class Hoa(Composed):
    name = "hoa"
    version = "1"
    defaults = {**Composed.defaults, "predictor": "hoa", "solver": "branch_and_bound"}
