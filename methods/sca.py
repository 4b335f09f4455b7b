"""SCA (sample-wise optimisation landscape analysis): affinity at initialisation + GAT/GMM clustering.

Signal ``sca`` (Eq. 16-17: task-specific sample-wise optima of the shared parameters at initialisation, mean L1
distance, row normalisation; no MTL training), then the graph clustering of the paper (solver ``gat_gmm``: a
graph-attention autoencoder over the affinity graph, a Gaussian mixture on its embeddings) into exactly k disjoint
groups.
"""

from __future__ import annotations

from bench.compose import Composed


class Sca(Composed):
    name = "sca"
    version = "1"
    defaults = {**Composed.defaults, "signal": "sca", "problem": "partition", "solver": "gat_gmm"}
    test_parameters = {"solver": "dp"}
