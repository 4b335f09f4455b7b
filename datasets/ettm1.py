"""ETTm1 trained with an Autoformer: the 7 series are the 7 tasks (HUFL, HULL, MUFL, MULL, LUFL, LULL, OT).

The setting of the task-grouping papers (transfer-gain-mip App. C.1-C.2, following MTG-Net, Song et al. 2022; also
ETAP): ETTm1 "leveraging all series as inputs and focusing on predictions for individual series as separate tasks",
"several univariate prediction tasks", an Autoformer that keeps most components common and gives each task its own
decoder; metric MAE (transfer-gain-mip Table 5 reports per-task and total MAE), training loss MSE.

**Data** (Autoformer's ``Dataset_ETT_minute``, ``shared/reference/implementations.md`` 7.1 and 10.6):

- borders with 30-day months: train rows ``[0, 34560)``, validation ``[34560 - seq_len, 46080)``, test
  ``[46080 - seq_len, 57600)`` (12/4/4 months, the papers' "6:2:2 chronological" split; rows after 57600 are never
  used);
- a standard scaler (mean, population std) fitted on the **training rows only**, for all 7 columns, applied to the
  whole series; targets and metrics live in this scaled space, as in the papers;
- windows ``x = data[i : i + seq_len]`` and target ``data[i + seq_len : i + seq_len + pred_len]`` (the last
  ``pred_len`` steps of Autoformer's ``seq_y``), ``n = rows - seq_len - pred_len + 1`` per split;
- time features ``freq='t'`` (``embed='timeF'``): minute/59, hour/23, weekday/6, (day of month - 1)/30,
  (day of year - 1)/365, each minus 0.5 (the ETTm1 scripts pass ``--freq t``; MTG-Net's gain collection left the
  default ``'h'``, 4 features, which is not followed here).

**What the encoder sees for a group**: all 7 series, whatever the group. MTG-Net's gain collection (``exp_main.py``)
feeds the full 7-channel window to the network and masks only outputs and targets to the group's channels, and
transfer-gain-mip "leverag[es] all series as inputs"; so a group changes only which task decoders exist and whose
losses are summed, never the input.

**Model** (:mod:`bench.models.autoformer`): shared = the encoder's embedding + encoder layers (and the parameter-free
decoder initialisation); per task = a full Autoformer decoder (own embedding, decoder layers, trend projections,
norm, output projection) predicting its own channel, reading the seasonal initialisation of all 7 series and the
trend initialisation of its channel. Every head has the same structure.

**Inputs and targets**: one packed float tensor shared by every task (the trainer's shared-inputs layout),
``(N, seq_len + pred_len, 7 + 5)``: the encoder window's 7 scaled values in the first ``seq_len`` rows, zeros in
the last ``pred_len`` rows (never read by the model), and the 5 time features of all ``seq_len + pred_len`` steps
in the last 5 columns. Task ``t``'s target is ``(N, pred_len)``: its own channel over the next ``pred_len`` steps.

**Training** (``paper`` profile = Autoformer's defaults with the ETTm1 script's settings, as MTG-Net runs them):
d_model 512, 8 heads, 2 encoder / 1 decoder layers, d_ff 2048, moving_avg 25, factor 3, dropout 0.05, gelu,
seq 96 / label 48 / pred 24; Adam lr 1e-4, batch 32, 10 epochs, early stopping with patience 3, the learning rate
halved after every epoch (``lradj='type1'`` = ``TrainConfig(schedule='step', step_size=1, gamma=0.5)``). Departures,
on purpose: the loss is the harness's sum of per-task MSEs (MTG-Net: one MSE over the group's channels, i.e. the
mean: the same minimiser, and Adam's steps are insensitive to that constant factor); early stopping watches the
summed validation loss of the group (MTG-Net: the unmasked MSE over all 7 channels); every training window is used
(no ``drop_last``) and the test split keeps its last partial batch (implementations.md 10.6).

**Profiles** (sizes, window strides and epochs only; the algorithm is the same):

- ``paper``: as above, every window of every split (34,441 / 11,497 / 11,497 windows at seq 96, pred 24). On 2
  CPU cores a pair takes about 1.9 s per training step (1,077 steps per epoch: about 34 min) plus about 7 min per
  evaluation of a split, i.e. roughly 40 min per epoch; a GPU is the realistic choice.
- ``mini``: d_model 16, 2 heads, 1 encoder and 1 decoder layer, d_ff 32; every 16th training window (2,153),
  every 8th validation and test window (1,438 each); 4 epochs, batch 32, lr 1e-3 (a larger step than 1e-4 so that
  a few hundred steps learn something), patience 2, halving per epoch. A pair trains in about 10 s on 2 CPU cores
  (measured on the real file: 9.4 s with 2 torch threads on an idle machine, 11 s with 1 thread beside other jobs).
- ``smoke``: d_model 8, 1 head, 1+1 layers, d_ff 16; every 256th training window (135) and every 128th validation
  and test window (90 each); 2 epochs, lr 1e-3. Under a second per group (measured: 0.3 s a pair, 0.75 s all 7).

**Without a data root** a deterministic synthetic stand-in of the same shape replaces the file (``data=synthetic``,
with a notice on how to get the real file): 69,680 rows at 15-minute steps from 2016-07-01, 7 series named as the
real ones, planted in clusters ``{HUFL, HULL}``, ``{MUFL, MULL}``, ``{LUFL, LULL}``, ``{OT}``: the members of a
cluster share a latent signal (two sinusoids with cluster-specific periods and a slow AR(1)-like component) and add
their own AR(1)-like noise, so a cluster's series are more predictable together. With a data root that lacks the
file, loading fails with the path and the URL (no silent fallback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from bench.datafiles import DataFile
from bench.dataset import Dataset, TrainedProblem, file_digest
from bench.errors import DataNotFound, UsageError
from bench.models.autoformer import (
    AutoformerConfig,
    AutoformerDecoderHead,
    SharedAutoformerEncoder,
)
from bench.trainer import MTLModel, Split, TaskData, TrainConfig
from bench.types import Task

SERIES = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
N_MARKS = 5
URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm1.csv"
SHA256 = "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e"

MONTH_ROWS = 30 * 24 * 4  # Autoformer's "month": 30 days of 15-minute steps
TRAIN_END = 12 * MONTH_ROWS  # 34560
VAL_END = TRAIN_END + 4 * MONTH_ROWS  # 46080
TEST_END = TRAIN_END + 8 * MONTH_ROWS  # 57600
STAND_IN_ROWS = 69_680  # as many rows as the real file
STAND_IN_CLUSTERS = (("HUFL", "HULL"), ("MUFL", "MULL"), ("LUFL", "LULL"), ("OT",))


def split_borders(seq_len: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` rows of train, validation and test (Autoformer's ``border1s`` / ``border2s``): the
    validation and test ranges start ``seq_len`` rows early so that their first window ends at the border."""
    return [(0, TRAIN_END), (TRAIN_END - seq_len, VAL_END), (VAL_END - seq_len, TEST_END)]


def n_windows(start: int, end: int, seq_len: int, pred_len: int) -> int:
    """Windows in rows ``[start, end)``: ``end - start - seq_len - pred_len + 1`` (Autoformer's ``__len__``)."""
    return end - start - seq_len - pred_len + 1


def fit_scaler(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population standard deviation (``sklearn.preprocessing.StandardScaler``) of the
    training rows ``[0, 34560)``; a constant column gets scale 1 (as sklearn does)."""
    train = values[:TRAIN_END]
    mean, std = train.mean(axis=0), train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def time_features(stamps: np.ndarray) -> np.ndarray:
    """Autoformer's ``time_features(freq='t')``, ``(N, 5)`` in [-0.5, 0.5]: minute of hour / 59, hour of day / 23,
    day of week (Monday = 0) / 6, (day of month - 1) / 30, (day of year - 1) / 365, each minus 0.5."""
    minutes = stamps.astype("datetime64[m]")
    hours = minutes.astype("datetime64[h]")
    days = minutes.astype("datetime64[D]")
    minute = (minutes - hours).astype(np.int64)
    hour = (hours - days).astype("timedelta64[h]").astype(np.int64)
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_of_month = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    day_of_year = (days - days.astype("datetime64[Y]")).astype(np.int64) + 1
    return np.stack([minute / 59.0, hour / 23.0, weekday / 6.0, (day_of_month - 1) / 30.0,
                     (day_of_year - 1) / 365.0], axis=1) - 0.5


def read_ettm1(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(stamps datetime64[m] (N,), values float64 (N, 7))`` of ``ETTm1.csv``; a :class:`DataNotFound` naming the
    file when it is not the expected CSV."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataNotFound(f"ettm1: cannot read {path}: {exc}") from exc
    expected = ",".join(("date", *SERIES))
    if not lines or lines[0].strip() != expected:
        got = lines[0].strip()[:120] if lines else "an empty file"
        raise DataNotFound(f"ettm1: {path} must start with the header {expected!r}, found {got!r}; get the file "
                           f"from {URL}")
    try:
        rows = [line.split(",") for line in lines[1:] if line.strip()]
        stamps = np.array([r[0] for r in rows], dtype="datetime64[m]")
        values = np.array([r[1:] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise DataNotFound(f"ettm1: {path} holds a malformed row ({exc}); expected a date and 7 numbers per "
                           f"line") from exc
    if values.ndim != 2 or values.shape[1] != len(SERIES):
        raise DataNotFound(f"ettm1: {path} must have {len(SERIES)} value columns per row")
    if len(values) < TEST_END:
        raise DataNotFound(f"ettm1: {path} has {len(values)} rows; the Autoformer split needs at least {TEST_END}")
    if not np.isfinite(values).all():
        raise DataNotFound(f"ettm1: {path} holds non-finite values")
    return stamps, values


def _smoothed_noise(gen: np.random.Generator, n_rows: int, rho: float, sigma: float) -> np.ndarray:
    """AR(1)-like noise ``x_t = sum_{j<K} rho^j e_{t-j}`` with ``K = ceil(8 / (1 - rho))`` (the AR(1) recursion
    truncated where ``rho^K < e^-8``; a convolution instead of a Python loop)."""
    kernel = rho ** np.arange(int(np.ceil(8.0 / (1.0 - rho))))
    return np.convolve(sigma * gen.standard_normal(n_rows), kernel)[:n_rows]


def stand_in_series(seed: int, n_rows: int = STAND_IN_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic stand-in ``(stamps, values (n_rows, 7))`` (see the module docstring), deterministic in
    ``seed``."""
    gen = np.random.default_rng(seed)
    t = np.arange(n_rows, dtype=np.float64)
    stamps = np.datetime64("2016-07-01T00:00", "m") + np.arange(n_rows) * np.timedelta64(15, "m")
    # cluster-specific periods (in 15-minute steps: 96 = a day), so that the clusters' latent signals differ
    periods = ((96, 672), (48, 288), (32, 1344), (192, 2688))
    values = np.empty((n_rows, len(SERIES)))
    for cluster, p in zip(STAND_IN_CLUSTERS, periods):
        latent = sum(gen.uniform(0.8, 1.5) * np.sin(2 * np.pi * t / period + gen.uniform(0, 2 * np.pi))
                     for period in p)
        latent = latent + _smoothed_noise(gen, n_rows, 0.995, 0.05)
        for name in cluster:
            own = _smoothed_noise(gen, n_rows, 0.9, 0.3)
            values[:, SERIES.index(name)] = gen.uniform(0.7, 1.3) * latent + own + gen.uniform(-2.0, 2.0)
    return stamps, values


def make_split(frame: np.ndarray, start: int, end: int, seq_len: int, pred_len: int,
               stride: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The packed inputs and per-task targets of every ``stride``-th window of rows ``[start, end)``.

    ``frame`` is ``(rows, 7 + 5)``: scaled values then time features. Window ``i`` (``i = 0, stride, ...``) reads rows
    ``start + i`` to ``start + i + seq_len + pred_len``.
    """
    count = n_windows(start, end, seq_len, pred_len)
    if count < 1:
        raise UsageError(f"rows [{start}, {end}) hold no window of seq_len {seq_len} + pred_len {pred_len}")
    n_series = len(SERIES)
    windows = sliding_window_view(frame[start:end], seq_len + pred_len, axis=0)  # (count, 12, W), a view
    packed = np.ascontiguousarray(windows[::stride].transpose(0, 2, 1), dtype=np.float32)
    targets = {name: torch.from_numpy(packed[:, seq_len:, c].copy()) for c, name in enumerate(SERIES)}
    packed[:, seq_len:, :n_series] = 0.0  # the future values: the model never reads them
    return torch.from_numpy(packed), targets


def _train(epochs: int, lr: float, patience: int, eval_batch_size: int) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": 32, "optimizer": "adam", "lr": lr, "schedule": "step", "step_size": 1,
            "gamma": 0.5, "patience": patience, "eval_batch_size": eval_batch_size}


class Ettm1(Dataset):
    """ETTm1 (7 series = 7 tasks, MAE in the scaled space), an Autoformer with a shared encoder and one decoder
    per task; see the module docstring for the data, the model split, the packing and the profiles."""

    name = "ettm1"
    version = "1"
    defaults = {"seq_len": 96, "label_len": 48, "pred_len": 24, "data_seed": 0}
    parameters = {"pred_len": [24, 48, 96]}
    test_parameters = {"seq_len": 32, "label_len": 16, "pred_len": 8}
    data_files = (DataFile("ettm1/ETTm1.csv", url=URL, sha256=SHA256),)
    profiles = {
        "smoke": {"model": {"d_model": 8, "n_heads": 1, "e_layers": 1, "d_layers": 1, "d_ff": 16},
                  "train_stride": 256, "eval_stride": 128, "train": _train(2, 1e-3, 2, 1024)},
        "mini": {"model": {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_layers": 1, "d_ff": 32},
                 "train_stride": 16, "eval_stride": 8, "train": _train(4, 1e-3, 2, 1024)},
        "paper": {"model": {"d_model": 512, "n_heads": 8, "e_layers": 2, "d_layers": 1, "d_ff": 2048},
                  "train_stride": 1, "eval_stride": 1, "train": _train(10, 1e-4, 3, 256)},
    }

    def config(self, settings: dict[str, Any]) -> AutoformerConfig:
        """The Autoformer sizes of a profile's ``settings`` with this dataset's lengths (moving_avg 25, factor 3,
        dropout 0.05 and gelu in every profile)."""
        return AutoformerConfig(n_series=len(SERIES), n_marks=N_MARKS, seq_len=int(self.seq_len),
                                label_len=int(self.label_len), pred_len=int(self.pred_len), moving_avg=25,
                                factor=3.0, dropout=0.05, activation="gelu", **settings["model"])

    def load_series(self, data_root: Path | None) -> tuple[np.ndarray, np.ndarray, str, str]:
        """``(stamps, values, data, fingerprint)``: the real file under ``data_root``, or the stand-in without one."""
        if data_root is None:
            stamps, values = stand_in_series(int(self.data_seed))
            return stamps, values, "synthetic", f"stand-in-1-seed{int(self.data_seed)}"
        paths = self.locate(data_root)
        stamps, values = read_ettm1(paths[0])
        return stamps, values, "real", file_digest(paths)

    def build(self, settings: dict[str, Any], profile: str, data_root: Path | None) -> TrainedProblem:
        config = self.config(settings)
        seq_len, pred_len = config.seq_len, config.pred_len
        if seq_len + pred_len > MONTH_ROWS:
            raise UsageError(f"seq_len + pred_len must be at most {MONTH_ROWS} rows, got {seq_len + pred_len}")
        stamps, values, data, fingerprint = self.load_series(data_root)
        mean, scale = fit_scaler(values)
        frame = np.concatenate([(values - mean) / scale, time_features(stamps)], axis=1)
        strides = (int(settings["train_stride"]), int(settings["eval_stride"]), int(settings["eval_stride"]))
        splits = []
        for (start, end), stride in zip(split_borders(seq_len), strides):
            packed, targets = make_split(frame, start, end, seq_len, pred_len, stride)
            splits.append(Split(dict.fromkeys(SERIES, packed), targets))  # one tensor object for every task

        def factory(group):
            encoder = SharedAutoformerEncoder(config)
            return MTLModel(encoder, {t: AutoformerDecoderHead(config, SERIES.index(t)) for t in group})

        tasks = [Task(name, kind="regression", metric="mae", higher_is_better=False, loss="mse") for name in SERIES]
        identity = self.base_identity(profile, {k: v for k, v in settings.items() if k != "train"}, data, fingerprint)
        problem = TrainedProblem(tasks, data, identity, TaskData(*splits), factory, TrainConfig(**settings["train"]),
                                 planted_groups=STAND_IN_CLUSTERS if data == "synthetic" else None)
        if data == "synthetic":
            problem.notice = (
                "ettm1: no data root given, using a synthetic 7-series stand-in (data=synthetic). For the real "
                "ETTm1, run `python -m bench download ettm1 --data-root DIR` (or save "
                f"{URL} as DIR/ettm1/ETTm1.csv) and pass --data-root DIR (or set BENCH_DATA_ROOT)."
            )
        return problem
