"""Training losses and evaluation metrics, by name (a task names its own in :class:`bench.types.Task`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.errors import unknown_name

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and target as matching tensors (one output per sample: both of shape (B,)).

    The common case, a (B, 1) prediction for a (B,) target of the same dtype, takes a short path: this runs once per
    task per training step, so its cost shows in the trainer's per-step overhead.
    """
    if pred.ndim == 2 and pred.shape[1] == 1 and target.ndim == 1:
        pred = pred.squeeze(-1)
    elif pred.shape != target.shape:
        pred = pred.reshape(target.shape[0], -1).squeeze(-1)
        target = target.reshape(target.shape[0], -1).squeeze(-1)
    return pred, target if target.dtype == pred.dtype else target.to(pred.dtype)


def _mse(pred, target):
    return F.mse_loss(*_flat(pred, target))


def _l1(pred, target):
    return F.l1_loss(*_flat(pred, target))


def _cross_entropy(pred, target):
    return F.cross_entropy(pred, target.reshape(-1).long())


def _bce(pred, target):
    return F.binary_cross_entropy_with_logits(*_flat(pred, target))


LOSSES: dict[str, LossFn] = {"mse": _mse, "l1": _l1, "cross_entropy": _cross_entropy, "bce": _bce}


def _rows(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1) if values.ndim > 1 else values


ROW_LOSSES: dict[str, LossFn] = {
    "mse": lambda p, t: _rows((lambda a, b: (a - b) ** 2)(*_flat(p, t))),
    "l1": lambda p, t: _rows((lambda a, b: (a - b).abs())(*_flat(p, t))),
    "bce": lambda p, t: _rows(F.binary_cross_entropy_with_logits(*_flat(p, t), reduction="none")),
    "cross_entropy": lambda p, t: F.cross_entropy(p, t.reshape(-1).long(), reduction="none"),
}
"""Per-sample losses (shape ``(B,)``): their mean over the rows is the named loss. Every sample has the same number
of elements, so a masked mean over rows (the batched trainer's padded batches) is the mean the loss takes."""


def row_loss_fn(name: str) -> LossFn:
    if name not in ROW_LOSSES:
        raise unknown_name("loss", name, ROW_LOSSES)
    return ROW_LOSSES[name]


def _error(pred, target):
    """Classification error in percent (multi-class logits, or one logit for a binary task)."""
    target = target.reshape(-1)
    if pred.ndim == 1 or pred.shape[-1] == 1:
        label = (pred.reshape(-1) > 0).to(target.dtype)
    else:
        label = pred.argmax(dim=-1).to(target.dtype)
    return 100.0 * (label != target).double().mean()


def _logloss(pred, target):
    """Binary log-loss (cross-entropy) of one logit per sample against 0/1 targets."""
    return _bce(pred.double(), target.double())


def _auc(pred, target):
    """Area under the ROC curve in percent (one score per sample, 0/1 targets), by the rank statistic with ties
    counted one half (``sklearn.metrics.roc_auc_score``); NaN when the targets hold one class only."""
    from sklearn.metrics import roc_auc_score

    pred, target = _flat(pred.double(), target.double())
    y = target.detach().cpu().numpy()
    if y.min() == y.max():
        return torch.tensor(float("nan"), dtype=torch.float64)
    return torch.tensor(100.0 * roc_auc_score(y, pred.detach().cpu().numpy()), dtype=torch.float64)


METRICS: dict[str, LossFn] = {
    "logloss": _logloss,
    "auc": _auc,
    "mse": lambda p, t: _mse(p.double(), t.double()),
    "mae": lambda p, t: _l1(p.double(), t.double()),
    "rmse": lambda p, t: _mse(p.double(), t.double()).sqrt(),
    "error": _error,
}

# The metrics where larger values are better; every other metric is a loss or an error.
HIGHER_IS_BETTER = frozenset({"auc"})


def loss_fn(name: str) -> LossFn:
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    return LOSSES[name]


def metric_fn(name: str) -> LossFn:
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    return METRICS[name]
