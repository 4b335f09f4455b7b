"""MTG-Net (Song et al. 2022): a transformer gain predictor trained with active sampling + beam search.

Predictor ``mtg_net`` (starts from the single-task and all-task groups and asks for further groups by its
``activeper`` strategy), then ``approx_search``, MTG-Net's beam search, over every candidate group.
"""

from __future__ import annotations

from bench.compose import Composed


class MtgNet(Composed):
    name = "mtg_net"
    version = "1"
    defaults = {**Composed.defaults, "predictor": "mtg_net", "solver": "beam"}
