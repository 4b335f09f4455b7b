"""Per-step overhead of the trainer (bench.trainer.train_group) against a minimal hand-written torch loop.

Both run exactly the same work on a shared-input regression problem whose per-step compute is small, so the
trainer's bookkeeping (batch dicts, loss dispatch, callbacks check, running loss, curves) is visible: 4 tasks,
2048 training samples x 32 features, encoder Linear(32,64)+ReLU+Linear(64,32), one Linear(32,1) head per task,
batch 64, Adam, 3 epochs without early stopping; a validation pass per epoch keeping the best weights, and a final
validation and test evaluation of the restored weights.

The hand loop computes each task's loss as ``F.mse_loss(head(z).squeeze(-1), y)``, what one writes by hand; the
trainer goes through ``bench.metrics.loss_fn('mse')``, whose shape-generic flattening (two reshapes, two
squeezes, a dtype cast, and their backward nodes) is part of the overhead measured here.

Run: ``pytest tests/benchmarks --benchmark-only``. The target (trainer / hand loop <= 1.10) is asserted only when
benchmarks are enabled; under ``--benchmark-disable`` every test runs once as a plain check.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.trainer import MTLModel, Split, TaskData, TrainConfig, train_group
from bench.types import Task

TASK_NAMES = ("t0", "t1", "t2", "t3")
N_TRAIN, N_VAL, N_TEST, DIM = 2048, 512, 512, 32
SEED = 0
CONFIG = TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=1e-3, patience=None)
TASKS = {t: Task(t, kind="regression", metric="mse", higher_is_better=False, loss="mse") for t in TASK_NAMES}
MAX_RATIO = 1.10


def _make_data() -> TaskData:
    gen = torch.Generator().manual_seed(1234)
    weights = {t: torch.randn(DIM, generator=gen) / math.sqrt(DIM) for t in TASK_NAMES}

    def split(n: int) -> Split:
        x = torch.randn(n, DIM, generator=gen)
        targets = {t: torch.tanh(x @ w) + 0.1 * torch.randn(n, generator=gen) for t, w in weights.items()}
        return Split(dict.fromkeys(TASK_NAMES, x), targets)  # one tensor object for every task

    return TaskData(split(N_TRAIN), split(N_VAL), split(N_TEST))


def _factory(group) -> MTLModel:
    encoder = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 32))
    return MTLModel(encoder, {t: nn.Linear(32, 1) for t in group})


DATA = _make_data()


def run_trainer(data: TaskData = DATA) -> dict[str, float]:
    result = train_group(_factory, data, TASKS, TASK_NAMES, CONFIG, SEED)
    return {"val_loss": sum(result.val_loss.values()), **{f"test_{t}": v for t, v in result.test.items()}}


def run_hand_loop(data: TaskData = DATA) -> dict[str, float]:
    """The same training written as a plain torch loop (same init, batch order, update, selection, evaluation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = _factory(TASK_NAMES)
        gen = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(model.parameters(), lr=CONFIG.lr)
        x, ys = data.train.inputs[TASK_NAMES[0]], data.train.targets
        n, bs = x.shape[0], CONFIG.batch_size

        @torch.no_grad()
        def evaluate(split: Split, with_metrics: bool = True) -> tuple[dict[str, float], dict[str, float]]:
            model.eval()
            z = model.encoder(split.inputs[TASK_NAMES[0]])
            losses, metrics = {}, {}
            for t in TASK_NAMES:
                pred, y = model.heads[t](z).squeeze(-1), split.targets[t]
                losses[t] = float(F.mse_loss(pred, y))
                if with_metrics:
                    metrics[t] = float(F.mse_loss(pred.double(), y.double()))
            return losses, metrics

        best_val, best_state = math.inf, None
        for _ in range(CONFIG.epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                z = model.encoder(x[idx])
                loss = sum(F.mse_loss(model.heads[t](z).squeeze(-1), ys[t][idx]) for t in TASK_NAMES)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val_losses, _ = evaluate(data.val, with_metrics=False)
            total = sum(val_losses.values())
            if total < best_val:
                best_val, best_state = total, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        val_losses, _ = evaluate(data.val)
        _, test_metrics = evaluate(data.test)
    return {"val_loss": sum(val_losses.values()), **{f"test_{t}": v for t, v in test_metrics.items()}}


def test_hand_loop_does_the_same_work():
    """The comparison is fair only if both loops compute the same training."""
    trainer, hand = run_trainer(), run_hand_loop()
    assert trainer.keys() == hand.keys()
    for key, value in hand.items():
        assert trainer[key] == pytest.approx(value, rel=1e-5), key


def test_benchmark_trainer(benchmark):
    benchmark.group = "trainer-overhead"
    out = benchmark.pedantic(run_trainer, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(out["val_loss"])


def test_benchmark_hand_loop(benchmark):
    benchmark.group = "trainer-overhead"
    out = benchmark.pedantic(run_hand_loop, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(out["val_loss"])


def _interleaved(runs: int = 7) -> dict[str, float]:
    run_trainer(), run_hand_loop()  # warm-up
    times: dict[str, list[float]] = {"trainer": [], "hand": []}
    for i in range(runs):
        order = [("trainer", run_trainer), ("hand", run_hand_loop)]
        for name, fn in order if i % 2 == 0 else reversed(order):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    trainer, hand = statistics.median(times["trainer"]), statistics.median(times["hand"])
    return {"trainer_s": trainer, "hand_s": hand, "ratio": trainer / hand}


def test_trainer_overhead_ratio(benchmark, capsys):
    benchmark.group = "trainer-overhead-ratio"
    measured = benchmark.pedantic(_interleaved, rounds=1, iterations=1)
    benchmark.extra_info.update(measured)
    steps = CONFIG.epochs * math.ceil(N_TRAIN / CONFIG.batch_size)
    with capsys.disabled():  # shown even without -s
        print(
            f"\ntrainer-overhead: trainer {measured['trainer_s'] * 1e3:.1f} ms, hand loop "
            f"{measured['hand_s'] * 1e3:.1f} ms per training ({steps} steps; median of 7 interleaved runs), "
            f"ratio = {measured['ratio']:.3f}"
        )
    if benchmark.disabled:
        return  # the target is measured in the benchmark run, not in the unit-test run
    assert measured["ratio"] <= MAX_RATIO, measured
