"""Task-affinity signals (see :mod:`bench.signals.base`); one module per signal."""
