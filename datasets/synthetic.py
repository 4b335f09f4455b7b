"""Synthetic MTL problems with planted task clusters (embedded; no files needed).

Generator (deterministic in ``data_seed``): ``d``-dimensional Gaussian inputs; each cluster ``c`` has a unit
direction ``w_c`` (the directions are orthonormal, so clusters are unrelated); task ``t`` of cluster ``c`` has
``y = x . (w_c + spread * delta_t) * scale + noise``, with ``delta_t`` a random unit vector. Every task has its own
few, noisy samples (or, with ``shared_inputs=true``, all tasks read the same inputs).

The model is a linear encoder to a ``bottleneck``-dimensional representation (default 1) and a linear head per
task. Tasks of one cluster share a direction, so training them together pools their samples and helps; a group
that mixes clusters must squeeze several directions through the bottleneck, so the tasks interfere. The planted
clusters are therefore the known best partition (``problem.planted_groups``); tests rely on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.dataset import Dataset, TrainedProblem
from bench.errors import UsageError
from bench.trainer import MTLModel, Split, TaskData, TrainConfig
from bench.types import Task


class Synthetic(Dataset):
    name = "synthetic"
    version = "1"
    defaults = {
        "clusters": (2, 2, 2),
        "dim": 10,
        "spread": 0.1,
        "noise": 1.0,
        "bottleneck": 1,
        "shared_inputs": False,
        "data_seed": 0,
    }
    parameters = {"clusters": [(2, 2, 2), (3, 3), (2, 2, 2, 2)], "noise": [0.5, 1.0]}
    test_parameters = {"clusters": (2, 2)}
    profiles = {
        "smoke": {"n_train": 24, "n_val": 40, "n_test": 200,
                  "train": {"epochs": 25, "batch_size": 16, "lr": 0.03, "patience": 5}},
        "mini": {"n_train": 32, "n_val": 64, "n_test": 1000,
                 "train": {"epochs": 60, "batch_size": 16, "lr": 0.02, "patience": 8}},
        "paper": {"n_train": 32, "n_val": 128, "n_test": 5000,
                  "train": {"epochs": 200, "batch_size": 16, "lr": 0.01, "patience": 20}},
    }

    def build(self, settings: dict[str, Any], profile: str, data_root: Path | None) -> TrainedProblem:
        clusters = tuple(int(c) for c in self.clusters)
        if not clusters or min(clusters) < 1:
            raise UsageError(f"clusters must be a list of positive cluster sizes, got {self.clusters!r}")
        n_tasks, dim = sum(clusters), int(self.dim)
        if len(clusters) > dim:
            raise UsageError(f"need dim >= number of clusters ({len(clusters)}), got dim={dim}")
        gen = np.random.default_rng(self.data_seed)
        basis, _ = np.linalg.qr(gen.standard_normal((dim, dim)))
        names = [f"t{i}" for i in range(n_tasks)]
        membership, weights = [], []
        for c, size in enumerate(clusters):
            for _ in range(size):
                delta = gen.standard_normal(dim)
                delta /= np.linalg.norm(delta)
                weights.append(basis[:, c] + self.spread * delta)
                membership.append(c)
        planted = [[names[i] for i in range(n_tasks) if membership[i] == c] for c in range(len(clusters))]

        def make(n: int) -> tuple[dict, dict]:
            inputs, targets = {}, {}
            shared_x = gen.standard_normal((n, dim)) if self.shared_inputs else None
            shared_t = torch.tensor(shared_x, dtype=torch.float32) if shared_x is not None else None
            for name, w in zip(names, weights):
                x = shared_x if shared_x is not None else gen.standard_normal((n, dim))
                y = 2.0 * x @ w + self.noise * gen.standard_normal(n)
                inputs[name] = shared_t if shared_t is not None else torch.tensor(x, dtype=torch.float32)
                targets[name] = torch.tensor(y, dtype=torch.float32)
            return inputs, targets

        splits = [Split(*make(settings[key])) for key in ("n_train", "n_val", "n_test")]
        bottleneck = int(self.bottleneck)

        def factory(group):
            encoder = nn.Linear(dim, bottleneck, bias=False)
            return MTLModel(encoder, {t: nn.Linear(bottleneck, 1) for t in group})

        tasks = [Task(n, kind="regression", metric="mse", higher_is_better=False, loss="mse") for n in names]
        train_settings = {k: v for k, v in settings.items() if k != "train"}
        identity = self.base_identity(profile, train_settings, "synthetic", "generated")
        return TrainedProblem(tasks, "synthetic", identity, TaskData(*splits), factory,
                              TrainConfig(**settings["train"]), planted_groups=planted)
