"""Transfer gain ("Towards principled task grouping for multi-task learning", Definition 3, Eq. 3, 4, 7).

At an observed step ``t`` with batch ``X``, for tasks ``i != j``:

    S[i -> j] = 1 - L_j(X, phi_{i,j}^{t+1}, theta_j^{t+1}) / L_j(X, phi_j^{t+1}, theta_j^{t+1})       (Eq. 3)

- ``phi_{i,j}^{t+1}``: the shared (encoder) parameters after a virtual optimiser step on ``L_i + L_j``
  (gradient ``g_i + g_j``), ``phi_j^{t+1}`` after a virtual step on ``L_j`` alone (the optimiser's update from
  its current state, :mod:`bench.signals._lookahead`: SGD with momentum and weight decay, or Adam);
- ``theta_j^{t+1}``: task ``j``'s head after its own virtual step. A head's gradient depends on ``L_j`` only, so
  this is exactly the update the trainer applies to it at this step (from the per-task gradients the signal asks
  for; the trainer has no gradient clipping or other coupling across parameters). The callback therefore computes
  the shared virtual steps in ``before_step`` (they need the optimiser state before the update) and evaluates the
  losses in ``after_step``, reading the heads from the updated model: the optimiser's own arithmetic, at no cost.

``matrix[j, i] = S[i -> j]`` (row = recipient ``j``, the convention of every signal), averaged over the steps that
observed the pair (Eq. 7, the cumulative transfer gain).

**Diagonal** (``diagonal``): ``doubled`` (default) measures ``S[j -> j] = 1 - L_j(phi_{j,j}) / L_j(phi_j)`` with
``phi_{j,j}`` the virtual step on ``L_j + L_j`` (gradient ``2 g_j``): the "doubled single" ``(j, j)`` of the
reference code (``combinations_with_replacement`` of order 2), which the paper's cost model counts (Appendix E.1:
``n(n+1)/2 + n`` updates, ``n^2 + n`` losses) and which its Figure 5 shows (the largest entry of nearly every row,
Section C.8); Eq. 8's objective adds it to every group's score, so a group of one task scores ``S[j -> j]``, not 0.
The head in the numerator is ``theta_j^{t+1}`` as in every entry of Eq. 3 (the reference's CelebA code also doubles
the head's step; Eq. 3 does not). Under Adam the doubled step differs from the single step only through the
optimiser's moments, so the first step's diagonal is 0. ``zero`` sets the diagonal to 0 (Eq. 4 with ``A = {j}``:
``phi_{A u {j}} = phi_j``) and evaluates no doubled sets.

Cost (Section 4.3, Appendix E): the ``n(n-1)/2`` pair steps, ``n`` single steps and ``n`` doubled steps share the
per-task gradients (one batched backward: ``n - 1`` extra backward passes); the ``n(n+3)/2`` parameter sets
(``n(n+1)/2`` with ``diagonal=zero``) are evaluated in one batched call (counted as that many extra forward passes;
``S[i -> j]`` and ``S[j -> i]`` come from the same pair set: the paper counts ``n^2 + n`` loss evaluations).

Where the heads stack (:class:`bench.signals._lookahead.StackedHeads`), a set evaluates only its members' heads
and losses; on per-task inputs it also encodes only their samples: a pair's set 2 of the n tasks' batches, a
single's set its task's batch twice (one call for all sets; the copy costs less than a second call).
``extra_forward_batches`` in ``info`` counts the encoded rows in whole-batch units (``extra_forward`` counts
sets); on shared inputs every set encodes the whole batch. Otherwise every set evaluates every task's loss.

Efficiency options (Section 4.3 and Appendix E):

- ``sample``: at each observed step draw ``T ~ Unif{1, ..., n}`` and a uniformly random subset of ``T`` tasks
  (from a private generator seeded by the signal's seed, ``bench.seeding.rng(seed, "transfer_gain")``); only the
  pairs inside the subset are evaluated (``T(T+3)/2`` parameter sets: ``T`` singles, ``T`` doubled, ``T(T-1)/2``
  pairs; in expectation ``(n+1)(n+5)/6`` updates, Appendix E.2). ``T = 1`` observes only that task's diagonal
  (nothing with ``diagonal=zero``: then no per-task gradients are asked for, so it costs nothing). Entries are
  averaged over the steps that observed them.
- ``every`` (lazy collection): observe one step in ``every``.

Ambiguities resolved here: ``L_j`` is the training loss on the step's batch in train mode (the paper allows a
metric); the loss is re-evaluated with every task's head replaced by its virtual step (a head only enters its own
task's loss); a pair never observed under sampling makes the result an error (train longer or sample less
sparsely) rather than a silent 0.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import UsageError
from bench.seeding import rng
from bench.signals._lookahead import GradientCallback, virtual_parameters
from bench.signals.base import TrainingSignal
from bench.types import make_group


DIAGONALS = ("doubled", "zero")


class TransferGainCallback(GradientCallback):
    def __init__(self, tasks, every: int = 1, sample: bool = False, seed: int = 0, diagonal: str = "doubled") -> None:
        super().__init__(tasks, every)
        if diagonal not in DIAGONALS:
            raise UsageError(f"transfer_gain: diagonal must be one of {DIAGONALS}, got {diagonal!r}")
        self.doubled = diagonal == "doubled"
        self.sample = sample
        self.seed = seed
        self.gen = rng(seed, "transfer_gain")
        self.pending = None
        self.pairs_evaluated = 0
        self.forward_batches = 0.0

    def on_train_start(self, group, model, optimizer):
        super().on_train_start(group, model, optimizer)
        self.gen = rng(self.seed, "transfer_gain")
        self.pending = None

    def subset(self, n: int) -> np.ndarray:
        if not self.sample:
            return np.arange(n)
        size = int(self.gen.integers(1, n + 1))
        return np.sort(self.gen.permutation(n)[:size])  # a uniformly random subset of that size

    def before_step(self, ctx):
        """The shared parameters' virtual steps need the optimiser state before the update: computed here."""
        self.last = None
        self.pending = self.prepare(ctx) if self.observes(ctx) else None

    def after_step(self, ctx):
        """The heads' virtual steps ARE the update (see the module docstring): the losses are evaluated here."""
        if self.pending is not None:
            self.record(self.step_matrix(ctx))

    def prepare(self, ctx):
        """``(members, first, second, shared)``: this step's subset, its pairs and the ``(P, ...)`` virtual
        shared parameters of the singles, the doubled singles (``diagonal=doubled``) then the pairs; ``None`` when
        the subset measures nothing (one task and ``diagonal=zero``)."""
        n = len(ctx.group)
        members = self.subset(n)
        size = len(members)
        if size < (1 if self.doubled else 2):
            return None
        _, flat = self.gradients(ctx)
        src, dst = np.triu_indices(size, k=1)
        first, second = members[src], members[dst]  # every unordered pair of the subset
        # the sets' gradients g_j, [2 g_j,] then g_i + g_j, as one product with a 0/1/2 matrix (exact)
        doubled = size if self.doubled else 0
        pick = np.zeros((size + doubled + len(first), n))
        pick[np.arange(size), members] = 1.0
        pick[size + np.arange(doubled), members[:doubled]] = 2.0
        rows = size + doubled + np.arange(len(first))
        pick[rows, first] = 1.0
        pick[rows, second] = 1.0
        sets = torch.as_tensor(pick, dtype=flat.dtype, device=flat.device) @ flat
        shared = self.shared.unflatten(virtual_parameters(ctx, self.shared, sets))
        self.extra_forward += len(pick)
        self.pairs_evaluated += len(first)
        return members, first, second, shared

    def step_matrix(self, ctx):
        """After the update: the losses under the prepared shared parameters and the updated heads."""
        members, first, second, shared = self.pending
        self.pending = None
        n, size = len(ctx.group), len(members)
        doubled = size if self.doubled else 0
        own = self.member_losses(ctx, shared, members, first, second)
        if own is not None:  # only the members' losses; on per-task inputs only their samples are encoded
            alone, twice, on_first, on_second = own
        else:  # every set evaluates every task's loss
            after = self.lookahead.losses(ctx, shared).cpu().numpy().astype(np.float64)  # (P, n)
            rows = size + doubled + np.arange(len(first))
            alone, on_first, on_second = after[np.arange(size), members], after[rows, first], after[rows, second]
            twice = after[size + np.arange(doubled), members[:doubled]]
        per_task = len({id(x) for x in ctx.batch.inputs.values()}) > 1
        sets = size + doubled + len(first)
        # whole batches encoded: a set its whole batch on shared inputs, or its two members' samples
        self.forward_batches += sets * (2 / n if per_task and own is not None else 1)
        self.check_denominators(ctx, "transfer_gain", alone, members, "loss after the task's own virtual step")
        base = np.zeros(n)
        base[members] = alone  # L_j(phi_j, theta_j') for j in the subset
        out = np.full((n, n), np.nan)
        out[members, members] = 1.0 - twice / alone if self.doubled else 0.0  # S[j -> j]
        out[second, first] = 1.0 - on_second / base[second]  # S[i -> j]
        out[first, second] = 1.0 - on_first / base[first]  # S[j -> i]
        return out

    def member_losses(self, ctx, shared, members, first, second):
        """``(alone, twice, on_first, on_second)`` from sets that evaluate only their members' losses:
        ``alone[k]`` = ``L_j(phi_j)`` and ``twice[k]`` = ``L_j(phi_{j,j})`` for ``j = members[k]`` (empty with
        ``diagonal=zero``); ``on_first[p]`` / ``on_second[p]`` = the pair's two losses under ``phi_{i,j}``; ``None``
        where the lookahead cannot restrict a set to its members (heads that do not stack)."""
        size = len(members)
        solo = size * (2 if self.doubled else 1)
        device = next(iter(shared.values())).device
        # one call for all sets: a single {j} (and a doubled one) is the "pair" (j, j), of which only the first
        # loss is read (its second copy of j's samples costs less than a second call)
        ones = np.stack([members, members], axis=1)
        solos = [ones, ones] if self.doubled else [ones]
        sets = np.concatenate([*solos, np.stack([first, second], axis=1)])
        losses = self.lookahead.member_losses(ctx, shared, None, torch.as_tensor(sets, device=device))
        if losses is None:
            return None
        losses = losses.cpu().numpy().astype(np.float64)
        return losses[:size, 0], losses[size:solo, 0], losses[solo:, 0], losses[solo:, 1]

    def info(self):
        return {**super().info(), "sample": self.sample, "diagonal": "doubled" if self.doubled else "zero",
                "pairs_evaluated": self.pairs_evaluated,
                "extra_forward_batches": self.forward_batches}


class TransferGain(TrainingSignal):
    """Transfer gain of Definition 3 with optional sampling and lazy collection (see the module docstring)."""

    name = "transfer_gain"
    version = "2"
    defaults = {"every": 1, "sample": False, "diagonal": "doubled"}
    parameters = {"every": [1, 10], "sample": [False, True], "diagonal": list(DIAGONALS)}
    test_parameters = {"every": 1, "sample": False}

    def callback(self, problem, seed):
        return TransferGainCallback(make_group(problem.task_names), self.every, self.sample, seed, self.diagonal)

    def finish(self, callback):
        """``doubled``: every entry, the diagonal included, must have been observed; ``zero``: a diagonal of 0."""
        return callback.matrix(default_diagonal=None if callback.doubled else 0.0)
