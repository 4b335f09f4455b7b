"""School (ILEA, Bakker & Heskes 2003): exam scores of 15,362 students in 139 schools, one regression task per school.

Source: MALSAR's ``school.mat`` (``X``: 1x139 cell of n_t x 28 uint8, ``Y``: exam scores 1-70), whose task order
and sizes are the school codes 1-139 of the original ``ILEA567.DAT`` (tasks ``s001`` ... ``s139``). The 27 features
are MALSAR's encoding of the same ILEA fields the reference code reads from ``ILEA567.DAT``: exam year (3
indicators), the school's %FSM and %VR band 1 (two percentages), and indicators for school gender, school
denomination, student gender, the student's VR band and ethnic group; column 28, a constant bias of 1, is dropped
(every dense layer has its own bias). The reference (``DataPrep/school_data_prep.py``) encodes the same fields in
22 columns (VR band and school gender as ordinal codes instead of indicators); either carries the same information.

Preprocessing (see :mod:`bench.tabular`): the two percentage columns are standardised with the pooled training
statistics, the indicator columns stay 0/1; the exam score is standardised with the pooled training mean and
standard deviation, as the reference does over all rows (so per-task MSEs are about 0.6, the scale of
affinity-predictor Table 1: STL total 86.49 over 139 tasks, and tabular-divergence Table 4: label variance 0.88).
Split 80/10/10 per task from ``split_seed`` (10 folds: test, validation, 8 for training).

Model (tabular-divergence Table 5): shared dense layers [20, 10, 32], lr 0.005, batch 64, 1000 epochs, early
stopping patience 50; sigmoid activations as in the reference (``NN/school_QR.py``; Table 5 is silent); head: the
reference's task-specific layer of 5 units (placed after the shared layers, see :mod:`bench.tabular`), then one
linear output. Loss and metric: MSE. The reference has no dropout.
"""

from __future__ import annotations

from pathlib import Path

from bench.datafiles import DataFile
from bench.errors import DataNotFound
from bench.tabular import StandIn, Table, TabularDataset, load_mat, profiles

N_TASKS = 139


class School(TabularDataset):
    name = "school"
    version = "1"
    data_files = (DataFile(
        "school/school.mat",
        "https://raw.githubusercontent.com/jiayuzhou/MALSAR/fb9751594983df020ddc4f7e4a40520ee7c37989/data/school.mat",
        "57fb3238fdd03a9aa17276e2ce18d9bbb5d128c3261e794fe6233b58b6909068"),)
    task_names = tuple(f"s{i:03d}" for i in range(1, N_TASKS + 1))
    n_features = 27
    target_scaling = "standardise"
    shared = (20, 10, 32)
    head = (5,)
    activation = "sigmoid"
    profiles = profiles(batch_size=64, lr=0.005)
    stand_in = StandIn(clusters=(20, 20, 20, 20, 20, 20, 19), sizes=(22, 251))

    def read(self, paths: list[Path]) -> dict[str, Table]:
        (path,) = paths
        cells = load_mat(path, ("X", "Y"), N_TASKS)
        tables = {}
        for name, x, y in zip(self.task_names, cells["X"], cells["Y"]):
            if x.shape[1] != 28 or not (x[:, 27] == 1).all() or y.shape[1] != 1:
                raise DataNotFound(f"{path}: school {name} has X of shape {x.shape} and Y of shape {y.shape}; "
                                   "expected n x 28 with a constant last column of 1, and n x 1")
            tables[name] = Table(x[:, :27], y[:, 0])
        return tables
