"""ETAP's gradient-alignment task-affinity score ("Ensemble Prediction of Task Affinity", ICLR 2026 submission;
code aronlaszka/ETAP), Section 3.1, Eq. 3-6.

At an observed step ``k``, with ``g_i`` the gradient of task ``i``'s loss with respect to the shared (encoder)
parameters, ``L_j`` task ``j``'s loss on the step's batch and ``U_i = theta - theta'_i`` the update the trainer's
optimiser would make from ``g_i`` alone:

    z[i -> j] = g_j . U_i / (L_j * lr)                                               (Eq. 5, / lr as the code)
    matrix[j, i] = mean over observed steps of z[i -> j]                             (Eq. 6)

so row ``j`` is the recipient (TAG's ``[recipient][source]``; ETAP's code builds ``A = G U^T / L / lr`` with
entry ``[j, i]`` the effect of ``i``'s step on ``j``). It is the first-order Taylor expansion of TAG's lookahead
``(1 - L_j(theta - U_i) / L_j(theta)) / lr``. **Diagonal**: ``z[i -> i] = g_i . U_i / (L_i lr)`` (observed).

Choices where the paper is ambiguous:

- ``U_i`` is the optimiser's actual virtual step (:mod:`bench.signals._lookahead`). For SGD with momentum it is
  ``lr (g_i + wd theta + mu buf)``, i.e. Eq. 4's ``eta grad L_i - beta v`` with the PyTorch velocity convention
  (``v = -lr buf``); for Adam it is Adam's step (the paper's setting uses SGD).
- Eq. 5 has no ``1 / lr``; the reference code (``train_step_approx``) divides by the learning rate so that the
  score is on TAG's scale and does not shrink with a decaying schedule. We follow the code.
- ``every``: one step in ``every`` (default 1: every step, Eq. 6 averages over all K steps).

Cost: ONLY the per-task gradients the training step computes anyway and the losses (no extra forward, no extra
backward beyond the ``n - 1`` of having per-task rather than summed gradients: one batched backward; on per-task
inputs through a row-wise encoder, one ordinary backward split by task, see :mod:`bench.trainer`), the virtual
optimiser step of the n gradients and an ``n x n`` product of ``(n, D)`` matrices.
"""

from __future__ import annotations

from bench.signals._lookahead import GradientCallback, virtual_update
from bench.signals.base import TrainingSignal
from bench.types import make_group


class EtapCallback(GradientCallback):
    def step_matrix(self, ctx):
        _, grads = self.gradients(ctx)
        update = virtual_update(ctx, self.shared, grads)  # row i: U_i
        losses = self.step_losses(ctx)
        return ((grads @ update.T) / (losses[:, None] * ctx.lr)).cpu().numpy()  # [j, i] = g_j . U_i / (L_j lr)


class Etap(TrainingSignal):
    """ETAP's first-order task-affinity score (see the module docstring)."""

    name = "etap"
    version = "1"
    defaults = {"every": 1}
    parameters = {"every": [1, 10]}
    test_parameters = {"every": 1}

    def callback(self, problem, seed):
        return EtapCallback(make_group(problem.task_names), self.every)
