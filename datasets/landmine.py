"""Landmine (Xue et al. 2007): 29 landmine fields, one binary task per field (is the object a landmine?).

Source: ``LandmineData.mat`` of the original Duke distribution (``feature``: 1x29 cell of n_t x 9 radar features,
``label``: 1x29 cell of {0,1}; 14,820 rows, 904 positives, 445-690 rows per field). Tasks ``f01`` ... ``f29`` in
cell order (the field numbering of the MTL paper; fields 1-15 are foliated, 16-29 bare earth, which the stand-in's
two planted clusters of 15 and 14 imitate).

Preprocessing (see :mod:`bench.tabular`): the 9 features are standardised with the pooled training statistics
(the reference feeds them raw; they are already close to zero mean, unit variance); labels 0/1. Split 80/10/10 per
task from ``split_seed``, stratified by label (the reference's ``StratifiedKFold``), so every split of a field holds
about a tenth of its 15-48 positives.

Model (tabular-divergence Table 5): shared dense layers [64, 32], lr 0.001, batch 64, 1000 epochs, early stopping
patience 50; ReLU activations as in the reference (``NN/landmine_QR.py``); head: one output logit per field
directly on the shared layers (the reference's task-specific input layers are built but not connected, so its
model has no task-specific hidden layer either). Loss ``bce`` on the logit (the reference's sigmoid output with
binary cross-entropy); metric log-loss, AUC reported beside it (the reference reports both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.datafiles import DataFile
from bench.errors import DataNotFound
from bench.tabular import StandIn, Table, TabularDataset, load_mat, profiles

N_TASKS = 29


class Landmine(TabularDataset):
    name = "landmine"
    version = "1"
    data_files = (DataFile(
        "landmine/LandmineData.mat",
        "https://raw.githubusercontent.com/daizhongxiang/Federated_Bayesian_Optimization/"
        "30a4548606f2ae9bc62c6bf0eb4110177aa3876a/LandmineData.mat",
        "2163ab20a80e33a8b65593c48cf283c540599dcb291105e63fa4af2ce24c2bea"),)
    task_names = tuple(f"f{i:02d}" for i in range(1, N_TASKS + 1))
    n_features = 9
    task_kind = "binary"
    metric = "logloss"
    extra_metrics = ("auc",)
    shared = (64, 32)
    head = ()
    activation = "relu"
    profiles = profiles(batch_size=64, lr=0.001)
    stand_in = StandIn(clusters=(15, 14), sizes=(445, 690), positive_rate=0.06, slope=8.0)

    def read(self, paths: list[Path]) -> dict[str, Table]:
        (path,) = paths
        cells = load_mat(path, ("feature", "label"), N_TASKS)
        tables = {}
        for name, x, y in zip(self.task_names, cells["feature"], cells["label"]):
            if x.shape[1] != 9 or y.shape[1] != 1 or not np.isin(y, (0, 1)).all():
                raise DataNotFound(f"{path}: field {name} has feature {x.shape} and label {y.shape}; expected "
                                   "n x 9 features and n x 1 labels in {0, 1}")
            tables[name] = Table(x, y[:, 0])
        return tables
