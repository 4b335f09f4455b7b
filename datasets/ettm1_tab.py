"""ETTm1, 7 series (HUFL, HULL, MUFL, MULL, LUFL, LULL, OT), by lookup in MTG-Net's collected gains.

All 127 combinations, Autoformer backbone (MTG-Net's gain collection): ``ETTm1_x.csv`` masks, ``ETTm1_val_y.csv``
validation gains and ``ETTm1_y.csv`` test gains (relative loss reduction against single-task training).
"""

from bench.tabulated import GainTableDataset


class Ettm1Tab(GainTableDataset):
    name = "ettm1_tab"
    version = "1"
    folder = "mtgnet_collected_gain/ETT"
    mask_file = "ETTm1_x.csv"
    test_file = "ETTm1_y.csv"
    val_file = "ETTm1_val_y.csv"
    task_names = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    stand_in_clusters = (2, 2, 2, 1)
