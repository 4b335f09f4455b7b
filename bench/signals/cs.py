"""Gradient cosine similarity (the "CS" baseline of TAG, Fifty et al., 2021, Section 5).

At an observed step, with ``g_i`` the gradient of task ``i``'s loss with respect to the shared (encoder)
parameters, restricted to the parameters of rank > 1 (weight matrices and kernels, not biases or norm scales:
TAG's ``cosine_sim_train_step`` keeps ``len(grad.shape) > 1``) and flattened into one vector:

    C[i, j] = g_i . g_j / (|g_i| |g_j|)

``matrix[i, j]`` is the average of ``C[i, j]`` over the observed steps (up to the best epoch when early stopping
ends the training, as TAG's code, which collects it beside TAG's affinity). It is symmetric (the effect of ``j`` on
``i`` is read as their alignment); **diagonal**: 1.

Choices: one cosine over the concatenation of all rank > 1 parameters (as the reference), not a per-layer average;
a task whose gradient is exactly zero at a step has cosine 0 with every other task at that step (the reference
would divide by zero); ``every`` observes one step in ``every`` (default 1, every step, as TAG's CelebA code).

Cost per observed step: n per-task gradients (one batched backward: ``n - 1`` extra backward passes), no forward.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import Unsupported
from bench.signals._lookahead import GradientCallback
from bench.signals.base import TrainingSignal
from bench.types import make_group


def cosine_matrix(rows: torch.Tensor) -> torch.Tensor:
    """The cosines between the rows of ``rows`` (``(n, D)``); 0 against a zero row. Each row is first divided by its
    largest magnitude, so the norms cannot underflow or overflow (float32 gradients of order 1e-20 keep their
    cosines)."""
    tiny = torch.finfo(rows.dtype).tiny
    scaled = rows / rows.abs().amax(dim=1, keepdim=True).clamp_min(tiny)
    unit = scaled / scaled.norm(dim=1, keepdim=True).clamp_min(tiny)
    return unit @ unit.T


class CosineCallback(GradientCallback):
    until_best = True  # the epochs early stopping waited through are dropped (see the module docstring)

    def on_train_start(self, group, model, optimizer):
        super().on_train_start(group, model, optimizer)
        self.kept = [n for n, p in model.shared_parameters().items() if p.ndim > 1]
        if not self.kept:
            raise Unsupported("cs needs shared parameters of rank > 1 (weight matrices); the encoder has none")

    def step_matrix(self, ctx):
        n = len(ctx.group)
        grads = self.task_gradients(ctx)
        flat = torch.cat([grads.shared[k].detach().reshape(n, -1) for k in self.kept], dim=1)
        out = cosine_matrix(flat).cpu().numpy().astype(np.float64)
        np.fill_diagonal(out, 1.0)
        return out


class Cs(TrainingSignal):
    """Cosine similarity of per-task gradients of the shared parameters (see the module docstring)."""

    name = "cs"
    version = "3"
    defaults = {"every": 1}
    parameters = {"every": [1, 10]}
    test_parameters = {"every": 1}

    def callback(self, problem, seed):
        return CosineCallback(make_group(problem.task_names), self.every)
