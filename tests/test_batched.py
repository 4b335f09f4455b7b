"""The batched trainer equals one-by-one training (bench.batched against bench.trainer.train_group)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from bench import registry
from bench.batched import epoch_indices, stackable, train_groups
from bench.cache import ResultCache, result_key
from bench.dataset import TrainedProblem
from bench.method import Context
from bench.runner import _Trainings
from bench.trainer import MTLModel, Split, TaskData, TrainConfig, batch_indices, train_group
from bench.types import Task


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("sizes,batch", [((5, 17, 9), 4), ((64, 64), 16), ((1, 30), 7), ((33,), 8)])
def test_epoch_indices_replay_batch_indices(shared, sizes, batch):
    names = tuple(f"t{i}" for i in range(len(sizes)))
    size = dict(zip(names, sizes if not shared else [sizes[0]] * len(sizes)))
    for seed in range(3):
        ref = list(batch_indices(size, shared, names, batch, torch.Generator().manual_seed(seed)))
        idx, mask = epoch_indices(size, shared, names, batch, torch.Generator().manual_seed(seed))
        assert idx.shape == (len(ref), len(names), batch)
        for s, step in enumerate(ref):
            for p, t in enumerate(names):
                assert torch.equal(idx[s, p][mask[s, p]], step[t])
        # the generator is left in the same state: the next epoch draws the same permutations too
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        list(batch_indices(size, shared, names, batch, g1))
        epoch_indices(size, shared, names, batch, g2)
        assert torch.equal(torch.randperm(50, generator=g1), torch.randperm(50, generator=g2))


def _tabular(n_tasks=4, sizes=(30, 45, 22, 37), dim=5, loss="mse", seed=0):
    """Per-task inputs of different sizes (ragged batches, epochs of different lengths)."""
    gen = torch.Generator().manual_seed(seed)
    names = [f"t{i}" for i in range(n_tasks)]

    def split(scale):
        xs, ys = {}, {}
        for t, n in zip(names, sizes):
            n = max(4, int(n * scale))
            x = torch.randn(n, dim, generator=gen)
            y = x @ torch.randn(dim, generator=gen) + 0.3 * torch.randn(n, generator=gen)
            xs[t], ys[t] = x, (y > 0).float() if loss == "bce" else y
        return Split(xs, ys)

    data = TaskData(split(1.0), split(0.5), split(0.5))
    metric = "logloss" if loss == "bce" else "mse"
    extra = ("auc",) if loss == "bce" else ()
    tasks = {t: Task(t, metric=metric, loss=loss, extra_metrics=extra) for t in names}

    def factory(group):
        enc = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU())
        return MTLModel(enc, {t: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1)) for t in group})

    return names, data, tasks, factory


def _assert_same(batched, single, rel=1e-5):
    assert batched.group == single.group and batched.seed == single.seed
    assert batched.epochs_run == single.epochs_run
    assert batched.best_epoch == single.best_epoch
    for split in ("val", "test", "val_loss"):
        for t, v in getattr(single, split).items():
            assert math.isclose(getattr(batched, split)[t], v, rel_tol=rel, abs_tol=1e-7), (split, t)
    for name in ("train_loss", "val_loss", "lr"):
        assert len(batched.curves[name]) == len(single.curves[name])
        for a, b in zip(batched.curves[name], single.curves[name]):
            assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-7), name
    for split, by_metric in single.extra.items():
        for metric, values in by_metric.items():
            for t, v in values.items():
                assert math.isclose(batched.extra[split][metric][t], v, rel_tol=rel, abs_tol=1e-7)


CONFIGS = {
    "adam": TrainConfig(epochs=30, batch_size=8, lr=0.01, patience=4),
    "adam_wd_step": TrainConfig(epochs=12, batch_size=8, lr=0.02, weight_decay=0.01, schedule="step",
                                step_size=3, gamma=0.5, patience=None),
    "sgd_momentum_cosine": TrainConfig(epochs=15, batch_size=6, optimizer="sgd", lr=0.01, momentum=0.9,
                                       weight_decay=1e-3, schedule="cosine", patience=3),
    "sgd_plain": TrainConfig(epochs=10, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.0, patience=None),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_batched_equals_one_by_one(config, loss):
    names, data, tasks, factory = _tabular(loss=loss)
    cfg = CONFIGS[config]
    groups = [(t,) for t in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] + [tuple(names[:3])]
    results = train_groups(factory, data, tasks, groups, cfg, seed=3, stack_size=4)
    assert set(results) == set(groups)
    for group in groups:
        _assert_same(results[group], train_group(factory, data, tasks, group, cfg, seed=3))
    # early stopping really differs between models, so the compaction of stacks is exercised
    if cfg.patience is not None:
        assert len({r.epochs_run for r in results.values()}) > 1


def test_shared_inputs_equal_one_by_one():
    problem = registry.create("dataset", "synthetic[clusters=[2,2],shared_inputs=true]").load("smoke")
    tasks = {t.name: t for t in problem.tasks}
    groups = [("t0", "t1"), ("t0", "t2"), ("t2", "t3"), ("t1", "t3")]
    results = train_groups(problem.model_factory, problem.task_data, tasks, groups, problem.config, seed=1)
    for group in groups:
        _assert_same(results[group], problem.train(group, seed=1))


def test_a_failing_model_does_not_take_the_others_down():
    names, data, tasks, factory = _tabular()

    def poisoned(group):
        model = factory(group)
        if "t1" in group:
            with torch.no_grad():
                model.encoder[0].weight.fill_(float("nan"))
        return model

    groups = [("t0", "t1"), ("t0", "t2"), ("t1", "t3"), ("t2", "t3")]
    results = train_groups(poisoned, data, tasks, groups, CONFIGS["adam"], seed=0)
    assert isinstance(results[("t0", "t1")], FloatingPointError)
    assert isinstance(results[("t1", "t3")], FloatingPointError)
    _assert_same(results[("t0", "t2")], train_group(factory, data, tasks, ("t0", "t2"), CONFIGS["adam"], 0))


def test_stackable_names_what_prevents_stacking():
    assert stackable(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) is None
    assert "buffers" in stackable(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert "dropout" in stackable(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    assert stackable(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))) is None


def _problem(factory_kind="mlp"):
    names, data, tasks, factory = _tabular()
    if factory_kind == "bn":
        def factory(group, _f=factory):  # noqa: ANN001 - a model that cannot be stacked
            model = _f(group)
            model.encoder.append(nn.BatchNorm1d(6))
            return model
    return TrainedProblem(list(tasks.values()), "synthetic", {"test": factory_kind}, data, factory,
                          CONFIGS["adam"])


@pytest.mark.parametrize("kind", ["mlp", "bn"])
def test_problem_train_many_equals_train_and_reports_each_result(kind):
    problem = _problem(kind)
    groups = [("t0",), ("t1",), ("t0", "t1"), ("t2", "t3")]
    seen = []
    results = problem.train_many(groups, seed=2, on_result=lambda g, r: seen.append(g))
    assert sorted(seen) == sorted(groups) and list(results) == groups
    for group in groups:
        _assert_same(results[group], problem.train(group, seed=2))
    assert (problem.stackable() is None) == (kind == "mlp")


def test_runner_trains_misses_together_and_caches_each(tmp_path, monkeypatch):
    problem = _problem()
    cache = ResultCache(tmp_path)
    trainings = _Trainings(problem, cache, "cpu")
    ctx = Context(problem, 0, trainings)
    first = ctx.train_many([("t0", "t1"), ("t2",), ("t0", "t1")])
    assert list(first) == [("t0", "t1"), ("t2",)] and len(ctx.ledger) == 2
    assert not any(r.cached for r in first.values()) and cache.misses == 0  # stored without the lock path
    calls = []
    monkeypatch.setattr(problem, "train_many", lambda *a, **k: calls.append(a) or {})
    again = Context(problem, 0, _Trainings(problem, cache, "cpu")).train_many([("t2",), ("t0", "t1")])
    assert not calls and all(r.cached for r in again.values())
    for group, result in again.items():
        assert replace(result, cached=False) == first[group]


def test_a_failure_keeps_the_finished_results_in_the_cache(tmp_path):
    names, data, tasks, factory = _tabular()

    def poisoned(group):
        model = factory(group)
        if "t3" in group:
            with torch.no_grad():
                model.encoder[0].weight.fill_(float("nan"))
        return model

    problem = TrainedProblem(list(tasks.values()), "synthetic", {"test": "poison"}, data, poisoned, CONFIGS["adam"])
    trainings = _Trainings(problem, ResultCache(tmp_path), "cpu")
    with pytest.raises(FloatingPointError):
        trainings.many([("t0", "t1"), ("t2", "t3"), ("t1", "t2")], 0)
    calls = []
    problem.train_many = lambda groups, *a, **k: calls.append(list(groups)) or {}
    with pytest.raises(KeyError):
        _Trainings(problem, ResultCache(tmp_path), "cpu").many([("t0", "t1"), ("t1", "t2"), ("t2", "t3")], 0)
    assert calls == [[("t2", "t3")]]  # only the failed group is asked for again


def test_a_group_alone_in_its_size_is_trained_exactly_as_train_gives_it():
    """A group's numbers do not depend on the call that trained it: alone in its size it is ``train_group``'s
    training, to the last bit (a one-model stack's products would take other kernels), and in a stack they do not
    depend on which other groups of its size share the stack."""
    names, data, tasks, factory = _tabular()
    cfg = CONFIGS["adam"]
    pairs = [("t0", "t1"), ("t2", "t3"), ("t1", "t3"), ("t0", "t2")]
    full = train_groups(factory, data, tasks, [*pairs, tuple(names[:3])], cfg, seed=0)
    alone = train_group(factory, data, tasks, tuple(names[:3]), cfg, seed=0)
    assert replace(full[tuple(names[:3])], wall_time_s=0.0) == replace(alone, wall_time_s=0.0)
    fewer = train_groups(factory, data, tasks, pairs[1:3], cfg, seed=0)
    for group in pairs[1:3]:
        assert replace(fewer[group], wall_time_s=0.0) == replace(full[group], wall_time_s=0.0)


def test_runner_uses_the_entry_a_concurrent_run_stored_first(tmp_path, monkeypatch):
    """Two runs sharing a cache may both train a group (misses are trained together, without a lock); the entry
    stored first stays and both report its numbers, with their own training time."""
    problem = _problem()
    cache = ResultCache(tmp_path)
    trainings = _Trainings(problem, cache, "cpu")
    group = ("t0", "t1")
    ours = problem.train(group, seed=0)
    theirs = replace(ours, val={t: v + 1.0 for t, v in ours.val.items()}, test={t: 7.0 for t in group},
                     wall_time_s=123.0)
    real_train_many = problem.train_many

    def racing(groups, seed, device, on_result=None):  # the other run stores its entry while we train
        cache.put(result_key(problem.identity, group, seed, device), theirs)
        return real_train_many(groups, seed, device, on_result)

    monkeypatch.setattr(problem, "train_many", racing)
    got = trainings.many([group, ("t2", "t3")], 0)
    assert got[group].test == theirs.test and got[group].val == theirs.val
    assert got[group].wall_time_s != 123.0 and not got[group].cached
    assert cache.get(result_key(problem.identity, group, 0, "cpu")).test == theirs.test
    assert got[("t2", "t3")].test == cache.get(result_key(problem.identity, ("t2", "t3"), 0, "cpu")).test
