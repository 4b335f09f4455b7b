"""MTG-Net (Song et al. 2022): a transformer gain predictor trained with active sampling + beam search.

Predictor ``mtg_net`` (starts from the single-task and all-task groups and asks for further groups by its
``activeper`` strategy), then ``approx_search``, MTG-Net's beam search, over every candidate group. Each task is
served by the chosen group with its highest *predicted* gain (``serve=predicted``), as MTG-Net's evaluation takes
"the ground-truth test gain from the chosen group with the highest predicted gain for that task"
(implementations.md 3.4), not by validation.
"""

from __future__ import annotations

from bench.compose import Composed


class MtgNet(Composed):
    name = "mtg_net"
    version = "2"
    defaults = {**Composed.defaults, "predictor": "mtg_net", "solver": "beam", "serve": "predicted"}
