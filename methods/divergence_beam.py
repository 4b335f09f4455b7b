"""Data-divergence features + quadratic ridge + beam search (tabular-divergence-features, Section 4.3.3).

Signal ``divergence`` (Section 3.1: dataset-size, distance, energy, mean-gap, cosine, PCA, rank and KNN features of
every pair of tasks, from the data alone), predictor ``quadratic_ridge`` (Eq. 14, trained on a quarter of the pairs,
groups by Eq. 15 averaging), then MTG-Net's beam search over the candidate groups (Appendix A.6). The candidates are
the groups a beam search over the predicted gains grows (``pool=beam``, :func:`bench.compose.beam_pool`; the paper's
26K to 52K candidate groups on School, Chemical and Landmine), every group where all of them fit.
"""

from __future__ import annotations

from bench.compose import Composed


class DivergenceBeam(Composed):
    name = "divergence_beam"
    version = "1"
    defaults = {**Composed.defaults, "signal": "divergence", "predictor": "quadratic_ridge", "solver": "beam",
                "pool": "beam"}
