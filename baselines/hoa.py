"""HOA (Standley et al. 2020): every pair trained, larger groups by the higher-order approximation, exact selection.

Predictor ``hoa`` (the measured gains of the pairs; a larger group's member gain is the average of its pair gains
with the other members), exact network selection of at most k groups. Costs n(n-1)/2 pair trainings plus the n
single-task models.

Solver: ``select_highs`` (version 3; a MILP, proved optimal). HOA's own search, branch and bound, reaches the same
optimum (``hoa[solver=branch_and_bound]``; the tests check the two agree) but its time grows exponentially with the
tasks and groups (transfer-gain-mip Table 6, "BB"): on MIMIC-III's 3,185 listed groups of 27 tasks it did not end
within minutes, where the MILP takes seconds to a minute and a half. Version 2 used branch and bound.

Objective (``utility=improvement``): HOA's ``network_selection`` compares solutions by the sum over tasks of their
losses, a singleton scoring its single-task loss (implementations.md 2.2). A member's utility is therefore its
predicted gain times its single-task validation value, the fall of its loss in the loss's units; the sum of
relative gains (``utility=gain``) would weight each task by ``1 / m_S`` and can choose other groups.

Budget: Standley et al. count inference cost, a half-size single-task network 0.5 and a full network 1
(implementations.md 2.2). Here the budget is the split count, at most k groups with a singleton counting as one
group, so that every method of a table answers the same question (README, "Selection semantics"). The
cost form is the ``select`` problem's ``budget`` with candidate costs (``bench group --budget``); the method does
not expose it.
"""

from __future__ import annotations

from bench.compose import Composed


class Hoa(Composed):
    name = "hoa"
    version = "3"
    defaults = {**Composed.defaults, "predictor": "hoa", "solver": "select_highs", "utility": "improvement"}
