"""Grad-TAE: gradient-based estimation of task affinity (Li et al., KDD 2024, "Scalable Multitask Learning Using
Gradient-based Estimation of Task Affinity"; reference notes ``implementations.md`` Sections 4.1-4.2).

1. **Meta-initialisation.** One MTL training of all tasks gives ``theta_0`` (the best epoch's weights). One: the
   paper's ``M`` meta-initialisations (each with its own ``P``; tabular-divergence-features Table 7 compares
   ``M = 1`` and ``M = 5``, and its Table 2's Grad-TAE values for School and Chemical are its ``M = 5`` column) are
   fixed at ``M = 1`` here.
2. **Per-sample gradients, projected.** For every sample ``x`` of task ``t`` the gradient of the task's output
   ``g_t(x) = d f_t(x; theta) / d theta`` at ``theta_0``, over the shared parameters and task ``t``'s head
   (``torch.func``: ``vmap`` over samples of ``jacrev``; one row per output for multi-output heads), projected to
   ``z = P^T g`` with a random Rademacher matrix ``P in {+-1}^{D x d} / sqrt(d)`` (``d = project_dim``; ``D``: the
   shared and every head's parameters, a task's gradient being zero on the other heads).
3. **Linearised fine-tuning for a task subset S.** The first-order Taylor model
   ``f_t(x; theta_0 + P w) ~ f_t(x; theta_0) + z^T w`` is fitted on the concatenated training rows of the
   tasks in ``S`` by minimising ``1/2 ||w||^2 + C sum_rows l(f_0 + z^T w, y)`` with ``l`` the squared error for
   regression tasks (``mse``/``l1``: sklearn ``Ridge(alpha = 1 / (2C), fit_intercept=False)`` on the residual
   ``y - f_0``, the exact minimiser of the Taylor model under MSE) and the logistic / softmax cross-entropy for
   ``bce`` / ``cross_entropy`` tasks (the objective of sklearn ``LogisticRegression(C)``, with the base output
   ``f_0`` as a fixed offset and no intercept; solved with L-BFGS).
4. **Affinity.** Each member ``i`` of ``S`` is scored by its task loss on its validation data under the fitted
   linear model, negated so that higher is better; per task the scores over the subsets holding it are
   z-normalised, ``(x - mu) / (sigma + 1e-3)``, and (reference Section 4.2 (b))::

       T[i, j] = mean over sampled subsets S with i, j in S of the normalised score of i on S

``matrix = T`` (recipient ``i``, source ``j``): how well ``i`` does, relative to its own average, in the subsets
that contain ``j``. Its diagonal is the mean of task ``i``'s own z-scores, 0 by construction.
``features['symmetric'] = (T + T^T) / 2`` with a zero diagonal is what the reference clusters (Section 4.2 step 4).

Choices where the paper and the reference leave room:

- Gradients of the *output* (the graph version of the reference), with batch-norm/dropout in ``eval`` mode.
- ``project_dim = 100`` by default (the reference text scripts use 200; the models here are small). The projection
  is drawn per parameter tensor from seeded generators, so it does not depend on how samples are chunked.
- The base output ``f_0`` enters the fit as an offset (a true first-order Taylor model); the reference's graph
  script fits ``LogisticRegression`` without it and then evaluates the network at ``theta_0 + P w``. The
  estimate here is the linear model's own prediction on validation samples (no extra network evaluation).
- ``C = 0.01`` as in the reference (``LogisticRegression(C=1e-2)``); for squared errors the same objective scale
  gives ``Ridge(alpha = 1/(2C) = 50)``. A subset mixing loss types is fitted jointly by L-BFGS.
- The reference fits on 80% of the training rows and scores the remaining 20%; here the fit uses the training split
  and the score the validation split (at most ``max_samples`` samples per task and split, seeded subsample).
- Subsets: ``n_subsets`` (0: ``4 n``) distinct random subsets of ``subset_size`` tasks (0: ``max(2, ceil(n/2))``),
  seeded; all subsets when there are no more of that size than asked for; then, for every pair of tasks that no
  subset holds, one more subset with that pair and random other members, so that every ``T[i, j]`` is defined.
- ``sigma`` is the population standard deviation.

``info`` counts the all-task training (``trainings``: 1, run directly with ``problem.train``), the subsets and the
per-sample passes (``extra_forward`` / ``extra_backward``: samples x outputs Jacobian rows).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.linear_model import Ridge

from bench.dataset import Problem
from bench.errors import UsageError
from bench.metrics import loss_fn
from bench.seeding import derive_seed, rng
from bench.signals.base import Affinity, Signal, Trainer
from bench.signals.task_features import train_all_tasks
from bench.trainer import MTLModel

REGRESSION_LOSSES = ("mse", "l1")
CLASSIFICATION_LOSSES = ("bce", "cross_entropy")
_CACHE_ENTRIES = 1 << 25
"""Projection entries kept in memory (128 MiB of float32); beyond that blocks are redrawn per chunk."""
_CHUNK_BYTES = 1 << 27


class Projector:
    """``z = P^T g`` with ``P`` a Rademacher matrix ``{+-1}/sqrt(d)``, one block per named parameter tensor.

    Block ``name`` is drawn from a generator seeded by ``(seed, name)``, so any subset of parameters and any sample
    chunking see the same matrix.
    """

    def __init__(self, seed: int, dim: int, sizes: dict[str, int], device: torch.device) -> None:
        self.seed, self.dim, self.device = seed, dim, device
        # Cached blocks, plus their stacked copies (shared parameters once, each head once): twice the entries.
        self.cache_all = 2 * sum(sizes.values()) * dim <= _CACHE_ENTRIES
        self._cache: dict[str, torch.Tensor] = {}
        self._stacked: dict[tuple[str, ...], torch.Tensor] = {}

    def block(self, name: str, numel: int) -> torch.Tensor:
        if name in self._cache:
            return self._cache[name]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "grad_tae", "projection", name))
        signs = torch.randint(0, 2, (numel, self.dim), generator=gen, dtype=torch.int8)
        block = (signs.float() * 2.0 - 1.0).div_(math.sqrt(self.dim)).to(self.device)
        if self.cache_all:
            self._cache[name] = block
        return block

    def project(self, grads: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        """``(rows, d)``: the sum over the named blocks of ``grads[name] (rows, numel) @ P_name``."""
        names = list(grads)
        if not names:
            return torch.zeros(rows, self.dim, device=self.device)
        flat = torch.cat([grads[n].reshape(rows, -1) for n in names], dim=1)
        if self.cache_all:
            # One matrix product per chunk (small products cost mostly dispatch overhead).
            key = tuple(names)
            if key not in self._stacked:
                self._stacked[key] = torch.cat([self.block(n, grads[n].reshape(rows, -1).shape[1]) for n in names])
            block = self._stacked[key]
            return flat.to(block.dtype) @ block
        out = torch.zeros(rows, self.dim, device=self.device)
        start = 0
        for n in names:
            width = grads[n].reshape(rows, -1).shape[1]
            block = self.block(n, width)
            out += flat[:, start : start + width].to(block.dtype) @ block
            start += width
        return out


def output_jacobians(model: MTLModel, task: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Outputs ``(N, K)`` of ``task`` on samples ``x`` and the per-sample Jacobians ``{name: (N, K, *shape)}``
    with respect to the shared parameters and the task's head (vectorised: ``vmap`` of ``jacrev``)."""
    params = {**model.shared_parameters(), **model.task_parameters(task)}
    params = {n: p.detach() for n, p in params.items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}

    def output(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**frozen, **p}, ({task: xi.unsqueeze(0)},), strict=False)
        return out[task].reshape(-1)

    with torch.no_grad():
        base = model({task: x})[task].reshape(x.shape[0], -1)
        jac = torch.func.vmap(torch.func.jacrev(output), in_dims=(None, 0))(params, x)
    return base, jac


def sample_subsets(n: int, size: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """Distinct random ``size``-subsets of ``range(n)`` (all of them when there are at most ``count``), plus one
    subset per pair that none holds (so every pair co-occurs at least once)."""
    gen = rng(seed, "grad_tae", "subsets")
    total = math.comb(n, size)
    if total <= count:
        subsets = list(itertools.combinations(range(n), size))
    else:
        seen: set[tuple[int, ...]] = set()
        subsets = []
        for _ in range(50 * count):
            s = tuple(sorted(int(v) for v in gen.choice(n, size=size, replace=False)))
            if s not in seen:
                seen.add(s)
                subsets.append(s)
            if len(subsets) == count:
                break
    covered = {p for s in subsets for p in itertools.combinations(s, 2)}
    for i, j in itertools.combinations(range(n), 2):
        if (i, j) in covered:
            continue
        others = [k for k in range(n) if k not in (i, j)]
        extra = gen.choice(others, size=size - 2, replace=False).tolist() if size > 2 else []
        s = tuple(sorted([i, j, *map(int, extra)]))
        subsets.append(s)
        covered.update(itertools.combinations(s, 2))
    return subsets


def affinity_from_scores(n: int, subsets: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Reference Section 4.2 (b): ``scores[s][m]`` is member ``subsets[s][m]``'s performance (higher is better) on
    subset ``s``; z-normalised per task, ``T[i, j]`` is the mean normalised score of ``i`` over subsets with ``j``."""
    values: list[list[float]] = [[] for _ in range(n)]
    for subset, score in zip(subsets, scores):
        for task, value in zip(subset, score):
            values[task].append(float(value))
    mu = np.array([np.mean(v) if v else 0.0 for v in values])
    sigma = np.array([np.std(v) if v else 0.0 for v in values])
    total = np.zeros((n, n))
    count = np.zeros((n, n))
    for subset, score in zip(subsets, scores):
        members = list(subset)
        z = (np.asarray(score, dtype=np.float64) - mu[members]) / (sigma[members] + 1e-3)
        for a, i in enumerate(members):
            total[i, members] += z[a]
            count[i, members] += 1
    if (count == 0).any():
        missing = [(i, j) for i, j in zip(*np.nonzero(count == 0))]
        raise UsageError(f"grad_tae: no subset holds the pairs {missing[:6]}")
    return total / count


def fit_linearised(blocks: Sequence[dict], C: float) -> np.ndarray:
    """``argmin_w 1/2 ||w||^2 + C sum_rows l(f0 + Z w, y)`` over the blocks (one per task of the subset).

    Each block holds ``Z`` ``(N, K, d)``, ``f0`` ``(N, K)``, ``y`` and the task's ``loss`` name. Regression losses
    only: closed form via ``Ridge(alpha=1/(2C))`` on the residual; otherwise L-BFGS on the exact objective.
    """
    d = blocks[0]["Z"].shape[2]
    if all(b["loss"] in REGRESSION_LOSSES for b in blocks):
        X = np.concatenate([b["Z"].reshape(-1, d) for b in blocks])
        r = np.concatenate([(b["y"].reshape(b["f0"].shape) - b["f0"]).reshape(-1) for b in blocks])
        return Ridge(alpha=1.0 / (2.0 * C), fit_intercept=False).fit(X, r).coef_.astype(np.float64)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = 0.5 * w @ w, w.copy()
        for b in blocks:
            u = b["f0"] + b["Z"] @ w  # (N, K)
            if b["loss"] in REGRESSION_LOSSES:
                res = u - b["y"].reshape(u.shape)
                value += C * float((res**2).sum())
                grad += C * 2.0 * np.einsum("nk,nkd->d", res, b["Z"])
            elif b["loss"] == "bce":
                y = b["y"].reshape(u.shape)
                value += C * float((np.logaddexp(0.0, u) - y * u).sum())
                grad += C * np.einsum("nk,nkd->d", 1.0 / (1.0 + np.exp(-u)) - y, b["Z"])
            else:  # cross_entropy: softmax over the K logits, integer labels
                labels = b["y"].reshape(-1).astype(np.int64)
                shift = u - u.max(axis=1, keepdims=True)
                logp = shift - np.log(np.exp(shift).sum(axis=1, keepdims=True))
                value += -C * float(logp[np.arange(len(labels)), labels].sum())
                p = np.exp(logp)
                p[np.arange(len(labels)), labels] -= 1.0
                grad += C * np.einsum("nk,nkd->d", p, b["Z"])
        return value, grad

    result = minimize(objective, np.zeros(d), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-12})
    return result.x


class GradTAE(Signal):
    """Grad-TAE task affinity from a linearised model at the all-task meta-initialisation; see the module doc."""

    name = "grad_tae"
    version = "1"
    during_training = False
    defaults = {"project_dim": 100, "n_subsets": 0, "subset_size": 0, "C": 0.01, "max_samples": 512}
    parameters = {"project_dim": [50, 100, 200], "n_subsets": [0, 100]}
    test_parameters = {"project_dim": 16, "max_samples": 32}

    def _projected(self, model: MTLModel, task: str, x: torch.Tensor, projector: Projector
                   ) -> tuple[np.ndarray, np.ndarray]:
        """``Z (N, K, d)`` and ``f0 (N, K)`` for one task's samples, in chunks bounded in memory."""
        n_params = sum(p.numel() for p in {**model.shared_parameters(), **model.task_parameters(task)}.values())
        chunk = max(1, _CHUNK_BYTES // (4 * max(1, n_params)))
        zs, f0s = [], []
        for start in range(0, x.shape[0], chunk):
            base, jac = output_jacobians(model, task, x[start : start + chunk])
            rows, k = base.shape
            flat = {n: j.reshape(rows * k, -1) for n, j in jac.items()}
            # Shared and head blocks apart: the stacked shared block is then cached once for all tasks.
            head = {n: g for n, g in flat.items() if not n.startswith("encoder.")}
            z = projector.project({n: g for n, g in flat.items() if n not in head}, rows * k) \
                + projector.project(head, rows * k)
            zs.append(z.reshape(rows, k, -1).double().cpu().numpy())
            f0s.append(base.double().cpu().numpy())
        return np.concatenate(zs), np.concatenate(f0s)

    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        problem = self.trained_problem(problem, self.id)
        if self.project_dim < 1 or self.C <= 0 or self.max_samples < 1 or self.n_subsets < 0:
            raise UsageError("grad_tae needs project_dim >= 1, C > 0, max_samples >= 1 and n_subsets >= 0")
        tasks = problem.task_names
        n = len(tasks)
        if n < 2:
            raise UsageError("grad_tae needs at least two tasks")
        size = self.subset_size or max(2, math.ceil(n / 2))
        if not 2 <= size <= n:
            raise UsageError(f"grad_tae subset_size must be in [2, {n}], got {size}")
        if size == n and n > 2:  # one possible subset: every task's z-scored score would be 0, the affinity all 0
            raise UsageError(f"grad_tae subset_size={n} leaves one subset of the {n} tasks, which says nothing about "
                             f"pairs; choose a size in [2, {n - 1}]")
        losses = {t: problem.task(t).loss for t in tasks}
        unknown = [t for t, name in losses.items() if name not in REGRESSION_LOSSES + CLASSIFICATION_LOSSES]
        if unknown:
            raise UsageError(f"grad_tae has no linearised fit for the losses of tasks {unknown}")

        model, result = train_all_tasks(problem, seed, device)
        model.eval()
        dev = next(model.parameters()).device
        sizes = {n_: p.numel() for n_, p in model.named_parameters()}
        projector = Projector(seed, self.project_dim, sizes, dev)
        data: dict[str, dict[str, dict]] = {"train": {}, "val": {}}
        rows = 0
        for split_name, blocks in data.items():
            split = getattr(problem.task_data, split_name)
            for t in tasks:
                x, y = split.inputs[t], split.targets[t]
                gen = rng(seed, "grad_tae", "samples", split_name, t)
                if x.shape[0] > self.max_samples:
                    keep = torch.as_tensor(np.sort(gen.choice(x.shape[0], self.max_samples, replace=False)))
                    x, y = x[keep.to(x.device)], y[keep.to(y.device)]
                z, f0 = self._projected(model, t, x.to(dev), projector)
                rows += z.shape[0] * z.shape[1]
                blocks[t] = {"Z": z, "f0": f0, "y": y.detach().cpu().double().numpy(),
                                       "y_tensor": y.detach().cpu(), "loss": losses[t]}

        subsets = sample_subsets(n, size, self.n_subsets or 4 * n, seed)
        scores = []
        for subset in subsets:
            w = fit_linearised([data["train"][tasks[i]] for i in subset], self.C)
            score = []
            for i in subset:
                block = data["val"][tasks[i]]
                pred = torch.from_numpy(block["f0"] + block["Z"] @ w)  # (N, K): the linear model's outputs
                score.append(-float(loss_fn(block["loss"])(pred, block["y_tensor"])))
            scores.append(score)
        matrix = affinity_from_scores(n, subsets, scores)
        symmetric = (matrix + matrix.T) / 2.0
        np.fill_diagonal(symmetric, 0.0)
        info = {"trainings": 1, "direct_trainings": 1, "training_wall_s": result.wall_time_s,
                "n_subsets": len(subsets), "subset_size": size, "project_dim": self.project_dim,
                "extra_forward": rows, "extra_backward": rows}
        return Affinity(tasks, matrix, self.id, info, features={"symmetric": symmetric})
