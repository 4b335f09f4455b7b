"""Data-divergence features + quadratic ridge + SDP clustering (tabular-divergence-features, Table 3).

As ``divergence_beam``, but the predicted pairwise gains form an affinity matrix clustered into exactly k groups by
the SDP relaxation of Grad-TAE (Appendix A.6).
"""

from __future__ import annotations

from bench.compose import Composed


class DivergenceSdp(Composed):
    name = "divergence_sdp"
    version = "1"
    defaults = {**Composed.defaults, "signal": "divergence", "predictor": "quadratic_ridge",
                "problem": "partition", "solver": "sdp"}
