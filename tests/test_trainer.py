"""The MTL trainer (bench.trainer): determinism, data layouts, early stopping, schedules, devices and the callback
interface that signals (TAG, ETAP, transfer gain, ...) rely on."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError
from bench.trainer import (
    Callback,
    MTLModel,
    Split,
    TaskData,
    TrainConfig,
    resolve_device,
    train_group,
)
from bench.types import Task

ALL = ("t0", "t1", "t2", "t3")


def _train(problem, group, seed=0, callbacks=(), **config):
    cfg = dataclasses.replace(problem.config, **config) if config else problem.config
    tasks = {t.name: t for t in problem.tasks}
    return train_group(problem.model_factory, problem.task_data, tasks, group, cfg, seed, callbacks=callbacks)


def _f(x) -> float:
    return float(x.detach())


def _same(a, b):
    """Two results agree exactly in everything but the wall time."""
    assert a.group == b.group and a.seed == b.seed
    assert a.val == b.val
    assert a.test == b.test
    assert a.val_loss == b.val_loss
    assert a.curves == b.curves
    assert (a.epochs_run, a.best_epoch) == (b.epochs_run, b.best_epoch)


def _close(a, b, tol=1e-6):
    assert (a.epochs_run, a.best_epoch) == (b.epochs_run, b.best_epoch)
    for field in ("val", "test", "val_loss"):
        got, want = getattr(a, field), getattr(b, field)
        assert got.keys() == want.keys()
        for t in want:
            assert got[t] == pytest.approx(want[t], rel=tol, abs=tol), (field, t)
    for name, series in b.curves.items():
        assert a.curves[name] == pytest.approx(series, rel=tol, abs=tol), name


# --------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_result(tiny_problem):
    a = tiny_problem.train(("t0", "t1", "t2"), seed=3)
    b = tiny_problem.train(("t0", "t1", "t2"), seed=3)
    _same(a, b)
    assert a.epochs_run == len(a.curves["val_loss"]) == len(a.curves["train_loss"]) == len(a.curves["lr"]) > 0
    assert a.device == "cpu" and not a.cached and a.wall_time_s > 0


def test_different_seed_gives_different_result(tiny_problem):
    a = tiny_problem.train(("t0", "t1", "t2"), seed=3)
    c = tiny_problem.train(("t0", "t1", "t2"), seed=4)
    assert a.curves["train_loss"] != c.curves["train_loss"]
    assert a.val != c.val and a.test != c.test


def test_training_leaves_global_rng_alone(tiny_problem):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    tiny_problem.train(("t0",), seed=0)
    assert torch.equal(before, torch.get_rng_state())


# -------------------------------------------------------------------------------------------------- data layouts


class _BatchProbe(Callback):
    def __init__(self):
        self.steps = []

    def before_step(self, ctx):
        self.steps.append(
            {
                "epoch": ctx.epoch,
                "step": ctx.step,
                "ids": [id(ctx.batch.inputs[t]) for t in ctx.group],
                "sizes": {t: ctx.batch.inputs[t].shape[0] for t in ctx.group},
                "target_sizes": {t: ctx.batch.targets[t].shape[0] for t in ctx.group},
            }
        )


def _assert_finite(result, group):
    assert result.group == group
    for t in group:
        assert math.isfinite(result.val[t]) and math.isfinite(result.test[t]) and math.isfinite(result.val_loss[t])
        assert result.val[t] > 0 and result.test[t] > 0  # MSE on noisy targets
    assert all(math.isfinite(v) for v in result.curves["train_loss"] + result.curves["val_loss"])


def test_per_task_inputs_train_with_one_batch_per_task(tiny_problem):
    split = tiny_problem.task_data.train
    assert not split.shared(ALL)
    probe = _BatchProbe()
    result = tiny_problem.train(ALL, seed=0, callbacks=[probe])
    _assert_finite(result, ALL)
    # smoke: 24 samples per task, batch 16 -> 2 steps per epoch; steps are numbered globally
    assert [s["step"] for s in probe.steps] == list(range(len(probe.steps)))
    assert len(probe.steps) == 2 * result.epochs_run
    assert sum(s["epoch"] == 0 for s in probe.steps) == 2
    for s in probe.steps:
        assert len(set(s["ids"])) == len(ALL)  # every task its own tensor
        assert s["sizes"] == s["target_sizes"]
    assert [s["sizes"]["t0"] for s in probe.steps[:2]] == [16, 8]


def test_shared_inputs_use_one_tensor_for_all_tasks(tiny_shared_problem):
    split = tiny_shared_problem.task_data.train
    assert split.shared(ALL)
    probe = _BatchProbe()
    result = tiny_shared_problem.train(ALL, seed=0, callbacks=[probe])
    _assert_finite(result, ALL)
    assert len(probe.steps) == 2 * result.epochs_run
    for s in probe.steps:
        assert len(set(s["ids"])) == 1  # one tensor object, encoded once
        assert s["sizes"] == s["target_sizes"]


def test_per_task_inputs_of_different_sizes_cycle_the_smaller_task():
    """An epoch is one pass over the largest task; a smaller task restarts a fresh permutation when exhausted."""
    xa, xb = torch.arange(10.0).reshape(10, 1), torch.arange(100.0, 130.0).reshape(30, 1)
    split = Split({"a": xa, "b": xb}, {"a": xa[:, 0].clone(), "b": xb[:, 0].clone()})
    data = TaskData(split, split, split)
    tasks = {"a": Task("a"), "b": Task("b")}

    def factory(group):
        return MTLModel(nn.Linear(1, 2), {t: nn.Linear(2, 1) for t in group})

    seen = {"a": [], "b": []}

    class Record(Callback):
        def before_step(self, ctx):
            if ctx.epoch == 0:
                for t in ("a", "b"):
                    seen[t].append(ctx.batch.inputs[t][:, 0].tolist())
                    # targets travel with their inputs
                    assert torch.equal(ctx.batch.targets[t], ctx.batch.inputs[t][:, 0])

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, patience=None)
    train_group(factory, data, tasks, ("a", "b"), cfg, seed=0, callbacks=[Record()])
    assert len(seen["b"]) == math.ceil(30 / 8)
    assert sorted(v for batch in seen["b"] for v in batch) == list(range(100, 130))
    assert [len(b) for b in seen["a"]] == [8, 2, 8, 2]
    assert sorted(seen["a"][0] + seen["a"][1]) == list(range(10))
    assert sorted(seen["a"][2] + seen["a"][3]) == list(range(10))


# ------------------------------------------------------------------------------------------------ early stopping


def test_early_stopping_restores_best_epoch(tiny_problem):
    # A large lr overshoots after a few epochs; with patience=1 the first worse epoch stops the training.
    # (A tiny lr would decrease the validation loss monotonically and never stop.)
    cfg_epochs = tiny_problem.config.epochs
    result = _train(tiny_problem, ALL, seed=0, patience=1, lr=0.3)
    curve = result.curves["val_loss"]
    assert result.epochs_run == len(curve) < cfg_epochs
    assert result.best_epoch == len(curve) - 2  # patience 1: stop right after the first non-improving epoch
    assert curve[result.best_epoch] == min(curve)
    assert curve[-1] >= curve[result.best_epoch]
    # the final metrics come from the restored best weights, not from the last epoch
    assert sum(result.val_loss.values()) == pytest.approx(curve[result.best_epoch], rel=1e-6)
    assert sum(result.val_loss.values()) < curve[-1]


def test_patience_none_runs_every_epoch(tiny_problem):
    result = _train(tiny_problem, ("t0", "t1"), seed=0, patience=None, lr=0.3, epochs=8)
    assert result.epochs_run == 8
    assert result.curves["val_loss"][result.best_epoch] == min(result.curves["val_loss"])


# ----------------------------------------------------------------------------------------- callback interface


def _reference_summed_gradient(ctx):
    """Slow reference: an independent forward pass and the autograd gradient of the summed loss."""
    model = ctx.model
    shared = ctx.shared_parameters()
    total = 0.0
    for t in ctx.group:
        z = model.encoder(ctx.batch.inputs[t])
        pred = model.heads[t](z).reshape(-1)
        total = total + F.mse_loss(pred, ctx.batch.targets[t].reshape(-1))
    grads = torch.autograd.grad(total, list(shared.values()))
    return dict(zip(shared, grads)), total


class _GradientProbe(Callback):
    """Records per-task losses and checks the gradient, lookahead and optimizer-state interface at every step."""

    def __init__(self):
        self.losses = []
        self.steps = 0
        self.states_seen = set()
        self.max_grad_err = 0.0
        self.max_loss_err = 0.0
        self.lookahead_changed = 0

    def before_step(self, ctx):
        group = ctx.group
        self.losses.append({t: _f(ctx.losses[t]) for t in group})
        shared = ctx.shared_parameters()
        assert set(shared) == {n for n, _ in ctx.model.named_parameters() if n.startswith("encoder.")}

        grads = ctx.task_gradients()
        assert set(grads) == set(group)
        for t in group:
            assert set(grads[t]) == set(shared)  # shared (encoder) parameters only, never heads
            for n, g in grads[t].items():
                assert g.shape == shared[n].shape

        ref, ref_total = _reference_summed_gradient(ctx)
        assert _f(ref_total) == pytest.approx(sum(self.losses[-1].values()), rel=1e-6)
        for n in shared:
            summed = sum(grads[t][n] for t in group)
            self.max_grad_err = max(self.max_grad_err, float((summed - ref[n]).abs().max()))
            assert torch.allclose(summed, ref[n], rtol=1e-5, atol=1e-6)
        # one task's gradient is that task's loss alone
        first = group[0]
        z = ctx.model.encoder(ctx.batch.inputs[first])
        alone = F.mse_loss(ctx.model.heads[first](z).reshape(-1), ctx.batch.targets[first].reshape(-1))
        alone_grads = torch.autograd.grad(alone, list(shared.values()))
        for n, g in zip(shared, alone_grads):
            assert torch.allclose(grads[first][n], g, rtol=1e-5, atol=1e-6)

        # functional re-evaluation with the current parameters reproduces the step's losses
        same = ctx.losses_with({n: p for n, p in shared.items()})
        for t in group:
            self.max_loss_err = max(self.max_loss_err, abs(_f(same[t]) - _f(ctx.losses[t])))
            assert _f(same[t]) == pytest.approx(_f(ctx.losses[t]), rel=1e-6, abs=1e-7)
        # a lookahead with the shared parameters moved changes every loss, and leaves the model untouched
        before = {n: p.detach().clone() for n, p in shared.items()}
        moved = {n: p.detach() - 0.5 * ctx.lr * sum(grads[t][n] for t in group) - 0.05 for n, p in shared.items()}
        ahead = ctx.losses_with(moved)
        self.lookahead_changed += all(abs(_f(ahead[t]) - _f(ctx.losses[t])) > 1e-7 for t in group)
        assert all(torch.equal(before[n], p) for n, p in shared.items())
        # substituting one task's head changes that task's loss only
        head = {n: p.detach() + 0.25 for n, p in ctx.task_parameters(first).items()}
        assert all(n.startswith(f"heads.{first}.") for n in head)
        ahead = ctx.losses_with(head)
        assert abs(_f(ahead[first]) - _f(ctx.losses[first])) > 1e-7
        for t in group[1:]:
            assert _f(ahead[t]) == pytest.approx(_f(ctx.losses[t]), rel=1e-6, abs=1e-7)

        # optimiser state: empty before the first update, Adam moments afterwards
        for p in shared.values():
            state = ctx.optimizer_state(p)
            if ctx.step == 0:
                assert state == {}
            else:
                assert {"exp_avg", "exp_avg_sq", "step"} <= set(state)
                assert state["exp_avg"].shape == p.shape
                self.states_seen.add(int(state["step"]))
        self.steps += 1


def test_callback_interface(tiny_problem):
    group = ("t0", "t1", "t2")
    probe = _GradientProbe()
    result = _train(tiny_problem, group, seed=1, callbacks=[probe], epochs=4, patience=None)
    assert probe.steps == 2 * 4 == len(probe.losses)
    assert all(set(step) == set(group) and all(v > 0 for v in step.values()) for step in probe.losses)
    assert probe.lookahead_changed == probe.steps
    assert probe.states_seen == set(range(1, probe.steps))  # Adam's step count follows the training steps
    # the recorded per-task losses average to the train_loss curve of each epoch
    for epoch in range(4):
        totals = [sum(s.values()) for s in probe.losses[2 * epoch : 2 * epoch + 2]]
        assert result.curves["train_loss"][epoch] == pytest.approx(sum(totals) / 2, rel=1e-6)


class _AsksForGradients(Callback):
    def before_step(self, ctx):
        ctx.task_gradients()


class _Observer(Callback):
    """Reads everything a signal might read, without asking for gradients."""

    def __init__(self):
        self.events = []

    def on_train_start(self, group, model, optimizer):
        self.events.append(("start", group))

    def before_step(self, ctx):
        self.events.append(("before", ctx.step, ctx.lr, {t: _f(v) for t, v in ctx.losses.items()}))

    def after_step(self, ctx):
        self.events.append(("after", ctx.step))

    def on_epoch_end(self, epoch, train_loss, val_loss):
        self.events.append(("epoch", epoch, train_loss, dict(val_loss)))

    def on_train_end(self, result):
        self.events.append(("end", result.best_epoch))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("optimizer, lr", [("adam", None), ("sgd", 0.01)])
def test_task_gradient_update_matches_plain_training(tiny_problem, seed, optimizer, lr):
    """With a callback asking for task gradients the update is the sum of the per-task gradients.

    SGD is scale-sensitive (Adam would hide a sum/mean mix-up)."""
    config = {"optimizer": optimizer, "lr": lr} if lr is not None else {}
    plain = _train(tiny_problem, ALL, seed=seed, **config)
    with_grads = _train(tiny_problem, ALL, seed=seed, callbacks=[_AsksForGradients()], **config)
    _close(with_grads, plain, tol=1e-6)


@pytest.mark.parametrize("ask_for_gradients", [False, True])
def test_update_is_minus_lr_times_summed_gradient(tiny_problem, ask_for_gradients):
    """Plain SGD: every step moves each shared parameter by -lr * gradient of the summed loss."""
    lr = 0.01
    checked = []

    class Check(Callback):
        def before_step(self, ctx):
            if ask_for_gradients:
                ctx.task_gradients()
            self.before = {n: p.detach().clone() for n, p in ctx.shared_parameters().items()}
            self.grad, _ = _reference_summed_gradient(ctx)

        def after_step(self, ctx):
            for n, p in ctx.shared_parameters().items():
                expected = self.before[n] - lr * self.grad[n]
                assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-6), n
                assert not torch.equal(p.detach(), self.before[n])
            checked.append(ctx.step)

    _train(tiny_problem, ALL, seed=0, callbacks=[Check()], optimizer="sgd", momentum=0.0, lr=lr, epochs=3,
           patience=None)
    assert checked == list(range(6))


class _ModeProbe(nn.Module):
    """Identity that records, per forward, whether gradients were on and whether the module was training."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def forward(self, x):
        self.log.append((torch.is_grad_enabled(), self.training))
        return x


def test_train_mode_for_steps_and_eval_mode_for_evaluation(tiny_problem):
    log = []

    def factory(group):
        encoder = nn.Sequential(nn.Linear(10, 1, bias=False), _ModeProbe(log))
        return MTLModel(encoder, {t: nn.Linear(1, 1) for t in group})

    class EvalLookahead(Callback):
        def before_step(self, ctx):
            ctx.losses_with({}, train_mode=False)  # leaves the model in eval mode ...

    tasks = {t.name: t for t in tiny_problem.tasks}
    cfg = dataclasses.replace(tiny_problem.config, epochs=3, patience=None)
    train_group(factory, tiny_problem.task_data, tasks, ("t0", "t1"), cfg, seed=0, callbacks=[EvalLookahead()])
    steps = [training for grad, training in log if grad]
    evals = [training for grad, training in log if not grad]
    # ... yet every training step runs in train mode (step forward: train; the callback's lookahead: eval)
    assert steps == [True, False] * 6
    assert evals == [False] * (3 + 2)  # a validation pass per epoch, then the final validation and test


def test_observing_callback_does_not_change_results(tiny_problem):
    plain = tiny_problem.train(ALL, seed=2)
    observer = _Observer()
    observed = tiny_problem.train(ALL, seed=2, callbacks=[observer])
    _same(observed, plain)
    kinds = [e[0] for e in observer.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("before") == kinds.count("after") == 2 * plain.epochs_run
    assert kinds.count("epoch") == plain.epochs_run
    epochs = [e for e in observer.events if e[0] == "epoch"]
    assert [e[2] for e in epochs] == plain.curves["train_loss"]
    assert [sum(e[3].values()) for e in epochs] == plain.curves["val_loss"]
    assert observer.events[-1] == ("end", plain.best_epoch)


def test_sgd_optimizer_state_is_momentum(tiny_problem):
    seen = []

    class Probe(Callback):
        def before_step(self, ctx):
            p = next(iter(ctx.shared_parameters().values()))
            seen.append(set(ctx.optimizer_state(p)))

    _train(tiny_problem, ("t0",), seed=0, callbacks=[Probe()], optimizer="sgd", lr=0.01, epochs=2, patience=None)
    assert seen[0] == set() and seen[1] == {"momentum_buffer"}


# ------------------------------------------------------------------------------------------ schedules, devices


def test_sgd_step_schedule_lowers_lr(tiny_problem):
    result = _train(tiny_problem, ("t0", "t1"), seed=0, optimizer="sgd", lr=0.01, schedule="step", step_size=2,
                    gamma=0.5, epochs=6, patience=None)
    assert result.curves["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    _assert_finite(result, ("t0", "t1"))


def test_cosine_schedule_decreases_lr(tiny_problem):
    lrs = []

    class Probe(Callback):
        def before_step(self, ctx):
            lrs.append((ctx.epoch, ctx.lr))

    result = _train(tiny_problem, ("t0",), seed=0, callbacks=[Probe()], schedule="cosine", lr=0.02, epochs=5,
                    patience=None)
    curve = result.curves["lr"]
    assert curve[0] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(curve, curve[1:]))
    assert curve[2] == pytest.approx(0.02 * (1 + math.cos(math.pi * 2 / 5)) / 2)
    assert all(lr == pytest.approx(curve[epoch]) for epoch, lr in lrs)  # ctx.lr is the lr in force


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(UsageError, match="no CUDA device"):
            resolve_device(name)
    for name in ("tpu", "gpu", ""):
        with pytest.raises(UsageError, match="unknown device"):
            resolve_device(name)


def test_train_refuses_cuda_without_cuda(tiny_problem, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError):
        tiny_problem.train(("t0",), seed=0, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_is_cpu_here():
    assert resolve_device("auto") == torch.device("cpu")


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"epochs": 0}, "at least 1"),
        ({"batch_size": 0}, "at least 1"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kwargs)


def test_train_config_defaults_are_valid():
    cfg = TrainConfig()
    assert cfg.optimizer == "adam" and cfg.schedule == "none" and cfg.epochs >= 1


def test_unknown_task_in_group(tiny_problem):
    tasks = {t.name: t for t in tiny_problem.tasks}
    with pytest.raises(UsageError, match="unknown tasks"):
        train_group(tiny_problem.model_factory, tiny_problem.task_data, tasks, ("t0", "zz"),
                    tiny_problem.config, seed=0)
    with pytest.raises(UsageError):
        tiny_problem.train(("t0", "zz"), seed=0)
