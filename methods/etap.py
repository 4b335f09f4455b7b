"""ETAP (ensemble task-affinity predictor): gradient-alignment affinity + two-stage gain predictor + selection.

Signal ``etap`` (Eq. 5-6, from the per-task gradients of one MTL training, no extra passes), predictor ``etap``
(B-spline + ridge map from the groupwise affinity score to the gain, then a ridge residual on the group's
membership; hyper-parameters by cross-validation on the ``n_train`` training groups only), then network selection
of at most k groups maximising the predicted gains (``group_selection.py::select_groups_optimized``: exhaustive
over candidates; here the exact ``dp``).
"""

from __future__ import annotations

from bench.compose import Composed


class Etap(Composed):
    name = "etap"
    version = "1"
    defaults = {**Composed.defaults, "signal": "etap", "predictor": "etap", "n_train": 10}
    test_parameters = {"n_train": 5}
