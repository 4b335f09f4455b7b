"""SCA: sample-wise convergence-based affinity (Thakur et al., "Efficient Task Grouping Through Sample-wise
Optimisation Landscape Analysis", Section 4.1, Eq. 1, 5, 16 and 17).

No training: at the model's initialisation ``theta_0`` every task-specific training sample ``(x_s, y_s^t)`` moves
the *shared* parameters by one gradient step to its sample-wise optimum (Eq. 1 / Eq. 5)::

    theta_s^{t*} = theta_0 - eta * grad_theta l_t(f_{theta, phi_t}(x_s), y_s^t)

and the distance of two tasks is the mean L1 distance of their sample-wise optima over ``n`` samples (Eq. 16)::

    a_{ij} = (1/n) sum_s || theta_s^{i*} - theta_s^{j*} ||_1 = (eta/n) sum_s || g_s^i - g_s^j ||_1

Each row is then normalised into the affinity the paper clusters on (Eq. 17)::

    A_{ij} = 1 - a_{ij} / max_k a_{ik}

so ``A_{ij}`` lies in ``[0, 1]``; larger means the two tasks' sample-wise optima are closer (easier joint
optimisation, Theorem 4.2). The diagonal is 1 (``a_{ii} = 0``); the task farthest from ``i`` gets 0 in row ``i``.
``matrix[i, j] = A_{ij}``: row ``i`` (recipient) is normalised by its own farthest task, so the matrix is not
symmetric. ``features['distance']`` holds the raw ``a_{ij}`` (symmetric, with ``eta`` = the problem's learning
rate).

Choices where the paper leaves room (all documented here, none changes Eq. 16-17):

- ``theta_0`` is exactly the initialisation of the all-task training under the same seed: the model is built by
  ``model_factory(make_group(tasks))`` after ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``, as
  :func:`bench.trainer.train_group` does. The task heads ``phi_t`` stay at their initial values (only the shared
  parameters, the encoder, have sample-wise optima; Section 4.1 "concentrates on the loss landscape of theta").
- ``eta`` is the problem's learning rate (Eq. 1 writes no ``eta``; Eq. 4-5 do). It is a common factor of every
  ``a_{ij}`` and cancels in Eq. 17.
- Samples: ``n_samples`` (paper: N = 100) training samples per task, drawn without replacement by a generator
  derived from the seed. With shared inputs (one input tensor for all tasks) the same ``n`` samples serve every
  task, which is the MTL decomposition of Section 4.1 (sample ``x_s`` with labels ``y_s^t``). With per-task inputs
  the ``s``-th sample of task ``i`` is paired with the ``s``-th sample of task ``j``: the meta-learning unit of the
  paper's "extension to meta learning" (supplement Eq. 2); ``n`` is capped by the largest task's training set,
  and a task with fewer samples repeats its distinct ones in order up to ``n`` (:func:`sample_indices`; capping
  every task at the smallest one's size made School's distances rest on 16 samples per task, and two draws of
  them agreed to a rank correlation of 0.77-0.80, against 0.985-0.988 with the repeats).
- The model is evaluated in ``eval`` mode (a single sample has no batch statistics; dropout would make the optimum
  random). At initialisation batch-norm running statistics are the identity, so this only removes dropout noise.
- Per-sample gradients are vectorised with ``torch.func`` (``vmap`` over samples of ``jacrev`` over the vector of
  per-task losses), in chunks of samples so that memory stays bounded for large encoders.
- Rows whose distances are all zero (identical tasks) become all ones (``0/0`` read as "no task is farther").

Cost: one model initialisation and ``n`` per-sample forward passes with one backward pass per task each;
``info`` counts them (``extra_forward``: per-sample forward passes of the encoder, ``extra_backward``: per-sample
per-task backward passes).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.dataset import Problem, TrainedProblem
from bench.errors import UsageError
from bench.metrics import loss_fn
from bench.seeding import rng
from bench.signals.base import Affinity, Signal, Trainer
from bench.trainer import MTLModel, resolve_device
from bench.types import make_group

_CHUNK_BYTES = 1 << 27
"""Memory allowed for one chunk of per-sample gradients (samples x tasks x shared parameters x 4 bytes)."""


def sample_indices(problem: TrainedProblem, n_samples: int, seed: int, *names: object) -> dict[str, np.ndarray]:
    """Per task, ``n`` training-sample indices (shared inputs: the same indices for every task).

    Shared inputs: ``n = min(n_samples, training set)`` distinct samples. Per-task inputs: ``n = min(n_samples,
    largest training set)``; every task draws ``min(n, its size)`` distinct samples and repeats them in the drawn
    order up to ``n``, so that the ``s``-th samples of all tasks can be paired and no task is cut to the smallest
    one's size (School's smallest task would leave 16 samples of each of 139 tasks).
    """
    train = problem.task_data.train
    tasks = problem.task_names
    sizes = [int(train.inputs[t].shape[0]) for t in tasks]
    empty = [t for t, size in zip(tasks, sizes) if size == 0]
    if empty:
        raise UsageError(f"sca: tasks {empty[:6]} have no training samples")
    gen = rng(seed, *names)
    if train.shared(tasks):
        idx = np.sort(gen.choice(sizes[0], size=min(n_samples, sizes[0]), replace=False))
        return {t: idx for t in tasks}
    n = min(n_samples, max(sizes))
    return {t: np.resize(gen.choice(size, size=min(n, size), replace=False), n) for t, size in zip(tasks, sizes)}


def initial_model(problem: TrainedProblem, seed: int, device: torch.device) -> MTLModel:
    """The all-task model at initialisation, exactly as :func:`bench.trainer.train_group` builds it for ``seed``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = problem.model_factory(make_group(problem.task_names)).to(device)
    model.eval()
    return model


def per_sample_loss_gradients(model: MTLModel, tasks: tuple[str, ...], loss_names: dict[str, str],
                              inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                              shared_inputs: bool) -> torch.Tensor:
    """``G[s, t, :]``: the gradient of task ``t``'s loss on its ``s``-th sample w.r.t. the shared parameters.

    ``inputs[t]`` / ``targets[t]`` hold the (already selected) samples, first axis = sample. Vectorised with
    ``torch.func.vmap`` over samples of ``torch.func.jacrev`` over the vector of per-task losses.
    """
    shared = {n: p.detach() for n, p in model.shared_parameters().items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in shared}
    fns = {t: loss_fn(loss_names[t]) for t in tasks}

    def losses(params: dict[str, torch.Tensor], xs: dict[str, torch.Tensor],
               ys: dict[str, torch.Tensor]) -> torch.Tensor:
        if shared_inputs:
            x = xs[tasks[0]].unsqueeze(0)
            batch = dict.fromkeys(tasks, x)  # one tensor object: the model encodes it once
        else:
            batch = {t: xs[t].unsqueeze(0) for t in tasks}
        out = torch.func.functional_call(model, {**frozen, **params}, (batch,), strict=False)
        return torch.stack([fns[t](out[t], ys[t].unsqueeze(0)) for t in tasks])

    per_sample = torch.func.vmap(torch.func.jacrev(losses), in_dims=(None, 0, 0))
    xs = {tasks[0]: inputs[tasks[0]]} if shared_inputs else dict(inputs)
    grads = per_sample(shared, xs, dict(targets))
    n = next(iter(targets.values())).shape[0]
    return torch.cat([g.reshape(n, len(tasks), -1) for g in grads.values()], dim=2)


def pairwise_l1(grads: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = sum_s || G[s, i] - G[s, j] ||_1`` for ``G`` of shape ``(samples, tasks, params)``."""
    n_tasks = grads.shape[1]
    out = torch.zeros(n_tasks, n_tasks, dtype=torch.float64, device=grads.device)
    for i in range(n_tasks):
        out[i] = (grads[:, i : i + 1, :] - grads).abs().sum(dim=(0, 2), dtype=torch.float64)
    return out


def row_normalise(distance: np.ndarray) -> np.ndarray:
    """Eq. 17: ``A_ij = 1 - a_ij / max_k a_ik`` (an all-zero row gives ones)."""
    peak = distance.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(peak > 0, distance / np.where(peak > 0, peak, 1.0), 0.0)
    return 1.0 - ratio


class SCA(Signal):
    """Sample-wise convergence-based affinity (SCA, Eq. 16-17); see the module docstring."""

    name = "sca"
    version = "2"
    during_training = False
    defaults = {"n_samples": 100}
    parameters = {"n_samples": [50, 100, 200]}
    test_parameters = {"n_samples": 16}

    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        problem = self.trained_problem(problem, self.id)
        if self.n_samples < 1:
            raise UsageError(f"sca needs n_samples >= 1, got {self.n_samples}")
        dev = resolve_device(device)
        tasks = problem.task_names
        train_split = problem.task_data.train
        shared_inputs = train_split.shared(tasks)
        indices = sample_indices(problem, self.n_samples, seed, "sca", "samples")
        n = len(indices[tasks[0]])
        model = initial_model(problem, seed, dev)
        n_shared = sum(p.numel() for p in model.shared_parameters().values())
        chunk = max(1, _CHUNK_BYTES // (4 * max(1, len(tasks) * n_shared)))
        loss_names = {t: problem.task(t).loss for t in tasks}
        total = torch.zeros(len(tasks), len(tasks), dtype=torch.float64, device=dev)
        for start in range(0, n, chunk):
            sel = {t: torch.as_tensor(indices[t][start : start + chunk]) for t in tasks}
            # Index on the tensors' own device; never write into the problem's tensors.
            xs = {t: train_split.inputs[t][sel[t].to(train_split.inputs[t].device)].to(dev) for t in tasks}
            ys = {t: train_split.targets[t][sel[t].to(train_split.targets[t].device)].to(dev) for t in tasks}
            grads = per_sample_loss_gradients(model, tasks, loss_names, xs, ys, shared_inputs)
            total += pairwise_l1(grads)
        # Eq. 16 with theta_s^{t*} = theta_0 - eta g_s^t: the distance of two optima is eta times that of gradients.
        distance = (float(problem.config.lr) / n) * total.cpu().numpy()
        distance = (distance + distance.T) / 2.0  # exact symmetry (floating-point summation order)
        np.fill_diagonal(distance, 0.0)
        matrix = row_normalise(distance)
        info = {"n_samples": n, "distinct_samples": {t: len(np.unique(indices[t])) for t in tasks},
                "extra_forward": n if shared_inputs else n * len(tasks),
                "extra_backward": n * len(tasks), "trainings": 0, "eta": float(problem.config.lr)}
        return Affinity(tasks, matrix, self.id, info, features={"distance": distance})

