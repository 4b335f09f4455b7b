"""Data-divergence features + quadratic ridge + beam search (tabular-divergence-features, Section 4.3.3).

Signal ``divergence`` (Section 3.1: dataset-size, distance, energy, mean-gap, cosine, PCA, rank and KNN features of
every pair of tasks, from the data alone), predictor ``quadratic_ridge`` (Eq. 14, trained on a quarter of the pairs,
groups by Eq. 15 averaging), then MTG-Net's beam search over the candidate groups (Appendix A.6). The candidates are
the groups a beam search over the predicted gains grows (``pool=beam``, :func:`bench.compose.beam_pool`), every
group where all of them fit. ``pool_size`` is the paper's 52K, its School and Landmine size (Section 4.3.3: "School:
52K, Chemical: 26K, Landmine: 52K candidate groups"); Chemical's is ``divergence_beam[pool_size=26000]``.
"""

from __future__ import annotations

from bench.compose import Composed


class DivergenceBeam(Composed):
    name = "divergence_beam"
    version = "2"
    defaults = {**Composed.defaults, "signal": "divergence", "predictor": "quadratic_ridge", "solver": "beam",
                "pool": "beam", "pool_size": 52_000}
