"""MTG-Net (Song et al. 2022): a transformer gain predictor trained with active sampling + beam search.

Predictor ``mtg_net`` (starts from the single-task and all-task groups and asks for further groups by its
``activeper`` strategy), then ``approx_search``, MTG-Net's beam search, over every candidate group. Each task is
served by the chosen group with its highest *predicted* gain (``serve=predicted``), as MTG-Net's evaluation takes
"the ground-truth test gain from the chosen group with the highest predicted gain for that task"
(implementations.md 3.4), not by validation; for the groups it measured, the predictor gives their measured
validation gains to the search and to that rule, as the reference does.

Search: the beam on every dataset. The reference runs it on ETTm1 and MIMIC-III and, on Taskonomy's 5 tasks, an
exhaustive branch and bound; ``mtg_net[solver=dp]`` is that exact search (the beam can miss the optimum: it seeds
from the groups of largest total gain).
"""

from __future__ import annotations

from bench.compose import Composed


class MtgNet(Composed):
    name = "mtg_net"
    version = "3"
    defaults = {**Composed.defaults, "predictor": "mtg_net", "solver": "beam", "serve": "predicted"}
