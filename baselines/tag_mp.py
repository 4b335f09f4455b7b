"""TAG-MP (transfer-gain-mip Section C.7): TAG's affinity with the MIQP of Formulation 8 instead of TAG's search."""

from __future__ import annotations

from bench.compose import Composed


class TagMp(Composed):
    name = "tag_mp"
    version = "1"
    defaults = {**Composed.defaults, "signal": "tag", "problem": "miqp", "solver": "miqp_gurobi"}
    test_parameters = {"solver": "dp"}
