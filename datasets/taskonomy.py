"""Taskonomy, 5 tasks (s: semantic segmentation, d: depth, n: normals, k: keypoints, e: edges), by lookup.

The per-group gains MTG-Net published (``mtgnet_collected_gain/taskonomy/``: ``taskonomy_x.csv`` masks and
``taskonomy.csv`` gains; one value per cell, used as validation and test alike). These are the values behind
transfer-gain-mip Table 2 ("loss reduction", higher is better; the total is the sum over tasks).
"""

from bench.tabulated import GainTableDataset


class Taskonomy(GainTableDataset):
    name = "taskonomy"
    version = "1"
    folder = "mtgnet_collected_gain/taskonomy"
    mask_file = "taskonomy_x.csv"
    test_file = "taskonomy.csv"
    task_names = ("s", "d", "n", "k", "e")
    stand_in_clusters = (2, 3)
