"""Keep freed heap memory in the process (glibc ``malloc``) instead of handing it back to the OS at every step.

glibc's defaults serve an allocation above 128 KiB from ``mmap`` (the threshold adapts upwards only as such blocks
are freed) and return the top of the heap to the OS as soon as more than 128 KiB of it is free. A training step
allocates and frees tensors of a few hundred KiB to a few MiB, so with the defaults many steps get fresh pages,
and the kernel zero-fills each 4 KiB page on first touch. PyTorch's CPU performance guide advises an allocator that
keeps memory (jemalloc, tcmalloc) for this reason; :func:`keep_freed_memory` gets the same effect from glibc's own
settings: ``M_MMAP_THRESHOLD`` 32 MiB (its maximum: smaller blocks come from the heap) and ``M_TRIM_THRESHOLD``
256 MiB (up to that much free memory stays in the process).

Measured on the development machine (2 CPU cores, one thread; ``bench.signal_perf.cost_problem``, 64 steps, a
fresh process that trains only plain and TAG): on per-task inputs, plain training took 1.38 ms/step with 26 minor
page faults per step and 1.22 ms/step with 0.2; TAG's lookahead took 3.96 ms/step with 618 faults per step and
2.42 ms/step with 0.2. On shared inputs (smaller tensors) the defaults caused almost no faults. How many faults
the defaults cause depends on what the process did before (how far the adaptive threshold has risen), so without
this setting the same training's time varies from process to process.

:func:`keep_freed_memory` runs once per process from the command line (every ``python -m bench`` command) and from
the cost measurements of :mod:`bench.signal_perf`, so plain training and every signal are timed under the same
settings. ``BENCH_HEAP=system`` leaves ``malloc`` at its defaults. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from bench.errors import UsageError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
SETTINGS = {"M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 32 << 20), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 256 << 20)}
ENV = "BENCH_HEAP"

_applied: dict[str, int] | None = None


def keep_freed_memory() -> dict[str, int]:
    """Apply :data:`SETTINGS` through ``mallopt`` (once per process); the settings that took effect, ``{}`` where
    none did (not glibc, or ``BENCH_HEAP=system``)."""
    global _applied
    if _applied is not None:
        return dict(_applied)
    _applied = {}
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise UsageError(f"{ENV} must be 'keep' (the default) or 'system', got {choice!r}")
    if choice == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for name, (param, value) in SETTINGS.items():
        if mallopt(param, value) == 1:  # 1 on success
            _applied[name] = value
    return dict(_applied)


__all__ = ["ENV", "SETTINGS", "keep_freed_memory"]
