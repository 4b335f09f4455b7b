"""The per-task tabular adapters (School, Landmine, Parkinson, Chemical; engine bench/tabular.py): stand-ins, the
Chemical parser and class balancing on a written fixture, missing files, splits, train-only scaling, the model's
structure, and (``-m realdata``) the real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import data_root, requires_shared_data
from torch import nn

from bench import registry
from bench.dataset import file_digest
from bench.errors import DataNotFound
from bench.tabular import ACTIVATIONS, Rescale, Scaler, Table, balance_classes, prepare, split_rows

# name -> (tasks, features, target shape beyond the sample axis, loss, metric, extra metrics, file)
SPECS = {
    "school": (139, 27, (), "mse", "mse", (), "school/school.mat"),
    "landmine": (29, 9, (), "bce", "logloss", ("auc",), "landmine/LandmineData.mat"),
    "parkinson": (42, 16, (2,), "mse", "mse", (), "parkinsons/parkinsons_updrs.data"),
    "chemical": (35, 180, (), "bce", "logloss", ("error",), "chemical/mhcp.dat"),
}
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


def _load(name, profile="smoke", root=None, **params):
    return registry.components("dataset")[name](**params).load(profile, root)


def _rows(problem):
    data = problem.task_data
    return {t: sum(getattr(data, s).inputs[t].shape[0] for s in SPLITS) for t in problem.task_names}


# ------------------------------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("name", sorted(SPECS))
def test_stand_in_has_the_real_structure(name):
    n_tasks, dim, tshape, loss, metric, extra, path = SPECS[name]
    problem = _load(name)
    assert problem.data == "synthetic" and problem.n_tasks == n_tasks
    assert "--data-root" in problem.notice and path in problem.notice
    for task in problem.tasks:
        assert (task.loss, task.metric, task.extra_metrics, task.higher_is_better) == (loss, metric, extra, False)
    for split in SPLITS:
        part = getattr(problem.task_data, split)
        for t in problem.task_names:
            x, y = part.inputs[t], part.targets[t]
            assert x.dtype == y.dtype == torch.float32
            assert x.shape[1] == dim and y.shape == (x.shape[0], *tshape) and x.shape[0] >= 1
    planted = problem.planted_groups
    assert len(planted) >= 2 and sorted(t for g in planted for t in g) == sorted(problem.task_names)
    if loss == "bce":
        ys = torch.cat([problem.task_data.train.targets[t] for t in problem.task_names])
        assert set(ys.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_stand_in_is_deterministic_and_a_group_trains(name):
    first, second = _load(name), _load(name)
    for split in SPLITS:
        a, b = getattr(first.task_data, split), getattr(second.task_data, split)
        for t in first.task_names:
            assert torch.equal(a.inputs[t], b.inputs[t]) and torch.equal(a.targets[t], b.targets[t])
    assert first.identity == second.identity
    assert first.identity != _load(name, split_seed=1).identity
    group = first.planted_groups[0][:2]
    result = first.train(group, seed=0)
    assert set(result.test) == set(group) and all(np.isfinite(v) for v in result.test.values())
    for metric in first.tasks[0].extra_metrics:
        assert set(result.extra["test"][metric]) == set(group)


@pytest.mark.parametrize("name, low, high", [("school", 22, 251), ("landmine", 445, 690),
                                             ("parkinson", 101, 168), ("chemical", 22, 2500)])
def test_stand_in_task_sizes_are_like_the_real_ones(name, low, high):
    sizes = list(_rows(_load(name, "mini")).values())
    assert low <= min(sizes) < max(sizes) <= high
    assert max(_rows(_load(name, "smoke")).values()) <= 48  # the smoke stand-in is small


def test_profiles_change_only_epochs_and_sizes():
    for name in SPECS:
        profiles = registry.components("dataset")[name].profiles
        train = {p: dict(profiles[p]["train"]) for p in ("smoke", "mini", "paper")}
        assert (train["paper"]["epochs"], train["paper"]["patience"]) == (1000, 50)
        assert (train["mini"]["epochs"], train["mini"]["patience"]) == (200, 20)
        for p in train.values():
            for key in ("epochs", "patience"):
                p.pop(key)
        assert train["smoke"] == train["mini"] == train["paper"]


def test_published_training_settings():
    expected = {"school": ((20, 10, 32), 0.005, 64), "chemical": ((32, 16), 0.001, 264),
                "landmine": ((64, 32), 0.001, 64), "parkinson": ((12,), 0.00779959, 32)}
    for name, (shared, lr, batch) in expected.items():
        problem = _load(name, "paper")
        assert (problem.config.lr, problem.config.batch_size, problem.config.optimizer) == (lr, batch, "adam")
        model = problem.model_factory(problem.task_names[:2])
        widths = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
        assert tuple(widths) == shared


@pytest.mark.parametrize("name", sorted(SPECS))
def test_model_is_stackable(name):
    """Only Linear layers and parameter-free elementwise maps, no buffers, identical heads."""
    problem = _load(name)
    model = problem.model_factory(problem.task_names[:3])
    assert not list(model.buffers())
    allowed = (nn.Linear, nn.Sequential, Rescale, *ACTIVATIONS.values())
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, allowed) for m in leaves)
    assert all(not list(m.parameters()) for m in leaves if not isinstance(m, nn.Linear))
    shapes = {tuple((n, tuple(p.shape)) for n, p in head.named_parameters()) for head in model.heads.values()}
    assert len(shapes) == 1
    out = model({t: problem.task_data.val.inputs[t] for t in problem.task_names[:3]})
    for t, o in out.items():
        assert o.shape == (problem.task_data.val.inputs[t].shape[0], 2 if name == "parkinson" else 1)


def test_parkinson_heads_keep_updrs_units():
    problem = _load("parkinson")
    head = problem.model_factory(problem.task_names[:1]).heads[problem.task_names[0]]
    assert isinstance(head[-1], Rescale)
    train = torch.cat([problem.task_data.train.targets[t] for t in problem.task_names]).double()
    assert head[-1].shift == pytest.approx(tuple(train.mean(0).tolist()), rel=1e-5)
    assert head[-1].scale == pytest.approx(tuple(train.std(0, unbiased=False).tolist()), rel=1e-5)
    z = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert torch.allclose(head[-1](z)[1], torch.tensor(head[-1].shift) + torch.tensor(head[-1].scale) * z[1])


# --------------------------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name", sorted(SPECS))
def test_data_root_without_the_file(name, tmp_path):
    with pytest.raises(DataNotFound) as info:
        _load(name, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / SPECS[name][-1]) in message and "get it from" in message


# ------------------------------------------------------------------------------------------ Chemical parser


def _line(features, molecule, label):
    return " ".join(map(str, [*features, molecule, label]))


def _peptide(gen):
    x = np.zeros(180, dtype=int)
    x[20 * np.arange(9) + gen.integers(0, 20, 9)] = 1
    return x


# molecule -> (positives, negatives)
FIXTURE = {5: (6, 14), 12: (11, 9), 83: (8, 8)}


@pytest.fixture()
def chemical_root(tmp_path):
    gen = np.random.default_rng(0)
    lines = [_line(_peptide(gen), m, label)
             for m, (pos, neg) in FIXTURE.items() for label in [1] * pos + [-1] * neg]
    order = gen.permutation(len(lines))
    (tmp_path / "chemical").mkdir()
    (tmp_path / "chemical" / "mhcp.dat").write_text("\n".join(lines[i] for i in order) + "\n\n")
    return tmp_path


def test_chemical_parser_and_balancing(chemical_root):
    path = chemical_root / "chemical" / "mhcp.dat"
    cls = registry.components("dataset")["chemical"]
    tables = cls().read([path])
    assert list(tables) == ["m05", "m12", "m83"]
    for (m, (pos, neg)), table in zip(FIXTURE.items(), tables.values()):
        assert table.x.shape == (pos + neg, 180) and set(np.unique(table.x)) == {0.0, 1.0}
        assert (table.y == 1).sum() == pos and (table.y == 0).sum() == neg
        assert (table.x.sum(axis=1) == 9).all()
    balanced = balance_classes(tables, 0)
    assert balanced.keys() == tables.keys()
    for (pos, neg), table in zip(FIXTURE.values(), balanced.values()):
        assert (table.y == 1).sum() == (table.y == 0).sum() == min(pos, neg)
    # the minority class is kept whole; a fixed seed gives the same rows, another seed other majority rows
    again, other = balance_classes(tables, 0), balance_classes(tables, 7)
    assert all(np.array_equal(a.x, b.x) for a, b in zip(balanced.values(), again.values()))
    assert any(not np.array_equal(a.x, b.x) for a, b in zip(balanced.values(), other.values()))

    problem = cls().load("smoke", chemical_root)
    assert problem.data == "real" and problem.task_names == ("m05", "m12", "m83")
    assert _rows(problem) == {"m05": 12, "m12": 18, "m83": 16}
    assert problem.identity["fingerprint"] == file_digest([path])
    result = problem.train(("m05", "m12"), seed=0)
    assert set(result.extra["test"]["error"]) == {"m05", "m12"}


@pytest.mark.parametrize("bad, what", [
    (lambda f: _line(f, 5, 1) + " 0", "183 values"),
    (lambda f: " ".join(_line(f, 5, 1).split()[:-2]), "180 values"),
    (lambda f: _line([2, *f[1:]], 5, 1), "feature 1 is 2"),
    (lambda f: _line(f, 5, 0), "label 0"),
    (lambda f: _line(f, 5, 1).replace(" 5 ", " 5.0 ", 1), "'5.0' is not an integer"),
    (lambda f: _line(f, 5, "x"), "'x' is not an integer"),
])
def test_chemical_malformed_lines(tmp_path, bad, what):
    gen = np.random.default_rng(1)
    good = [_line(_peptide(gen), 5, label) for label in (1, -1, 1)]
    path = tmp_path / "chemical" / "mhcp.dat"
    path.parent.mkdir()
    path.write_text("\n".join([*good, bad(_peptide(gen)), *good]) + "\n")
    with pytest.raises(DataNotFound) as info:
        _load("chemical", root=tmp_path)
    message = str(info.value)
    assert str(path) in message and "line 4" in message and what in message
    assert "182 whitespace-separated integers" in message


def test_chemical_empty_file(tmp_path):
    (tmp_path / "chemical").mkdir()
    (tmp_path / "chemical" / "mhcp.dat").write_text("\n")
    with pytest.raises(DataNotFound, match="no data lines"):
        _load("chemical", root=tmp_path)


# ------------------------------------------------------------------------------------- splits and scaling


def test_splits_are_disjoint_covering_and_stratified():
    gen = np.random.default_rng(0)
    for n in (3, 22, 101, 690):
        train, val, test = split_rows(n, 10, gen)
        assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(n))
        assert len(val) >= 1 and len(test) >= 1 and len(train) >= 1
        assert abs(len(test) - n / 10) < 1 and abs(len(val) - n / 10) < 1
    labels = np.zeros(445, dtype=int)
    labels[gen.choice(445, 15, replace=False)] = 1
    train, val, test = split_rows(445, 10, gen, labels)
    assert labels[test].sum() == labels[val].sum() == 2 and labels[train].sum() == 11
    few = np.zeros(48, dtype=int)
    few[[3, 30]] = 1  # two positives: one for test, one for validation
    _, val, test = split_rows(48, 10, gen, few)
    assert few[test].sum() == few[val].sum() == 1


def _tables(seed=0):
    gen = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate((30, 45, 60)):
        x = np.column_stack([gen.normal(5, 3, n), gen.integers(0, 2, n), np.full(n, 4.0)])
        out[f"t{i}"] = Table(x, gen.normal(10, 2, n))
    return out


def test_scaling_uses_training_rows_only():
    tables = _tables()
    first = prepare(tables, 10, 3, stratify=False, scale_targets=True)
    rows = first.rows
    for t, r in rows.items():
        assert not set(r["train"]) & set(r["val"]) and not set(r["val"]) & set(r["test"])
        assert len(r["train"]) + len(r["val"]) + len(r["test"]) == tables[t].x.shape[0]
    changed = {}
    for t, table in tables.items():
        x, y = table.x.copy(), table.y.copy()
        held_out = np.concatenate([rows[t]["val"], rows[t]["test"]])
        x[held_out] = x[held_out] * 100 + 7
        y[held_out] = -y[held_out] * 50
        changed[t] = Table(x, y)
    second = prepare(changed, 10, 3, stratify=False, scale_targets=True)
    for a, b in ((first.x_scaler, second.x_scaler), (first.y_scaler, second.y_scaler)):
        assert np.array_equal(a.mean, b.mean) and np.array_equal(a.scale, b.scale)
    for t in tables:
        assert torch.equal(first.task_data.train.inputs[t], second.task_data.train.inputs[t])
        assert torch.equal(first.task_data.train.targets[t], second.task_data.train.targets[t])
        assert not torch.equal(first.task_data.test.inputs[t], second.task_data.test.inputs[t])
    # pooled training statistics: standardised continuous column, 0/1 column kept, constant column centred
    train_x = torch.cat([first.task_data.train.inputs[t] for t in tables]).double()
    assert train_x[:, 0].mean().item() == pytest.approx(0, abs=1e-6)
    assert train_x[:, 0].std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    assert set(train_x[:, 1].unique().tolist()) == {0.0, 1.0}
    assert set(train_x[:, 2].unique().tolist()) == {0.0}
    train_y = torch.cat([first.task_data.train.targets[t] for t in tables]).double()
    assert train_y.mean().item() == pytest.approx(0, abs=1e-6)


def test_scaler_round_trip_and_unscaled_targets():
    tables = _tables(1)
    raw = prepare(tables, 10, 0, stratify=False, scale_targets=False)
    t = "t1"
    assert np.allclose(raw.task_data.val.targets[t].numpy(), tables[t].y[raw.rows[t]["val"]], atol=1e-5)
    scaler = Scaler.fit([tables[t].x])
    assert np.allclose(scaler(tables[t].x) * scaler.scale + scaler.mean, tables[t].x)


def test_too_few_folds_or_rows():
    from bench.errors import UsageError

    with pytest.raises(UsageError, match="folds must be at least 3"):
        _load("landmine", folds=2)
    with pytest.raises(DataNotFound, match="at least 3 are needed"):
        prepare({"a": Table(np.zeros((2, 3)), np.zeros(2))}, 10, 0, stratify=False, scale_targets=False)
    with pytest.raises(DataNotFound, match="only one class"):
        balance_classes({"a": Table(np.zeros((4, 3)), np.ones(4))}, 0)


# ------------------------------------------------------------------------------------------------ real data

REAL = {"school": (139, 15362), "landmine": (29, 14820), "parkinson": (42, 5875)}
REAL_ROOT = data_root()  # read before the autouse fixture removes BENCH_DATA_ROOT


@requires_shared_data
@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_data(name):
    n_tasks, n_rows = REAL[name]
    path = REAL_ROOT / SPECS[name][-1]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    problem = _load(name, root=REAL_ROOT)
    assert problem.data == "real" and problem.notice is None and problem.n_tasks == n_tasks
    assert problem.identity["fingerprint"] == file_digest([path])
    assert sum(_rows(problem).values()) == n_rows
    if name == "landmine":
        positives = sum(float(getattr(problem.task_data, s).targets[t].sum())
                        for s in SPLITS for t in problem.task_names)
        assert positives == 904
    if name == "school":  # pooled training targets standardised
        y = torch.cat([problem.task_data.train.targets[t] for t in problem.task_names]).double()
        assert y.mean().item() == pytest.approx(0, abs=1e-5) and y.std().item() == pytest.approx(1, abs=1e-3)
    result = problem.train(problem.task_names[:2], seed=0)
    assert set(result.test) == set(problem.task_names[:2])
    assert all(np.isfinite(v) for v in result.val.values())
