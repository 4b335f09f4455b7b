"""Parkinson telemonitoring (Tsanas et al. 2010; UCI): voice recordings of 42 patients, one regression task per
patient (``p01`` ... ``p42`` = ``subject#``; 101-168 recordings each, 5,875 in all).

Inputs: the 16 voice measures (Jitter(%) ... PPE). The reference (``NN/parkinsons_QR.py``) leaves out ``age``,
``sex`` and ``test_time``: the first two are constant within a patient (they only identify the task) and the
third is the time since recruitment, not a property of the voice. Targets: **both** ``motor_UPDRS`` and
``total_UPDRS``, in UPDRS points, as the reference does (one head with 2 outputs; loss and metric the MSE averaged
over both, which is Keras' ``mse`` on a 2-unit output). With these targets the mean within-patient variance is 6.73,
the per-task scale of affinity-predictor Table 1 (STL total 281.5 over 42 tasks), so totals compare with Table 1.

Preprocessing (see :mod:`bench.tabular`): features standardised with the pooled training statistics (the reference
feeds them raw, but they span five orders of magnitude, Jitter(Abs) ~1e-5 to HNR ~20). The targets keep their
units; every head ends in the fixed map ``mean + std * z`` of the pooled training targets (``target_scaling =
"output"``, no parameters). Without it the network must grow its output from 0 to the patients' levels (about
20-40 points) with Adam steps of lr 0.0078: at the ``mini`` profile (200 epochs) a single patient's test MSE was
still 74 and falling at the last epoch, against about 11 with the map, which reaches it within 20 epochs.
Split 80/10/10 per task from ``split_seed``.

Model: Parkinson is not in tabular-divergence Table 5, so the architecture comes from the reference code
(``NN/parkinsons_QR.py``, ``baseline_codes/simple_mtl_parkinsons.py``): one shared sigmoid layer of 12 units, the
task-specific layer of 5 sigmoid units (placed after the shared layer, see :mod:`bench.tabular`), lr 0.00779959,
batch 32; epochs and early stopping as for the other tabular benchmarks (1000, patience 50; the reference trains
400 epochs and keeps the best). The reference has no dropout.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bench.datafiles import DataFile
from bench.errors import DataNotFound
from bench.tabular import StandIn, Table, TabularDataset, profiles

VOICE = ("Jitter(%)", "Jitter(Abs)", "Jitter:RAP", "Jitter:PPQ5", "Jitter:DDP", "Shimmer", "Shimmer(dB)",
         "Shimmer:APQ3", "Shimmer:APQ5", "Shimmer:APQ11", "Shimmer:DDA", "NHR", "HNR", "RPDE", "DFA", "PPE")
TARGETS = ("motor_UPDRS", "total_UPDRS")


class Parkinson(TabularDataset):
    name = "parkinson"
    version = "1"
    data_files = (DataFile(
        "parkinsons/parkinsons_updrs.data",
        "https://archive.ics.uci.edu/ml/machine-learning-databases/parkinsons/telemonitoring/parkinsons_updrs.data",
        "f2c7d5025dec4e92e7feae367a5f7ccf58789a10ac6b54bdf15976c599f9dd39"),)
    task_names = tuple(f"p{i:02d}" for i in range(1, 43))
    n_features = len(VOICE)
    outputs = 2
    target_scaling = "output"
    shared = (12,)
    head = (5,)
    activation = "sigmoid"
    profiles = profiles(batch_size=32, lr=0.00779959)
    stand_in = StandIn(clusters=(7, 7, 7, 7, 7, 7), sizes=(101, 168), outputs=2, noise=0.3)

    def read(self, paths: list[Path]) -> dict[str, Table]:
        (path,) = paths
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in ("subject#", *VOICE, *TARGETS) if c not in header]
            if missing:
                raise DataNotFound(f"{path}: the header lacks the columns {missing}; expected the UCI "
                                   "parkinsons_updrs.data header (subject#, age, sex, test_time, motor_UPDRS, ...)")
            columns = [header.index(c) for c in ("subject#", *VOICE, *TARGETS)]
            try:
                data = np.array([[float(row[i]) for i in columns] for row in reader if row], dtype=np.float64)
            except (ValueError, IndexError) as exc:
                raise DataNotFound(f"{path}: a row is not {len(header)} numbers ({exc})") from exc
        subjects = data[:, 0].astype(np.int64)
        tables = {}
        for s in np.unique(subjects):
            rows = data[subjects == s]
            tables[f"p{s:02d}"] = Table(rows[:, 1 : 1 + len(VOICE)], rows[:, 1 + len(VOICE) :])
        return tables
