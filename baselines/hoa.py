"""HOA (Standley et al. 2020): every pair trained, larger groups by the higher-order approximation, branch and bound.

Predictor ``hoa`` (the measured gains of the pairs; a larger group's member gain is the average of its pair gains
with the other members), network selection of at most k groups by HOA's branch and bound. Costs n(n-1)/2 pair
trainings plus the n single-task models.

Objective (``utility=improvement``): HOA's ``network_selection`` compares solutions by the sum over tasks of their
losses, a singleton scoring its single-task loss (implementations.md 2.2). A member's utility is therefore its
predicted gain times its single-task validation value, the fall of its loss in the loss's units; the sum of
relative gains (``utility=gain``) would weight each task by ``1 / m_S`` and can choose other groups.
"""

from __future__ import annotations

from bench.compose import Composed


class Hoa(Composed):
    name = "hoa"
    version = "2"
    defaults = {**Composed.defaults, "predictor": "hoa", "solver": "branch_and_bound", "utility": "improvement"}
