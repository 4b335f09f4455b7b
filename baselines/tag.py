"""TAG (Fifty et al. 2021): lookahead inter-task affinity from one MTL training + network selection.

Signal ``tag`` (the lookahead of the shared parameters on task j, the relative loss change of task i, averaged over
training); a member's score in a group is the mean affinity onto it from the other members, singletons are
forbidden (the reference notebook's ``-1e6`` sentinel), and the best at most k groups are chosen exactly (the
reference's exhaustive search; here ``dp``); groups may overlap.
"""

from __future__ import annotations

from bench.compose import Composed


class Tag(Composed):
    name = "tag"
    version = "1"
    defaults = {**Composed.defaults, "signal": "tag"}
