"""MIMIC-III, 27 tasks, by lookup in MTG-Net's collected gains (3,185 of the 2^27-1 combinations).

``mimic_x.csv`` masks, ``mimic_y_valid.csv`` validation and ``mimic_y_test.csv`` test gains. The files do not name
the tasks; they are called ``m00`` ... ``m26`` in column order. The table lists every singleton and pair, the
all-task group and 2,806 groups of 6 to 22 tasks; the stand-in lists as many (sizes uniform in 6..22). Network
selection and predictors' training groups are drawn from the listed groups (``bench.dataset.Problem.listed_groups``;
over 27 tasks the exact selection solver is ``select_highs``); methods that need other groups (random partitions,
the surrogate's source groups) are skipped with the reason recorded.
"""

from bench.tabulated import GainTableDataset


class Mimic27Tab(GainTableDataset):
    name = "mimic27_tab"
    version = "1"
    folder = "mtgnet_collected_gain/mimic27"
    mask_file = "mimic_x.csv"
    test_file = "mimic_y_test.csv"
    val_file = "mimic_y_valid.csv"
    task_names = tuple(f"m{i:02d}" for i in range(27))
    stand_in_clusters = (9, 9, 9)
    stand_in_listed = (2806, 6, 22)
