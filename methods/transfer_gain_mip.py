"""transfer-gain-mip (Principled task grouping): transfer gain collected in one MTL training + the MIQP.

Signal ``transfer_gain`` (Definition 3, Eq. 3-7: the effect of a joint update on {i, j} against an update on {j}
alone, averaged over training), then Formulation 8 with ``m = k`` labelled, possibly overlapping groups, solved as
the paper does through its Formulation 9 (Gurobi, NonConvex; HiGHS on the exact linearisation where Gurobi or its
licence is missing, with a note in the solution). The sampling strategy and lazy collection are parameters of the
signal: ``transfer_gain_mip[signal=transfer_gain[sample=true,every=10]]``.
"""

from __future__ import annotations

from bench.compose import Composed


class TransferGainMip(Composed):
    name = "transfer_gain_mip"
    version = "1"
    defaults = {**Composed.defaults, "signal": "transfer_gain", "problem": "miqp", "solver": "miqp_gurobi"}
    test_parameters = {"solver": "dp"}
