"""Chemical / MHC-I (Jacob et al. 2008): does a peptide bind an MHC-I molecule? One binary task per molecule (35).

Source: ``mhcp.dat`` as published with Ayman et al. 2023 (``Dataset/CHEMICAL/mhcp.dat`` of
github.com/AfiyaAyman/Task-Grouping-for-Automated-Multi-Task-Machine-Learning-via-Task-Affinity-Prediction; no
public copy is reachable, so there is no URL). Format (the reference's ``DataPrep/chemical_data_prep.py``): one
peptide per line, 182 whitespace-separated integers: 180 binary features (9 residues x 20 amino acids, one-hot),
the molecule id, the label +1 (binds) / -1. 29,336 lines over 35 molecules. Tasks ``m02`` ... ``m92`` (molecule id,
sorted). A malformed line stops loading with the file, the line number and what was expected.

Class balancing (tabular-divergence Appendix A.1, "we additionally balance positive and negative samples"; the
reference's ``get_task_information``): per molecule all rows of the minority class are kept and the same number
of majority rows is drawn without replacement (seeded by ``split_seed`` and the molecule), so a task has
2 x min(#pos, #neg) rows. The reference's ``Dataset_Size`` column (``Task_Information_Chemical.csv``, the sizes
after its balancing) is consistent with that rule: every size is even and they sum to 15,236 = 2 x 7,618, while the
label mean -0.48057 of ``ChemicalDataDesc.csv`` means 7,619 positives among the 29,336 rows, so the positives are
the minority class in (all but about one of) the molecules and the sums agree. Whether each molecule's size is
reproduced exactly cannot be checked without the raw file.

Preprocessing (see :mod:`bench.tabular`): the one-hot features stay 0/1 (binary columns are not standardised, as
in the reference); labels 1 / 0. Split 80/10/10 per task from ``split_seed``, stratified by label.

Model (tabular-divergence Table 5): shared dense layers [32, 16], lr 0.001, batch 264, 1000 epochs, early stopping
patience 50; ReLU as in the reference (``NN/chemical_QR.py``); head: the reference's task-specific layer of 5 ReLU
units (placed after the shared layers, see :mod:`bench.tabular`), then one output logit. The reference also feeds
the raw input into the output layer (a skip connection); that is left out, because a head sees only the shared
encoder's output here. Loss ``bce`` on the logit; metric log-loss, the classification error (%) reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.datafiles import DataFile
from bench.errors import DataNotFound
from bench.tabular import StandIn, Table, TabularDataset, profiles

N_FEATURES = 180
# the 35 molecule ids of Ayman et al.'s Task_Information_Chemical.csv: the stand-in's tasks
MOLECULES = (2, 5, 6, 9, 10, 12, 18, 20, 22, 24, 25, 27, 28, 30, 46, 52, 55, 57, 59, 61, 67, 70, 76, 78, 80, 81,
             83, 84, 85, 86, 87, 89, 90, 91, 92)
SOURCE = ("published with Ayman et al. 2023 as Dataset/CHEMICAL/mhcp.dat in github.com/AfiyaAyman/Task-Grouping-"
          "for-Automated-Multi-Task-Machine-Learning-via-Task-Affinity-Prediction (file content not in public "
          "snapshots); MHC-I data of Jacob et al. 2008")


def read_mhcp(path: Path) -> dict[str, Table]:
    """``m<id>`` -> the molecule's peptides (features 0/1, labels 1/0), in file order (sorted by molecule id)."""
    expected = (f"expected {N_FEATURES + 2} whitespace-separated integers: {N_FEATURES} features in {{0, 1}}, "
                "the molecule id, the label +1 or -1")
    with open(path) as fh:
        lines = [(number, fields) for number, line in enumerate(fh, start=1) if (fields := line.split())]
    if not lines:
        raise DataNotFound(f"{path} holds no data lines; {expected}")
    for number, fields in lines:
        if len(fields) != N_FEATURES + 2:
            raise DataNotFound(f"{path} line {number}: {len(fields)} values; {expected}")
    try:
        a = np.array([fields for _, fields in lines]).astype(np.int64)
    except ValueError:
        number, bad = next((n, v) for n, fields in lines for v in fields if not _is_int(v))
        raise DataNotFound(f"{path} line {number}: {bad!r} is not an integer; {expected}") from None
    bad_feature = ~np.isin(a[:, :N_FEATURES], (0, 1))
    if bad_feature.any():
        row, col = np.argwhere(bad_feature)[0]
        raise DataNotFound(f"{path} line {lines[row][0]}: feature {col + 1} is {a[row, col]}; {expected}")
    bad_label = np.flatnonzero(~np.isin(a[:, -1], (1, -1)))
    if bad_label.size:
        row = bad_label[0]
        raise DataNotFound(f"{path} line {lines[row][0]}: label {a[row, -1]}; {expected}")
    molecules = a[:, N_FEATURES]
    return {f"m{m:02d}": Table(a[molecules == m, :N_FEATURES].astype(np.float64),
                               (a[molecules == m, -1] > 0).astype(np.float64))
            for m in np.unique(molecules)}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class Chemical(TabularDataset):
    name = "chemical"
    version = "1"
    data_files = (DataFile("chemical/mhcp.dat", None, None, note=SOURCE),)
    task_names = tuple(f"m{i:02d}" for i in MOLECULES)
    n_features = N_FEATURES
    task_kind = "binary"
    metric = "logloss"
    extra_metrics = ("error",)
    balance = True
    shared = (32, 16)
    head = (5,)
    activation = "relu"
    profiles = profiles(batch_size=264, lr=0.001)
    # sizes before balancing; with 30% positives the balanced tasks hold about 24-2,400 rows (real: 22-2,368)
    stand_in = StandIn(clusters=(7, 7, 7, 7, 7), sizes=(40, 4000), features="onehot", positive_rate=0.3)

    def read(self, paths: list[Path]) -> dict[str, Table]:
        return read_mhcp(paths[0])
