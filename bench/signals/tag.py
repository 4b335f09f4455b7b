"""TAG inter-task affinity (Fifty et al., 2021, "Efficiently identifying task groupings for multi-task learning").

At an observed step ``t`` with batch ``X``, for every source task ``j``:

    theta'_j = the shared (encoder) parameters after the optimiser's step from ``grad_theta L_j(X, theta)`` alone
    Z[i, j]  = (1 - L_i(X, theta'_j, head_i) / L_i(X, theta, head_i)) / lr            (TAG Eq. 3, / lr as in the code)

``matrix[i, j]`` is the average of ``Z[i, j]`` over the observed steps: the effect of source ``j``'s update on
recipient ``i`` (TAG's stored ``[recipient][source]``). **Diagonal**: the observed self-affinity ``Z[i, i]``
(how much a task's own step lowers its own loss), not a placeholder.

Choices where the paper and the reference code leave room:

- *virtual step*: exactly the update the trainer's optimiser would make from ``g_j`` alone with its current state
  (:mod:`bench.signals._lookahead`): SGD with weight decay and the momentum buffer in the PyTorch convention
  ``buf' = mu buf + g`` (``g`` including weight decay; ``buf' = g`` before the first update),
  ``theta' = theta - lr buf'``, as in TAG's CelebA code (Keras momentum); the Taskonomy patch's momentum check
  never fires, so it used plain SGD + weight decay (a bug we do not copy). Adam: the update Adam would make, with
  bias correction and weight decay as ``torch.optim.Adam`` does (TAG used SGD only).
- *heads unchanged*; only the encoder moves (``heads`` are task-specific).
- *same batch, train mode*: the losses are re-evaluated on the step's batch with batch statistics in batch-norm
  layers (TAG's ``training=True`` lookahead); running statistics are not updated by the lookahead.
- ``L_i(theta)`` is the step's own forward (``ctx.losses``), ``lr`` the optimiser's current learning rate. In a
  model with an active dropout layer (:func:`~bench.signals._lookahead.draws_random`) the step's forward drew
  other masks than the lookahead, and the ratio would mix mask noise into ``Z``; there ``L_i(theta)`` is evaluated
  as one more lookahead set (``theta`` itself), under the lookahead's masks (``n + 1`` extra forwards). TAG's
  models have no dropout, so the reference never meets the case.
- *averaging*: a plain mean over the observed steps up to the best epoch when early stopping ends the training
  (the epochs it waited through, ``patience`` of them, are dropped, as TAG's code drops its last 10 epochs, its
  patience; :attr:`~bench.signals.base.SignalCallback.until_best`), over every observed step otherwise. TAG's code
  averages per epoch, then over epochs: the same average when every epoch has the same number of observed steps
  (``every`` dividing the steps per epoch).
- ``every``: one step in ``every`` is observed (the Taskonomy patch used 10; CelebA 1).

Cost per observed step: n per-task gradients (one batched backward, counted as ``n - 1`` extra backward passes)
and n lookahead forwards, evaluated in one ``vmap`` call (counted as ``n`` extra forward passes).
"""

from __future__ import annotations

import torch

from bench.signals._lookahead import GradientCallback, draws_random, virtual_parameters
from bench.signals.base import TrainingSignal
from bench.types import make_group


class TagCallback(GradientCallback):
    until_best = True  # the epochs early stopping waited through are dropped (see the module docstring)

    def on_train_start(self, group, model, optimizer) -> None:
        super().on_train_start(group, model, optimizer)
        self.random = draws_random(model)  # the model draws dropout masks: see the module docstring

    def step_matrix(self, ctx):
        n = len(ctx.group)
        _, grads = self.gradients(ctx)
        ahead = virtual_parameters(ctx, self.shared, grads)  # row j: theta'_j
        if self.random:  # theta itself as one more set: the denominators under the lookahead's masks
            ahead = torch.cat([ahead, self.shared.values().unsqueeze(0)])
        after = self.lookahead.losses(ctx, self.shared.unflatten(ahead))  # [j, i] = L_i(theta'_j)
        self.extra_forward += len(ahead)
        before = after[n] if self.random else self.step_losses(ctx)
        self.check_denominators(ctx, "tag", before, what="loss before the lookahead")
        after = after[:n]
        return ((1.0 - after.T / before[:, None]) / ctx.lr).cpu().numpy()


class Tag(TrainingSignal):
    """TAG's lookahead inter-task affinity (see the module docstring)."""

    name = "tag"
    version = "4"
    defaults = {"every": 1}
    parameters = {"every": [1, 10]}
    test_parameters = {"every": 1}

    def callback(self, problem, seed):
        return TagCallback(make_group(problem.task_names), self.every)
