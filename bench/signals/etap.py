"""ETAP's gradient-alignment task-affinity score ("Ensemble Prediction of Task Affinity", ICLR 2026 submission;
code aronlaszka/ETAP), Section 3.1, Eq. 3-6.

At an observed step ``k``, with ``g_i`` the gradient of task ``i``'s loss with respect to the shared (encoder)
parameters, ``L_j`` task ``j``'s loss on the step's batch and ``U_i`` the update of the shared parameters made from
``g_i`` alone:

    z[i -> j] = g_j . U_i / (L_j * lr)                                               (Eq. 5, / lr as the code)
    matrix[j, i] = mean over observed steps of z[i -> j]                             (Eq. 6)

so row ``j`` is the recipient (TAG's ``[recipient][source]``; ETAP's code builds ``A = G U^T / L / lr`` with
entry ``[j, i]`` the effect of ``i``'s step on ``j``). **Diagonal**: ``z[i -> i] = g_i . U_i / (L_i lr)``
(observed).

``update`` says what ``U_i`` is (the paper's Eq. 4 has two forms, the reference code both, behind ``w_momentum``):

- ``gradient`` (default): ``U_i = lr * g_i`` (Eq. 4 "without momentum"), so ``z[i -> j] = g_j . g_i / L_j``: the
  gradients' Gram matrix, row ``j`` divided by ``L_j``. This is what the reference scripts run: ``w_momentum =
  False`` in both the CelebA (``affinity_score_calculation.py``) and the ETTm1 (``run.py``) scripts, and the
  ``train_step_approx`` default. It does not depend on the optimiser, and it is the first-order expansion of TAG's
  lookahead for plain gradient descent: ``(1 - L_j(theta - lr g_i) / L_j(theta)) / lr -> g_j . g_i / L_j``.
- ``optimizer``: ``U_i = theta - theta'_i``, the step the trainer's own optimiser would take from ``g_i`` alone
  (:mod:`bench.signals._lookahead`). For SGD with momentum it is ``lr (g_i + wd theta + mu buf)``, i.e. Eq. 5's
  bracket ``eta grad L_i - beta v`` (``-Delta theta`` of Eq. 4) with the PyTorch velocity convention (``v = -lr
  buf``; the reference's ``w_momentum = True`` branch, ``lr * (grad + momentum * momentum_buffer)``); for Adam it
  is Adam's step (our generalisation: the paper assumes gradient descent "optionally with momentum", and with
  ``w_momentum`` on the reference code exits on an Adam optimiser). It is the first-order expansion of TAG's
  lookahead through the same optimiser.

Choices where the paper is ambiguous:

- Eq. 5 has no ``1 / lr``; the reference code (``train_step_approx``) divides by the learning rate so that the
  score is on TAG's scale and does not shrink with a decaying schedule. We follow the code.
- Eq. 5 divides by the recipient's loss ``L_j`` ("normalized by task t_j's loss"), as the CelebA, Chemical and
  Ridership scripts do; the reference's ETTm1 script (``exp_calculate_affinity.py``) has that division commented
  out ("wo-loss"). We follow the paper on every dataset, so ETTm1's published Table 2 and 3 values come from a
  score whose rows are not divided by ``L_j``.
- ``every``: one step in ``every`` (default 1: every step, Eq. 6 averages over all K steps).
- Eq. 6's ``K`` steps end at the best epoch when early stopping ends the training: the epochs it waited through
  are dropped (the reference accumulates "exactly like TAG", which drops them;
  :attr:`~bench.signals.base.SignalCallback.until_best`).

Cost: ONLY the per-task gradients the training step computes anyway and the losses (no extra forward, no extra
backward beyond the ``n - 1`` of having per-task rather than summed gradients: one batched backward; on per-task
inputs through a row-wise encoder, one ordinary backward split by task, see :mod:`bench.trainer`), and one
``n x n`` product of ``(n, D)`` matrices; ``update=optimizer`` adds the virtual optimiser step of the n gradients
(for Adam about six elementwise passes over ``n x D``).
"""

from __future__ import annotations

from bench.errors import UsageError
from bench.signals._lookahead import GradientCallback, virtual_update
from bench.signals.base import TrainingSignal
from bench.types import make_group


UPDATES = ("gradient", "optimizer")
"""The values of ``update`` (see the module docstring)."""


class EtapCallback(GradientCallback):
    until_best = True  # the epochs early stopping waited through are dropped (see the module docstring)

    def __init__(self, tasks, every: int = 1, update: str = "gradient") -> None:
        if update not in UPDATES:
            raise UsageError(f"etap: update must be one of {', '.join(UPDATES)}, got {update!r}")
        super().__init__(tasks, every)
        self.update = update

    def step_matrix(self, ctx):
        losses = self.step_losses(ctx)
        if self.update == "gradient":  # U_i = lr g_i: [j, i] = g_j . g_i / L_j
            # the Gram matrix parameter by parameter, on views of the stacked gradients (flattening them into one
            # (n, D) matrix would copy n x D floats per step)
            stacked = self.task_gradients(ctx).shared
            blocks = [stacked[name].detach().reshape(len(ctx.group), -1) for name in self.shared.names]
            gram = sum(b @ b.T for b in blocks)
            return (gram / losses[:, None]).cpu().numpy()
        _, grads = self.gradients(ctx)
        update = virtual_update(ctx, self.shared, grads)  # row i: U_i
        return ((grads @ update.T) / (losses[:, None] * ctx.lr)).cpu().numpy()  # [j, i] = g_j . U_i / (L_j lr)


class Etap(TrainingSignal):
    """ETAP's first-order task-affinity score (see the module docstring)."""

    name = "etap"
    version = "4"
    defaults = {"every": 1, "update": "gradient"}
    parameters = {"every": [1, 10], "update": list(UPDATES)}
    test_parameters = {"every": 1}

    def callback(self, problem, seed):
        return EtapCallback(make_group(problem.task_names), self.every, self.update)
