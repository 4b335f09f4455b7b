"""Shared fixtures of the test suite (kept small and generic)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("BENCH_NO_PROGRESS", "1")

import pytest  # noqa: E402

import bench  # noqa: E402,F401  (installs the plugin finder: bench.plugins.*)
from bench import registry  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The real-data root: ``$BENCH_DATA_ROOT``, else ``<repo>/../shared/data``."""
    value = os.environ.get("BENCH_DATA_ROOT")
    return Path(value).expanduser() if value else REPO_ROOT.parent / "shared" / "data"


def has_shared_data() -> bool:
    return data_root().is_dir()


requires_shared_data = pytest.mark.skipif(
    not has_shared_data(), reason=f"real data root {data_root()} not found (set BENCH_DATA_ROOT)"
)
"""Mark a test (or ``pytestmark``) that needs the real data root; it is skipped cleanly without it."""


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data root {root} not found (set BENCH_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def tiny_problem():
    """``synthetic[clusters=[2,2]]`` at the smoke profile: 4 tasks with per-task inputs, trains in well under 1 s."""
    return registry.create("dataset", "synthetic[clusters=[2,2]]").load("smoke")


@pytest.fixture(scope="session")
def tiny_shared_problem():
    """As ``tiny_problem`` but every task reads the same input tensor (``shared_inputs=true``)."""
    return registry.create("dataset", "synthetic[clusters=[2,2],shared_inputs=true]").load("smoke")


# transfer-gain-mip Appendix D, the worked example of Formulation 8: S (eq. 11), each task's memory (Table 7,
# the rows of B in eq. 10) and the three nodes' capacities b.
APPENDIX_D_TASKS = ("T1", "T2", "T3", "T4", "T5", "T6")
APPENDIX_D_S = [
    [0.5, 0.3, 0.1, 0.2, 0.1, 0.2],
    [0.3, 0.6, 0.2, 0.1, 0.0, 0.3],
    [0.1, 0.2, 0.7, 0.4, 0.5, 0.1],
    [0.2, 0.1, 0.4, 0.5, 0.3, 0.2],
    [0.1, 0.0, 0.5, 0.3, 0.8, 0.1],
    [0.2, 0.3, 0.1, 0.2, 0.1, 0.4],
]
APPENDIX_D_MEMORY = [4, 3, 5, 2, 6, 3]
APPENDIX_D_CAPACITY = [10, 10, 8]
