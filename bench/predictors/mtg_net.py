"""MTG-Net (Song et al., NeurIPS'22, "Efficient and effective multi-task grouping via meta learning on task
combinations"): a transformer over task tokens predicting every member's gain, trained with active sampling
(implementations.md 3.2-3.3, ``ShawnKS/MTG-Net`` ``model/MTGNet.py``, ``model/Layer.py``, ``model/util.py``).

Network (3.2). Tokens: the ``n`` task ids embedded by ``nn.Embedding(n, d)`` (``d = hidden``). The group's
membership ``m in {0,1}^n`` is the attention mask. Each of ``layers`` layers, one head::

    S = (X W_q)(X W_k)^T * d^{-1/2};   S[a, :] = S[:, a] = -1e15 for every non-member a
    H = LayerNorm(X + Linear(softmax(S / 0.2, rows) (X W_v)))
    X' = LayerNorm(H + Conv1x1(ReLU(Conv1x1(H))))

and a shared ``Linear(d, 1)`` head on every token gives the predicted gain of that task in the group. With the
mask in rows and columns a member attends to members only (``exp(-5e15)`` is exactly 0), so a member's prediction
never depends on a non-member's token; non-member rows attend uniformly and their outputs are ignored.

Training (3.3). Initial training set: the ``n`` singletons (gain 0, no training needed) and the all-task group
(:meth:`MtgNet.training_groups`, measured by the caller). Each active iteration ``a``:

1. re-initialise the network (seed ``derive_seed(seed, "mtg_net", a)``, inside ``torch.random.fork_rng``);
2. train full batch with Adam (lr 0.007, weight decay 5e-4) on the L1 loss over member entries, for at most
   ``max_epochs`` epochs, stopping when the training loss has not improved for ``patience`` (5) epochs; keep the
   ``ensemble`` (2) epoch snapshots with the lowest training loss, whose predictions are averaged;
3. ``activeper`` selection: target task ``col = a mod n``; among the pool groups containing ``col``, move the one
   with the largest ``|predicted gain of col|`` into the training set (measured through ``evidence.oracle``), and
   with ``step = 2`` also the one with the smallest.

It stops once ``active_budget`` oracle calls were made (default ``step * floor(n(n-1) / (2 step))``: the reference's
``n(n-1)/(2 step)`` iterations of ``step`` groups) or the pool is empty, and the final model is trained on
everything measured. A grouping built on it scores the measured groups (the singletons, the all-task group and
every acquired group) by their measured gains and the others by the prediction (:meth:`MtgNet.measured`), as the
reference's search input does.

Choices and departures:

* **Pool.** All groups of two or more tasks not yet measured when ``n <= 12`` (``2^n - n - 1 <= 4083`` groups);
  beyond that enumerating them is pointless, and the pool is ``pool_size`` distinct random groups (size uniform in
  ``2..n``, then a uniform subset; :func:`~bench.predictors.base.random_groups` under the fit's seed). Where only
  some groups can be measured (``Evidence.listed``: a published table such as MIMIC-III's 3,185 rows), the pool is
  every listed group not yet measured, whatever ``pool_size``: the reference's pool is the table's rows.
* **Epoch cap.** ``max_epochs`` defaults to 2000 instead of the reference's 10000 (the ``paper`` profile's value):
  early stopping on the training loss with patience 5 ends many runs long before, and the cap bounds the CPU time of
  the ``n(n-1)/4 + 1`` re-initialised trainings on the ``mini`` profile. The ``smoke`` profile makes 4 oracle calls
  of at most 100 epochs (:attr:`~bench.component.Component.profile_defaults`).
* ``hidden`` defaults to 64 (the README's example; the CLI default is 128), ``layers`` to 2.
* ``step`` defaults to 2, the branch implementations.md 3.3 describes (the largest and the smallest
  ``|predicted gain|`` each iteration); the reference's CLI default is 1, which doubles the re-initialised
  trainings for the same number of oracle calls.
* **Ensemble snapshots** hold the parameters at which their loss was measured (the reference records the loss of the
  forward pass but copies the model after the optimiser step, and writes a replacement into the slot of the *new*
  worst loss); the two lowest-loss snapshots are kept correctly here.
* **Smallest |gain|.** The reference sets exact zeros to 100 before the argmin to skip non-members; here candidates
  are the groups containing ``col`` to begin with (for the argmax as well, where the reference's zeroed non-members
  could only win if every member prediction were 0). When no pool group contains ``col`` any more, the next task
  with candidates is the target.
* No dropout (the reference's dropout calls are commented out); training rows are not shuffled (full batch).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench.errors import UsageError
from bench.gains import Observation
from bench.predictors.base import Evidence, Predictor, listed_pool, random_groups
from bench.seeding import derive_seed, rng
from bench.types import Group, make_group

MASK_VALUE = -1e15
SOFTMAX_TEMPERATURE = 0.2
LEARNING_RATE = 0.007
WEIGHT_DECAY = 5e-4
FULL_POOL_MAX_TASKS = 12


class Layer(nn.Module):
    """One MTG-Net layer: masked single-head attention + LayerNorm residual, 1x1-conv FFN + LayerNorm residual."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.ffn1, self.ffn2 = nn.Conv1d(d, d, 1), nn.Conv1d(d, d, 1)
        self.norm2 = nn.LayerNorm(d)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax(S / 0.2)`` with ``S = QK^T d^{-1/2}`` and -1e15 in the rows and columns of non-members."""
        scores = torch.bmm(self.q(x), self.k(x).transpose(1, 2)) * x.shape[-1] ** -0.5
        off = mask == 0
        scores = scores.masked_fill(off[:, None, :], MASK_VALUE).masked_fill(off[:, :, None], MASK_VALUE)
        return torch.softmax(scores / SOFTMAX_TEMPERATURE, dim=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x + self.out(torch.bmm(self.attention(x, mask), self.v(x))))
        f = self.ffn2(torch.relu(self.ffn1(h.transpose(1, 2)))).transpose(1, 2)
        return self.norm2(h + f)


class Network(nn.Module):
    """Task-id embedding, ``layers`` :class:`Layer` s, a shared ``Linear(d, 1)`` head on every token.

    ``forward(mask)``: ``mask`` is ``[batch, n]`` (1 = member); returns ``[batch, n]`` predicted gains.
    """

    def __init__(self, n_tasks: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tasks, hidden)
        self.layers = nn.ModuleList([Layer(hidden) for _ in range(layers)])
        self.head = nn.Linear(hidden, 1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(torch.arange(mask.shape[1])).unsqueeze(0).expand(mask.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x).squeeze(-1)


def select_active(masks: np.ndarray, preds: np.ndarray, col: int, step: int) -> list[int]:
    """Pool rows chosen for target task ``col``: argmax of ``|preds[:, col]|`` over the rows containing ``col``,
    then (``step == 2``) argmin over the remaining ones. Empty when no row contains ``col``."""
    cand = np.flatnonzero(masks[:, col] > 0)
    if not len(cand):
        return []
    value = np.abs(preds[cand, col])
    first = int(cand[int(np.argmax(value))])
    chosen = [first]
    if step == 2 and len(cand) > 1:
        rest = cand[cand != first]
        chosen.append(int(rest[int(np.argmin(np.abs(preds[rest, col])))]))
    return chosen


class MtgNet(Predictor):
    """MTG-Net (Song et al. 2022): a masked transformer over task-id tokens, trained by active sampling of groups
    through the oracle (``activeper``), re-initialised every iteration, two-snapshot ensemble."""

    name = "mtg_net"
    version = "2"
    requires = ("oracle",)
    defaults = {"hidden": 64, "layers": 2, "step": 2, "active_budget": None, "max_epochs": 2000, "patience": 5,
                "ensemble": 2, "pool_size": 2000}
    test_parameters = {"hidden": 8, "layers": 1, "active_budget": 2, "max_epochs": 15, "pool_size": 40}
    # smoke: two active iterations of at most 100 epochs (the default budget on MIMIC-III's 27 tasks is 351 oracle
    # calls of up to 2000 epochs each, hours on a CPU); paper: the reference's epoch cap
    profile_defaults = {"smoke": {"active_budget": 4, "max_epochs": 100}, "paper": {"max_epochs": 10000}}

    def training_groups(self, tasks, budget, gen, listed=None) -> list[Group]:
        return [make_group(tasks)] if len(tasks) >= 2 else []

    # -- training ------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.step not in (1, 2):
            raise UsageError(f"parameter 'step' of predictor {self.id} must be 1 or 2, got {self.step}")
        for key in ("hidden", "layers", "max_epochs", "patience", "ensemble", "pool_size"):
            if int(getattr(self, key)) < 1:
                raise UsageError(f"parameter '{key}' of predictor {self.id} must be positive")

    def _mask(self, group: Sequence[str]) -> np.ndarray:
        mask = np.zeros(len(self.tasks_), dtype=np.float32)
        mask[[self.index_[t] for t in group]] = 1.0
        return mask

    def _pool(self, measured: set[Group], seed: int, listed=None) -> list[Group]:
        n = len(self.tasks_)
        if listed is not None:
            return listed_pool(listed, 2, n, measured)
        if n <= FULL_POOL_MAX_TASKS:
            pool = (make_group(g) for size in range(2, n + 1) for g in itertools.combinations(self.tasks_, size))
            return [g for g in pool if g not in measured]
        return random_groups(self.tasks_, self.pool_size, rng(seed, "mtg_net", "pool"), min_size=2,
                             exclude=measured)

    def _train_ensemble(self, masks: np.ndarray, targets: np.ndarray, seed: int) -> list:
        """Train one re-initialised network; the ``ensemble`` lowest-training-loss snapshots (eval mode)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Network(len(self.tasks_), int(self.hidden), int(self.layers))
            optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
            X = torch.as_tensor(masks, dtype=torch.float32)
            Y = torch.as_tensor(targets, dtype=torch.float32)
            active = X != 0
            snapshots: list[tuple[float, dict]] = []
            best, bad, epochs = math.inf, 0, 0
            for _ in range(int(self.max_epochs)):
                optimizer.zero_grad()
                loss = (model(X)[active] - Y[active]).abs().mean()
                value = float(loss.item())
                epochs += 1
                # the snapshot holds the parameters this loss was measured at (taken before the step)
                if len(snapshots) < self.ensemble:
                    snapshots.append((value, copy.deepcopy(model.state_dict())))
                else:
                    worst = max(range(len(snapshots)), key=lambda s: snapshots[s][0])
                    if value < snapshots[worst][0]:
                        snapshots[worst] = (value, copy.deepcopy(model.state_dict()))
                loss.backward()
                optimizer.step()
                if value < best:
                    best, bad = value, 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            members = []
            for _, state in sorted(snapshots, key=lambda s: s[0]):
                member = Network(len(self.tasks_), int(self.hidden), int(self.layers))
                member.load_state_dict(state)
                member.eval()
                members.append(member)
        self.last_epochs_, self.last_loss_ = epochs, best
        return members

    @staticmethod
    def _ensemble_predict(members: list, masks: np.ndarray) -> np.ndarray:
        X = torch.as_tensor(np.asarray(masks, dtype=np.float32))
        with torch.no_grad():
            outputs = [np.asarray(member(X), dtype=np.float64) for member in members]
        return np.mean(outputs, axis=0)

    def _fit(self, observations: list[Observation], evidence: Evidence, seed: int) -> None:
        self._check()
        n = len(self.tasks_)
        self.index_ = {t: i for i, t in enumerate(self.tasks_)}
        train: dict[Group, np.ndarray] = {(t,): np.zeros(n) for t in self.tasks_}
        for obs in observations:
            train[make_group(obs.group)] = self._target(obs)
        # the reference's n(n-1)/(2 step) iterations of step groups each (util.py: end_num)
        budget = self.step * (n * (n - 1) // (2 * self.step)) if self.active_budget is None else int(self.active_budget)
        pool = self._pool(set(train), seed, evidence.listed)
        pool_masks = np.array([self._mask(g) for g in pool]).reshape(len(pool), n)
        self.acquired_: list[Group] = []
        iteration = 0
        while len(self.acquired_) < budget and pool:
            members = self._train_ensemble(*self._arrays(train), derive_seed(seed, "mtg_net", iteration))
            preds = self._ensemble_predict(members, pool_masks)
            chosen: list[int] = []
            for shift in range(n):  # the target task, or the next one that still has pool groups
                chosen = select_active(pool_masks, preds, (iteration + shift) % n, self.step)
                if chosen:
                    break
            for row in chosen[: budget - len(self.acquired_)]:
                group = pool[row]
                obs = evidence.oracle(group)
                if make_group(obs.group) != group or set(obs.gains) != set(group):
                    raise UsageError(f"the oracle answered {obs.group} for the group {group}")
                train[group] = self._target(obs)
                self.acquired_.append(group)
            keep = np.setdiff1d(np.arange(len(pool)), chosen)
            pool = [pool[i] for i in keep]
            pool_masks = pool_masks[keep]
            iteration += 1
        self.iterations_ = iteration
        self.training_size_ = len(train)
        self.measured_ = {g: {t: float(y[self.index_[t]]) for t in g} for g, y in train.items()}
        self.members_ = self._train_ensemble(*self._arrays(train), derive_seed(seed, "mtg_net", iteration))

    def _target(self, obs: Observation) -> np.ndarray:
        y = np.zeros(len(self.tasks_))
        for t in obs.group:
            y[self.index_[t]] = float(obs.gains[t])
        return y

    def _arrays(self, train: dict[Group, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        groups = sorted(train, key=lambda g: (len(g), g))
        return np.array([self._mask(g) for g in groups]), np.array([train[g] for g in groups])

    def measured(self, group: Group) -> dict[str, float] | None:
        """A training group's measured gains: the reference's search input is the predictions of the pool rows
        and the measured validation gains of every training row (``util.py``: ``torch.cat([test_output,
        y_train])``), so the search and the serving rule read them, not the network's fit of them."""
        return self.measured_.get(make_group(group))

    # -- predict -------------------------------------------------------------------------------------------
    def _predict(self, group: Group) -> dict[str, float]:
        return self._predict_many([group])[0]

    def _predict_many(self, groups: list[Group]) -> list[dict[str, float]]:
        """One ensemble forward for all the groups."""
        masks = np.array([self._mask(g) for g in groups], dtype=np.float32).reshape(len(groups), len(self.tasks_))
        out = self._ensemble_predict(self.members_, masks) if groups else []
        return [{t: float(y[self.index_[t]]) for t in g} for g, y in zip(groups, out)]

    def describe(self) -> dict:
        if not hasattr(self, "members_"):
            return {}
        return {"oracle_calls": len(self.acquired_), "iterations": self.iterations_,
                "training_groups": self.training_size_, "final_epochs": getattr(self, "last_epochs_", None),
                "final_train_l1": getattr(self, "last_loss_", None)}
