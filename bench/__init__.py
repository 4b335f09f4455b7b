"""Task-grouping benchmark harness: one runner for every task-grouping method, baseline and dataset.

The engine lives in this package. Datasets, methods and baselines are plugins, one file each, in the folders
``datasets/``, ``methods/`` and ``baselines/`` beside it; :mod:`bench.registry` loads them by file path into the
namespace ``bench.plugins.<kind>.<stem>`` so that no plugin folder ever becomes a top-level module (``datasets``
would clash with the widely installed package of that name).
"""

__version__ = "0.1.0"

from bench.registry import install_plugin_finder as _install_plugin_finder

_install_plugin_finder()
