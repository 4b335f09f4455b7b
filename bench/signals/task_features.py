"""Single-task and pairwise task features for an affinity predictor (Ayman et al., "affinity-predictor-local-search",
Section 4 and Appendix B; reference notes ``implementations.md`` Section 8.2).

Trainings: one single-task training (STL) per task and one pairwise MTL training per task pair, both through the
``train`` argument (a method's cached, counted trainer), plus **one** all-task MTL training run directly with
``problem.train`` and a callback that keeps the model (its task-specific output layers give ``W_t``).

``matrix[i, j]`` is the pairwise relative MTL gain (Section 4.2 "relative MTL gain" of the pair)::

    gain_ij = (L_i + L_j - L_{ij}) / (L_i + L_j)

with ``L_t`` task ``t``'s validation loss in its STL training and ``L_{ij}`` the summed validation losses of ``i``
and ``j`` in their pair training (losses on validation: the test split stays unseen). It is symmetric; the
diagonal is 0 (a task paired with itself gains nothing).

``task_features`` (single-task features, Section 4.1 and Appendix B), one value per task:

- ``data_size``: training samples ``|D_t|``; ``target_var`` / ``target_std``: variance and standard deviation of
  the training targets (population form, all target entries pooled);
- ``distance_euclidean`` / ``distance_manhattan`` (and ``distance_hamming`` for binary inputs), plus
  ``*_scaled`` variants (Euclidean and Manhattan after standardising every input attribute): mean distance over
  the distinct pairs of the task's training samples;
- ``curve_grad_<x>`` for ``x`` in ``curve_stages`` (percent): the STL curve's relative change at ``x%`` of the
  training against its end, ``(L(x%) - L_end) / L_end``;
- ``log_fit_a`` / ``log_fit_b``: least-squares fit of ``y_e = a log(e) + b`` to ``y_e = (L_e - L_end) / L_end``
  over the epochs ``e = 1..E`` of the STL curve (Section 4.1: "y is the relative change in prediction loss and x is
  the time steps in training");
- ``stl_loss``: ``L_t``.

``features`` (pairwise, Appendix B.1), ``[recipient i, source j]`` (every one symmetric except ``directed_gain``):

- ``mtl_gain`` (= ``matrix``) and ``directed_gain`` ``(L_i - L_{i|ij}) / L_i``, the recipient's own relative gain
  from the pair (``L_{i|ij}``: ``i``'s validation loss in the pair training; diagonal 0);
- ``size_gap_nS`` ``|D_i - D_j| / (D_i + D_j)``;
- target spread: ``target_std_mean`` ``(s_i + s_j)/2``, ``target_std_gap_nS`` ``|s_i - s_j| / (s_i + s_j)``,
  ``combined_std_nS`` ``s_{i+j} / (s_i + s_j)``, ``combined_std_nP`` ``s_{i+j}^2 / (s_i s_j)`` and the same four
  with variances (``target_var_mean``, ``target_var_gap_nS``, ``combined_var_nS`` ``v_{i+j} / (v_i + v_j)``,
  ``combined_var_nP`` ``v_{i+j}^2 / (v_i v_j)``), ``s_{i+j}`` / ``v_{i+j}`` over the union of both training sets;
- STL curves: ``curve_grad_gap_<x>`` ``|g_i - g_j| / (|g_i| + |g_j|)``, ``log_a_gap`` and ``log_b_gap`` likewise;
- head weights: ``head_dot`` ``W_i . W_j`` (diagonal ``||W_i||^2``), ``W_t`` = weights and biases of task ``t``'s
  output layer in the all-task model;
- distances for each metric ``m`` (``euclidean``, ``manhattan``, ``hamming`` for binary inputs, and the
  ``*_scaled`` variants): ``between_<m>`` ``d_(i<->j)`` (mean over pairs across the two tasks), ``between_<m>_nS``
  ``d_(i<->j) / (d_i + d_j)``, ``between_<m>_nP`` ``d_(i<->j)^2 / (d_i d_j)``, ``combined_<m>_nS``
  ``d_(i+j) / (d_i + d_j)`` and ``combined_<m>_nP`` ``d_(i+j)^2 / (d_i d_j)`` with ``d_(i+j)`` the mean over the
  distinct pairs of the union of both samples (diagonals: ``d_i``, 0.5 and 1 for every ``between`` and
  ``combined`` form);
- ``task_distance``: the groupwise "Group Distance" of a pair (Appendix B.2; reference: Hamming for binary inputs
  such as Chemical, Euclidean otherwise), which the paper takes *between the samples* of the two tasks
  (``between_hamming`` or ``between_euclidean``); ``mean_distance``: the distance between the two tasks' mean
  input vectors (Euclidean; for binary inputs the mean absolute gap per attribute, which is the Hamming distance
  when both means are binary).

Diagonals: 0 for gains, gaps and ``mean_distance``, ``||W_i||^2`` for ``head_dot``, the task's own value for the
means; ``combined_*_nS`` 0.5 and ``combined_*_nP`` 1 (a task combined with itself is itself).

Choices where the paper leaves room:

- Losses are the trainer's validation losses at the selected (best) epoch; the learning curves are the trainings'
  per-epoch *validation* losses (the paper uses test losses; the test split stays unseen here) up to the epoch
  where training stopped; ``x%`` of an ``E``-epoch curve is epoch ``max(1, round(x E / 100))``.
- ``curve_stages`` defaults to 10, 25, 50 and 75 percent (the paper says "at various stages").
- Distances use the training inputs (flattened), at most ``max_samples`` per task (seeded subsample); "binary"
  means every training input value of every task is 0 or 1; Hamming distance is the fraction of differing
  attributes; scaling standardises each attribute over the pooled training inputs of all tasks. The inputs are
  those the models see: the tabular adapters (:mod:`bench.tabular`) already standardise every non-binary column
  with the pooled training statistics, so on those data sets the plain distances are on standardised attributes
  (the paper's are on raw ones) and the ``*_scaled`` variants repeat them.
- Gaps of signed values (``log_a_gap``, ``log_b_gap``, ``curve_grad_gap_<x>``): the paper normalises a gap "by the
  sum of these parameter values"; the fitted ``a`` is usually negative, so the sum of magnitudes
  ``|v_i| + |v_j|`` is used (the paper's form, divided by ``v_i + v_j``, would flip the sign and can divide by a
  sum near 0 when the signs differ).
- ``directed_gain`` is built from the validation *losses*, like ``mtl_gain``; the ground-truth gains the
  predictors learn (:mod:`bench.gains`) use the task *metric*. They coincide where the metric is the loss (the
  paper's MSE and log-loss data sets) and differ elsewhere (ETTm1: loss MSE, metric MAE).
- ``W_t``: the parameters of the last module of the head that holds parameters of its own (the output layer).
  When heads differ in shape, ``head_dot`` is left out (noted in ``info``).
- The inter-task affinity ``Z`` of Fifty et al. is not repeated here (it is the ``tag`` training signal).
- Ratios with a zero denominator are 0.

``info['trainings']`` counts every training asked for (``n`` STL, ``n(n-1)/2`` pairs, 1 all-task);
``info['direct_trainings']`` the one that bypassed ``train``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial.distance import cdist, pdist
from torch import nn

from bench.dataset import Problem, TrainedProblem
from bench.errors import UsageError
from bench.seeding import rng
from bench.signals.base import Affinity, Signal, Trainer
from bench.trainer import Callback, MTLModel
from bench.types import Group, GroupResult, make_group


class ModelCapture(Callback):
    """Keeps a reference to the trained model (the trainer restores the best weights into it before
    ``on_train_end``, so after training it holds the selected epoch's parameters)."""

    def __init__(self) -> None:
        self.model: MTLModel | None = None

    def on_train_start(self, group: Group, model: MTLModel, optimizer: torch.optim.Optimizer) -> None:
        self.model = model


def train_all_tasks(problem: TrainedProblem, seed: int, device: str) -> tuple[MTLModel, GroupResult]:
    """One MTL training of every task, returning the trained model (best epoch) and its result."""
    capture = ModelCapture()
    result = problem.train(problem.task_names, seed, callbacks=[capture], device=device)
    if capture.model is None:
        raise RuntimeError("the trainer did not report its model to the callback")
    return capture.model, result


def output_layer_vector(head: nn.Module) -> torch.Tensor:
    """Weights and biases of a head's output layer: the last submodule holding parameters of its own."""
    layers = [m for m in head.modules() if any(True for _ in m.parameters(recurse=False))]
    if not layers:
        return torch.zeros(0)
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in layers[-1].parameters(recurse=False)])


def curve_gradient(curve: Sequence[float], percent: float) -> float:
    """``(L(x%) - L_end) / L_end`` of a per-epoch loss curve (``x%`` of ``E`` epochs: epoch ``round(x E/100)``)."""
    values = np.asarray(curve, dtype=np.float64)
    epoch = min(len(values), max(1, round(percent * len(values) / 100.0)))
    end = values[-1]
    return float((values[epoch - 1] - end) / end) if end != 0 else 0.0


def log_fit(curve: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``y_e = a log(e) + b``, ``y_e = (L_e - L_end) / L_end``, ``e = 1..E``."""
    values = np.asarray(curve, dtype=np.float64)
    end = values[-1]
    y = (values - end) / end if end != 0 else np.zeros_like(values)
    if len(values) < 2:
        return 0.0, float(y[0]) if len(y) else 0.0
    a, b = np.polyfit(np.log(np.arange(1, len(values) + 1)), y, 1)
    return float(a), float(b)


def _safe_div(num, den) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def distance_blocks(samples: list[np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``within[t]``: mean over distinct pairs of task ``t``'s samples; ``between[i, j]``: mean over all pairs
    across tasks ``i`` and ``j`` (``between[i, i] = within[i]``)."""
    n = len(samples)
    within = np.array([pdist(x, metric).mean() if x.shape[0] > 1 else 0.0 for x in samples])
    between = np.diag(within).astype(np.float64)
    for i, j in itertools.combinations(range(n), 2):
        between[i, j] = between[j, i] = cdist(samples[i], samples[j], metric).mean()
    return within, between


def distance_features(samples: list[np.ndarray], metric: str, suffix: str = "") -> tuple[dict, np.ndarray]:
    """Appendix B.1 distance features of one metric (``between``, ``nS``, ``nP`` and the combined-sample forms)."""
    within, between = distance_blocks(samples, metric)
    m = np.array([x.shape[0] for x in samples], dtype=np.float64)
    wi, wj = within[:, None], within[None, :]
    mi, mj = m[:, None], m[None, :]
    # Mean over the distinct pairs of the union: within-task pairs of both tasks plus every cross pair.
    combined = _safe_div(mi * (mi - 1) * wi + mj * (mj - 1) * wj + 2 * mi * mj * between,
                         (mi + mj) * (mi + mj - 1))
    np.fill_diagonal(combined, within)  # a task combined with itself is itself
    name = f"{metric}{suffix}"
    feats = {
        f"between_{name}": between,
        f"between_{name}_nS": _safe_div(between, wi + wj),
        f"between_{name}_nP": _safe_div(between**2, wi * wj),
        f"combined_{name}_nS": _safe_div(combined, wi + wj),
        f"combined_{name}_nP": _safe_div(combined**2, wi * wj),
    }
    return feats, within


def _gap(values: np.ndarray) -> np.ndarray:
    """``|v_i - v_j| / (|v_i| + |v_j|)``."""
    return _safe_div(np.abs(values[:, None] - values[None, :]), np.abs(values[:, None]) + np.abs(values[None, :]))


class TaskFeatures(Signal):
    """Ayman et al.'s single-task and pairwise task features; ``matrix`` is the pairwise MTL gain."""

    name = "task_features"
    version = "1"
    during_training = False
    defaults = {"max_samples": 256, "curve_stages": (10, 25, 50, 75), "head_weights": True}
    parameters = {"max_samples": [128, 256, 1024]}
    test_parameters = {"max_samples": 32}

    def compute(self, problem: Problem, seed: int, device: str = "cpu", train: Trainer | None = None) -> Affinity:
        problem = self.trained_problem(problem, self.id)
        if self.max_samples < 2:
            raise UsageError(f"task_features needs max_samples >= 2, got {self.max_samples}")
        if any(not 0 < float(x) <= 100 for x in self.curve_stages):
            raise UsageError(f"curve_stages are percentages in (0, 100], got {self.curve_stages}")
        trainer = self.trainer(problem, seed, device, train)
        tasks = problem.task_names
        n = len(tasks)
        stl = {g[0]: r for g, r in self.train_all(trainer, [(t,) for t in tasks]).items()}
        trained = self.train_all(trainer, [make_group(p) for p in itertools.combinations(tasks, 2)])
        pairs = {(a, b): trained[make_group((a, b))] for a, b in itertools.combinations(tasks, 2)}
        info: dict = {"stl_trainings": n, "pair_trainings": len(pairs), "direct_trainings": 0,
                      "extra_forward": 0, "extra_backward": 0}

        # --- single-task features
        data = problem.task_data.train
        loss = np.array([stl[t].val_loss[t] for t in tasks], dtype=np.float64)
        ys = [data.targets[t].detach().cpu().double().numpy().ravel() for t in tasks]
        size = np.array([data.inputs[t].shape[0] for t in tasks], dtype=np.float64)
        single: dict[str, np.ndarray] = {
            "data_size": size,
            "target_var": np.array([y.var() for y in ys]),
            "target_std": np.array([y.std() for y in ys]),
            "stl_loss": loss,
        }
        stages = [float(x) for x in self.curve_stages]
        for x in stages:
            single[f"curve_grad_{x:g}"] = np.array([curve_gradient(stl[t].curves["val_loss"], x) for t in tasks])
        fits = np.array([log_fit(stl[t].curves["val_loss"]) for t in tasks])
        single["log_fit_a"], single["log_fit_b"] = fits[:, 0].copy(), fits[:, 1].copy()

        # --- pairwise features
        gain = np.zeros((n, n))
        directed = np.zeros((n, n))
        for (a, b), result in pairs.items():
            i, j = tasks.index(a), tasks.index(b)
            joint = result.val_loss[a] + result.val_loss[b]
            gain[i, j] = gain[j, i] = float(_safe_div(loss[i] + loss[j] - joint, loss[i] + loss[j]))
            directed[i, j] = float(_safe_div(loss[i] - result.val_loss[a], loss[i]))
            directed[j, i] = float(_safe_div(loss[j] - result.val_loss[b], loss[j]))
        features: dict[str, np.ndarray] = {"mtl_gain": gain, "directed_gain": directed,
                                           "size_gap_nS": _gap(size)}
        for stat, fn in (("std", np.std), ("var", np.var)):
            s = single[f"target_{stat}"]
            union = np.zeros((n, n))
            for i, j in itertools.product(range(n), repeat=2):
                union[i, j] = fn(np.concatenate([ys[i], ys[j]])) if i != j else s[i]
            features[f"target_{stat}_mean"] = (s[:, None] + s[None, :]) / 2.0
            features[f"target_{stat}_gap_nS"] = _gap(s)
            features[f"combined_{stat}_nS"] = _safe_div(union, s[:, None] + s[None, :])
            features[f"combined_{stat}_nP"] = _safe_div(union**2, s[:, None] * s[None, :])
        for x in stages:
            features[f"curve_grad_gap_{x:g}"] = _gap(single[f"curve_grad_{x:g}"])
        features["log_a_gap"] = _gap(single["log_fit_a"])
        features["log_b_gap"] = _gap(single["log_fit_b"])

        # --- distances between training samples
        xs = [data.inputs[t].detach().cpu().double().reshape(data.inputs[t].shape[0], -1).numpy() for t in tasks]
        samples = []
        for t, x in zip(tasks, xs):
            gen = rng(seed, "task_features", "subsample", t)
            keep = np.sort(gen.choice(x.shape[0], self.max_samples, replace=False)) \
                if x.shape[0] > self.max_samples else np.arange(x.shape[0])
            samples.append(x[keep])
        binary = all(np.isin(x, (0.0, 1.0)).all() for x in xs)
        pooled = np.concatenate(xs)
        scale = pooled.std(axis=0)
        scale[scale == 0] = 1.0
        scaled = [(s - pooled.mean(axis=0)) / scale for s in samples]
        for metric, sets, suffix in (("euclidean", samples, ""), ("cityblock", samples, ""),
                                     ("euclidean", scaled, "_scaled"), ("cityblock", scaled, "_scaled")) + \
                ((("hamming", samples, ""),) if binary else ()):
            feats, within = distance_features(sets, metric, suffix)
            label = f"{'manhattan' if metric == 'cityblock' else metric}{suffix}"
            features.update({k.replace(f"{metric}{suffix}", label): v for k, v in feats.items()})
            single[f"distance_{label}"] = within
        features["task_distance"] = features["between_hamming" if binary else "between_euclidean"]
        means = np.stack([x.mean(axis=0) for x in xs])
        diff = means[:, None, :] - means[None, :, :]
        features["mean_distance"] = np.abs(diff).mean(axis=2) if binary else np.linalg.norm(diff, axis=2)

        # --- head weights of one all-task model
        if self.head_weights:
            model, _ = train_all_tasks(problem, seed, device)
            info["direct_trainings"] = 1
            vectors = [output_layer_vector(model.heads[t]) for t in tasks]
            if len({v.numel() for v in vectors}) == 1:
                w = torch.stack(vectors).numpy()
                features["head_dot"] = w @ w.T
            else:
                info["head_dot"] = "left out: the task heads' output layers differ in shape"
        info["trainings"] = info["stl_trainings"] + info["pair_trainings"] + info["direct_trainings"]
        return Affinity(tasks, gain.copy(), self.id, info, features=features, task_features=single)
