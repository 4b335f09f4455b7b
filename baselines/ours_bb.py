"""Ours-BB (transfer-gain-mip Section C.7): the transfer gain with the branch-and-bound network selection.

The same signal as ``transfer_gain_mip``; groups are chosen as TAG and HOA choose them (at most k, overlap
allowed, each task scored by the mean transfer gain onto it from its group's other members, singletons
forbidden), by HOA's branch and bound.
"""

from __future__ import annotations

from bench.compose import Composed


class OursBb(Composed):
    name = "ours_bb"
    version = "1"
    defaults = {**Composed.defaults, "signal": "transfer_gain", "solver": "branch_and_bound"}
