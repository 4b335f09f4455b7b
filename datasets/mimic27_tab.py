"""MIMIC-III, 27 tasks, by lookup in MTG-Net's collected gains (3,185 of the 2^27-1 combinations).

``mimic_x.csv`` masks, ``mimic_y_valid.csv`` validation and ``mimic_y_test.csv`` test gains. The files do not name
the tasks; they are called ``m00`` ... ``m26`` in column order. Methods that need groups outside the table (random
partitions, exhaustive search) are skipped with the reason recorded.
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
