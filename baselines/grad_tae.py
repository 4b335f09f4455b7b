"""Grad-TAE (Li et al. 2024): task affinity from linearised fine-tuning on random subsets + SDP clustering.

Signal ``grad_tae`` (projected per-sample gradients at the all-task model, one linear model per sampled subset, the
affinity of i to j as i's normalised estimated performance over the subsets containing j), clustered into exactly
k groups by the SDP relaxation (``ScalableMTL/run_clustering.py``).
"""

from __future__ import annotations

from bench.compose import Composed


class GradTae(Composed):
    name = "grad_tae"
    version = "1"
    defaults = {**Composed.defaults, "signal": "grad_tae", "problem": "partition", "solver": "sdp"}
