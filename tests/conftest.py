"""Shared fixtures of the test suite (kept small and generic)."""

from __future__ import annotations

import os
import textwrap
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


# A user's own signal and predictor, one file each (tests of compositions and of bench affinity).
PLANTED_SIGNAL = '''
"""Knows the planted clusters: +1 inside a cluster, -1 across (a stand-in for a perfect signal)."""
import numpy as np
from bench.signals.base import Affinity, Signal


class Planted(Signal):
    name = "planted"
    defaults = {"train_pair": False}

    def compute(self, problem, seed, device="cpu", train=None):
        tasks = problem.task_names
        if self.train_pair:  # a signal that needs a ground-truth training (as task features do)
            self.trainer(problem, seed, device, train)(tasks[:2])
        cluster = {t: c for c, g in enumerate(problem.planted_groups) for t in g}
        S = np.array([[1.0 if cluster[a] == cluster[b] else -1.0 for b in tasks] for a in tasks])
        return Affinity(tasks, S, self.id)
'''

PAIR_MEAN = '''
"""Mean of the measured pair gains (a minimal predictor that needs every pair)."""
import numpy as np
from bench.predictors.base import Predictor, all_pairs


class PairMean(Predictor):
    name = "pair_mean"

    def training_groups(self, tasks, budget, gen):
        return all_pairs(tasks)

    def _fit(self, observations, evidence, seed):
        self.pairs_ = {obs.group: dict(obs.gains) for obs in observations}

    def _predict(self, group):
        out = {}
        for t in group:
            out[t] = float(np.mean([self.pairs_[tuple(sorted((t, u)))][t] for u in group if u != t]))
        return out
'''

@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    root = tmp_path / "plugins"
    (root / "signals").mkdir(parents=True)
    (root / "predictors").mkdir()
    (root / "signals" / "planted.py").write_text(textwrap.dedent(PLANTED_SIGNAL))
    (root / "predictors" / "pair_mean.py").write_text(textwrap.dedent(PAIR_MEAN))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(root))
    registry.reload()
    yield root
    monkeypatch.delenv("BENCH_PLUGIN_PATH")
    registry.reload()
