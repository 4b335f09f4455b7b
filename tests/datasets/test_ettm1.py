"""The trained ETTm1 adapter (datasets/ettm1.py): borders and windows, train-only scaling, time features, the
packed shared input (future values never reach the model), the stand-in, errors, identity, a smoke training with
per-task gradients, and (``-m realdata``) the real file."""

from __future__ import annotations

import csv
import datetime as dt
import math
import sys

import numpy as np
import pytest
import torch
from conftest import data_root, requires_shared_data

from bench import registry
from bench.errors import DataNotFound
from bench.trainer import Callback

SMALL = "ettm1[label_len=16,pred_len=8,seq_len=32]"
SERIES = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def mod():
    """The adapter's module (plugins are loaded by file path, not importable by name)."""
    return sys.modules[registry.components("dataset")["ettm1"].__module__]


@pytest.fixture(scope="module")
def problem():
    """The stand-in at smoke (module-scoped fixtures run before the autouse one, so the variable is removed here
    too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BENCH_DATA_ROOT", raising=False)
        return registry.create("dataset", SMALL).load("smoke")


def test_borders_and_window_counts(mod):
    assert mod.split_borders(96) == [(0, 34560), (34464, 46080), (45984, 57600)]
    counts = [mod.n_windows(a, b, 96, 24) for a, b in mod.split_borders(96)]
    assert counts == [34441, 11497, 11497]
    # windows actually cut from a frame: count, first input rows, last target row at the border
    frame = np.arange(60_000 * 12, dtype=np.float64).reshape(60_000, 12)
    for (start, end), count in zip(mod.split_borders(96), counts):
        packed, targets = mod.make_split(frame, start, end, 96, 24, 1)
        assert packed.shape == (count, 120, 12) and targets["OT"].shape == (count, 24)
        np.testing.assert_array_equal(packed[0, :96, :7].numpy(), frame[start : start + 96, :7].astype(np.float32))
        assert targets["HUFL"][-1, -1].item() == np.float32(frame[end - 1, 0])
        assert targets["OT"][0, 0].item() == np.float32(frame[start + 96, 6])


def test_smoke_profile_window_counts(mod, problem):
    seq, pred = 32, 8
    strides = (256, 128, 128)
    for split, (start, end), stride in zip(("train", "val", "test"), mod.split_borders(seq), strides):
        n = math.ceil(mod.n_windows(start, end, seq, pred) / stride)
        assert getattr(problem.task_data, split).inputs["OT"].shape == (n, seq + pred, 12)


def test_scaler_uses_train_rows_only(mod):
    _, values = mod.stand_in_series(0)
    shifted = values.copy()
    shifted[mod.TRAIN_END :] += 100.0  # a change after the training rows must not move the scaler
    for v in (values, shifted):
        mean, scale = mod.fit_scaler(v)
        np.testing.assert_allclose(mean, v[:34560].mean(axis=0))
        np.testing.assert_allclose(scale, v[:34560].std(axis=0, ddof=0))
    np.testing.assert_allclose(mod.fit_scaler(values)[0], mod.fit_scaler(shifted)[0])
    assert not np.allclose(mod.fit_scaler(values)[0], values.mean(axis=0))


def test_problem_inputs_are_train_scaled_and_targets_are_own_channels(mod, problem):
    stamps, values = mod.stand_in_series(0)
    mean, std = values[:34560].mean(axis=0), values[:34560].std(axis=0)
    scaled = (values - mean) / std
    train, test = problem.task_data.train, problem.task_data.test
    np.testing.assert_allclose(train.inputs["OT"][0, :32, :7].numpy(), scaled[:32], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(train.inputs["OT"][0, :, 7:].numpy(), mod.time_features(stamps[:40]), atol=1e-6)
    start = 46080 - 32  # first test window
    for c, name in enumerate(SERIES):
        np.testing.assert_allclose(test.targets[name][0].numpy(), scaled[start + 32 : start + 40, c],
                                   rtol=1e-5, atol=1e-5)
    # one tensor object shared by every task, future values zeroed
    for split in (problem.task_data.train, problem.task_data.val, problem.task_data.test):
        assert split.shared(SERIES)
        assert (split.inputs["OT"][:, 32:, :7] == 0).all()


def test_time_features_freq_t(mod):
    stamps = np.array(["2016-07-01 00:00", "2016-12-31 23:45", "2017-03-05 13:30", "2018-02-28 07:15"],
                      dtype="datetime64[m]")
    feats = mod.time_features(stamps)
    assert feats.shape == (4, 5) and feats.min() >= -0.5 and feats.max() <= 0.5
    for row, text in zip(feats, stamps.astype(str)):
        d = dt.datetime.fromisoformat(text)
        expected = [d.minute / 59 - 0.5, d.hour / 23 - 0.5, d.weekday() / 6 - 0.5, (d.day - 1) / 30 - 0.5,
                    (d.timetuple().tm_yday - 1) / 365 - 0.5]
        np.testing.assert_allclose(row, expected, atol=1e-12)


def test_future_values_do_not_change_outputs(problem):
    x = problem.task_data.test.inputs["OT"][:16]
    torch.manual_seed(0)
    model = problem.model_factory(("HUFL", "OT")).eval()
    changed = x.clone()
    changed[:, 32:, :7] = torch.randn(16, 8, 7)
    with torch.no_grad():
        a = model(dict.fromkeys(("HUFL", "OT"), x))
        b = model(dict.fromkeys(("HUFL", "OT"), changed))
    for t in a:
        assert a[t].shape == (16, 8)
        assert torch.equal(a[t], b[t])


def test_stand_in_is_deterministic_and_says_how_to_get_the_real_file(mod, problem):
    assert problem.data == "synthetic" and problem.task_names == SERIES
    assert problem.planted_groups == (("HUFL", "HULL"), ("LUFL", "LULL"), ("MUFL", "MULL"), ("OT",))
    assert "bench download ettm1" in problem.notice and mod.URL in problem.notice
    a, b = mod.stand_in_series(0), mod.stand_in_series(0)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].shape == (69_680, 7)
    assert (np.diff(a[0]) == np.timedelta64(15, "m")).all()
    assert not np.array_equal(a[1], mod.stand_in_series(1)[1])
    # planted clusters: members of a cluster correlate more than series of different clusters
    corr = np.corrcoef(a[1].T)
    assert corr[0, 1] > 0.5 and corr[2, 3] > 0.5 and corr[4, 5] > 0.5
    assert max(abs(corr[0, 2]), abs(corr[0, 6]), abs(corr[2, 4])) < 0.3


def test_missing_and_malformed_file(tmp_path):
    dataset = registry.create("dataset", "ettm1")
    with pytest.raises(DataNotFound, match=r"ettm1/ETTm1\.csv.*raw\.githubusercontent\.com"):
        dataset.load("smoke", tmp_path)
    (tmp_path / "ettm1").mkdir()
    (tmp_path / "ettm1" / "ETTm1.csv").write_text("date,a,b\n2016-07-01 00:00:00,1,2\n")
    with pytest.raises(DataNotFound, match="header"):
        dataset.load("smoke", tmp_path)


def test_identity():
    a = registry.create("dataset", SMALL).load("smoke").identity
    b = registry.create("dataset", SMALL).load("mini").identity
    assert a["data"] == "synthetic" and a["fingerprint"].startswith("stand-in")
    assert "train" not in a["settings"] and a["settings"]["model"]["d_model"] == 8
    assert a["params"] == {"seq_len": 32, "label_len": 16, "pred_len": 8, "data_seed": 0}
    assert a != b


def test_paper_profile_settings():
    dataset = registry.create("dataset", "ettm1")
    settings = dataset.profiles["paper"]
    config = dataset.config(settings)
    assert (config.d_model, config.n_heads, config.e_layers, config.d_layers, config.d_ff) == (512, 8, 2, 1, 2048)
    assert (config.moving_avg, config.factor, config.dropout, config.activation) == (25, 3.0, 0.05, "gelu")
    assert (config.seq_len, config.label_len, config.pred_len, config.n_marks) == (96, 48, 24, 5)
    train = settings["train"]
    assert (train["lr"], train["batch_size"], train["epochs"], train["patience"]) == (1e-4, 32, 10, 3)
    assert (train["schedule"], train["step_size"], train["gamma"]) == ("step", 1, 0.5)
    assert settings["train_stride"] == settings["eval_stride"] == 1


class _Grads(Callback):
    """Checks, at the first step, the trainer's per-task gradients against one autograd call per task."""

    wants_task_gradients = True

    def __init__(self):
        self.method = None

    def before_step(self, ctx):
        if ctx.step:
            return
        stacked = ctx.stacked_task_gradients()
        self.method = stacked.method
        shared = ctx.shared_parameters()
        for i, t in enumerate(ctx.group):
            grads = torch.autograd.grad(ctx.losses[t], list(shared.values()), retain_graph=True, allow_unused=True)
            for (name, p), g in zip(shared.items(), grads):
                expected = torch.zeros_like(p) if g is None else g
                torch.testing.assert_close(stacked.shared[name][i], expected, rtol=1e-4, atol=1e-6)


def test_pair_trains_at_smoke_with_per_task_gradients(problem):
    grads = _Grads()
    result = problem.train(("HUFL", "HULL"), seed=0, callbacks=[grads])
    assert set(result.val) == set(result.test) == {"HUFL", "HULL"}
    assert all(math.isfinite(v) and v > 0 for v in [*result.val.values(), *result.test.values()])
    assert grads.method == "two_stage"
    plain = problem.train(("HUFL", "HULL"), seed=0)
    assert dict(plain.test) == pytest.approx(dict(result.test), rel=1e-4)


# --------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_file():
    path = data_root() / "ettm1" / "ETTm1.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found (set BENCH_DATA_ROOT to a root holding ettm1/ETTm1.csv)")
    return path


@requires_shared_data
@pytest.mark.realdata
def test_real_file_rows_borders_and_scaler(mod, real_file):
    stamps, values = mod.read_ettm1(real_file)
    assert values.shape == (69_680, 7)
    assert str(stamps[0]) == "2016-07-01T00:00" and (np.diff(stamps) == np.timedelta64(15, "m")).all()
    with open(real_file, newline="") as fh:  # an independent parse of the training rows
        reader = csv.reader(fh)
        assert next(reader) == ["date", *SERIES]
        train = np.array([[float(v) for v in row[1:]] for _, row in zip(range(34560), reader)])
    mean, scale = mod.fit_scaler(values)
    np.testing.assert_allclose(mean, train.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(scale, train.std(axis=0), rtol=1e-10)
    assert mod.split_borders(96)[2][1] == 57600 < len(values)


@requires_shared_data
@pytest.mark.realdata
def test_real_group_trains_at_smoke(mod, real_file):
    root = real_file.parent.parent
    problem = registry.create("dataset", "ettm1").load("smoke", root)
    assert problem.data == "real" and problem.notice is None
    assert problem.identity["fingerprint"] == mod.file_digest([real_file])
    test = problem.task_data.test
    assert test.inputs["OT"].shape == (math.ceil(11497 / 128), 120, 12)
    _, values = mod.read_ettm1(real_file)
    mean, scale = mod.fit_scaler(values)
    start = 46080 - 96
    np.testing.assert_allclose(test.targets["OT"][0].numpy(), (values[start + 96 : start + 120, 6] - mean[6])
                               / scale[6], rtol=1e-5, atol=1e-5)
    result = problem.train(("MUFL", "OT"), seed=0)
    assert all(math.isfinite(v) for v in result.test.values())
    assert result.test["OT"] < 1.0  # better than predicting the scaled mean by a wide margin on OT
