"""Prediction quality of signals and gain predictors on held-out groups (the papers' prediction tables).

Reproduces the layouts of

- ETAP **Table 2** (``etap_table2``): Pearson correlation between pairwise affinity scores (signals ``tag``,
  ``grad_tae``, ``etap``) and the ground-truth pairwise MTL gains;
- ETAP **Table 3** (``etap_table3``): correlation between ground-truth and predicted MTL gains of groups for TAG
  (signal ``tag`` + predictor ``affinity``, no training groups: the paper's ``*``), MTGNet (predictor ``mtg_net``)
  and ETAP (signal ``etap`` + predictor ``etap``) by training-set size ``|G_train|``;
- ETAP **Table 9** (``etap_table9``): ETAP against the linear surrogate (predictor ``surrogate``) on the same
  training groups, correlation and F1 of the sign of the gain;
- tabular-divergence-features **Table 2** (``divergence_table2``): pairwise correlation of TAG, Grad-TAE and the
  feature-based quadratic model (signal ``divergence`` + predictor ``quadratic_ridge``);
- tabular-divergence-features **Table 6** (``divergence_table6``): linear
  (``quadratic_ridge[degree=1,ridge=false]``, least squares) against quadratic (ridge) regression, R² and
  correlation, trained on 25% of the pairs.

Protocol (choices made here, after ETAP Section 4.1 and tabular-divergence-features Section 4.3 / Appendix A.3):

Ground truth
    Every group is trained through the same content-addressed cache and trainer the runner uses
    (:class:`bench.runner._Trainings`, :func:`bench.runner.load_problem`) with the run's ``seed``, so a suite run with
    that seed and this evaluation share trainings. A member's gain is :func:`bench.gains.observe` against the
    single-task results: predictors are fitted on the ``fit_split`` gains (validation by default) and scored on the
    ``report_split`` gains (test by default).
Entries
    One entry per member of every evaluation group, ``(group, task)``, as ETAP does; a pair ``{i, j}`` gives two:
    the gain of ``i`` in ``{i, j}`` against the affinity ``A[i, j]`` (effect of ``j`` on ``i``) or the predicted
    gain of ``i``, and the same for ``j``. A signal alone scores a larger group by TAG's rule,
    ``mean_{j in G, j != i} A[i, j]``.
Metrics
    Pearson correlation (scipy), R² and MSE (scikit-learn) of prediction against truth, and the F1 score of the
    sign (positive transfer, gain > 0, is the positive class; scikit-learn). Undefined values are ``nan`` with a
    note: fewer than two entries, constant predictions or constant truth (correlation), constant truth (R²), no
    positive entry in truth or prediction (F1). Scale-free correlation is the headline of Tables 2 and 3 (affinity
    scores are not on the scale of gains, so their R² and MSE mean little).
Evaluation groups
    Pairwise tables: every pair (``etap_table2``: signals are not fitted, all pairs are scored), or for
    ``divergence_*`` a random ``train_fraction`` (25%) of the pairs for training and the other pairs held out.
    Group tables: one fixed, seeded sample of ``n_eval`` groups of two or more tasks per (dataset, seed), shared by
    every method and repeat (ETAP's "fixed hold-out test set, shared across all methods"), fewer where the dataset
    has too few groups to leave the largest ``|G_train|`` of the run outside it (5 tasks: 26 groups).
    ``|G_train|`` training groups are drawn at random from the other groups for every predictor (ETAP: "all gain
    predictors are trained using randomized task subsets"), so a predictor's own
    :meth:`~bench.predictors.base.Predictor.training_groups` is not used here; in particular MTGNet is
    ``mtg_net[active_budget=0]``, fitted on those groups without active sampling, so that ``|G_train|`` counts
    every training it used. A group a predictor still asks its oracle for is dropped from that fit's evaluation
    set, so held-out groups never overlap training groups (``n_eval_groups`` records how many remained,
    ``n_train_used`` how many groups the fit saw).
Repeats
    Repeat ``r`` draws its training groups with ``bench.seeding.rng(seed, "predeval", "train", dataset, r)``; the
    draw does not depend on the method (paired comparisons, as ETAP Table 9 trains both methods on the same groups)
    and the first ``k`` groups of a larger draw are the draw of size ``k`` (nested ``|G_train|``). Signals and
    predictor fits get the repeat's seed ``derive_seed(seed, "predeval", "repeat", r)``; signals that train groups
    themselves get the cached trainer under that seed, never the ground-truth seed (no leak of evaluation groups).
    Each cell is mean ± population std over the repeats with a finite value.
Skips and failures
    A cell whose component raises :class:`bench.errors.Unsupported` (a training signal on a lookup-table dataset,
    a group missing from a published table) is recorded as skipped with the reason; any other error as failed.

Output (:func:`run_predictor_tables`): ``OUT/<table>.csv`` and ``OUT/<table>.md`` per table, and
``OUT/evaluations.jsonl``, one record per (table, dataset, row, repeat), appended as each finishes. A re-run reads
the finished records back (resumable) and trains nothing new (the cache). Published numbers
(``results/reference/predictors/``) are put beside ours, labelled ``published``, for a dataset whose data are the
paper's (ETAP's ETTm1 and our ``ettm1``; the tabular-divergence paper's School, Chemical, Landmine and ours) or,
labelled ``published (related data)``, where the dataset is related but not the same data (ETAP's ETTm1 and our
``ettm1_tab``, MTG-Net's gain table of the same tasks; ETAP's Chemical, 10 of the 35 molecules, and our
``chemical``, all 35); only when ours are real data, never beside a synthetic stand-in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import registry
from bench.cache import ResultCache, canonical_json
from bench.component import parse_id
from bench.dataset import Problem
from bench.errors import Unsupported, UsageError
from bench.gains import Observation, observe
from bench.predictors.base import Evidence, all_pairs, random_groups
from bench.seeding import derive_seed, rng
from bench.signals.base import Affinity
from bench.types import Group, GroupResult, make_group

VERSION = "1"
"""Bump when the protocol changes: it feeds the record keys, so old records are not reused."""

SPLITS = ("val", "test")
METRICS = ("pearson", "r2", "mse", "f1")
METRIC_LABELS = {"pearson": "correlation", "r2": "R²", "mse": "MSE", "f1": "F1"}
RECORDS_FILE = "evaluations.jsonl"
TABLE3_SIZES = (5, 10, 20)
"""``|G_train|`` of ``etap_table3``: the paper's 5 and 10, and 20."""
TABLE9_SIZES = (20,)
"""``|G_train|`` of ``etap_table9`` (the paper used 21 to 37 groups, a different number per dataset)."""
TRAIN_FRACTION = 0.25
"""Share of the pairs used for training in the ``divergence_*`` tables (tabular-divergence-features A.3)."""
N_EVAL = 30
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference" / "predictors"


# ----------------------------------------------------------------------------------------------------- metrics


def _arrays(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} true values against {p.size} predictions")
    return y, p


def pearson(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[float, str | None]:
    """Pearson correlation (``scipy.stats.pearsonr``); ``(nan, note)`` where it is undefined."""
    from scipy.stats import pearsonr

    y, p = _arrays(y_true, y_pred)
    if y.size < 2:
        return math.nan, "correlation undefined: fewer than 2 entries"
    if np.ptp(p) == 0:
        return math.nan, "correlation undefined: constant predictions"
    if np.ptp(y) == 0:
        return math.nan, "correlation undefined: constant ground truth"
    return float(pearsonr(y, p)[0]), None


def r_squared(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[float, str | None]:
    """Coefficient of determination (``sklearn.metrics.r2_score``); ``nan`` for constant truth."""
    from sklearn.metrics import r2_score

    y, p = _arrays(y_true, y_pred)
    if y.size < 2:
        return math.nan, "R² undefined: fewer than 2 entries"
    if np.ptp(y) == 0:
        return math.nan, "R² undefined: constant ground truth"
    return float(r2_score(y, p)), None


def mse(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[float, str | None]:
    from sklearn.metrics import mean_squared_error

    y, p = _arrays(y_true, y_pred)
    if y.size == 0:
        return math.nan, "MSE undefined: no entries"
    return float(mean_squared_error(y, p)), None


def sign_f1(y_true: Sequence[float], y_pred: Sequence[float]) -> tuple[float, str | None]:
    """F1 of the sign, positive transfer (gain > 0) the positive class (``sklearn.metrics.f1_score``).

    ``2 TP / (2 TP + FP + FN)``: undefined (``nan``) when neither truth nor prediction has a positive entry; 0 with a
    note when only one of them has.
    """
    from sklearn.metrics import f1_score

    y, p = _arrays(y_true, y_pred)
    if y.size == 0:
        return math.nan, "F1 undefined: no entries"
    t, q = y > 0, p > 0
    if not t.any() and not q.any():
        return math.nan, "F1 undefined: no positive transfer in truth or prediction"
    note = None
    if not t.any():
        note = "F1 is 0: no positive transfer in the ground truth"
    elif not q.any():
        note = "F1 is 0: no positive transfer predicted"
    return float(f1_score(t, q, zero_division=np.nan)), note


@dataclass(frozen=True)
class Scores:
    """The metrics of one set of entries (``nan`` where undefined; ``notes`` says why)."""

    n: int
    pearson: float
    r2: float
    mse: float
    f1: float
    notes: tuple[str, ...] = ()


def score(y_true: Sequence[float], y_pred: Sequence[float]) -> Scores:
    values, notes = {}, []
    for name, fn in (("pearson", pearson), ("r2", r_squared), ("mse", mse), ("f1", sign_f1)):
        values[name], note = fn(y_true, y_pred)
        if note:
            notes.append(note)
    return Scores(len(np.ravel(y_true)), notes=tuple(notes), **values)


# ------------------------------------------------------------------------------------------------ table specs


@dataclass(frozen=True)
class RowSpec:
    """One row of a table: a method (a signal, a predictor or both) under one training setting.

    ``n_train``: ``|G_train|`` in group tables (0: no training groups, the paper's ``*``); ``None`` in pairwise
    tables (the table's protocol decides).
    """

    method: str
    label: str
    signal: str | None = None
    predictor: str | None = None
    n_train: int | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    protocol: str  # "pairs": every pair, no training; "pairs-split": train on a fraction of pairs; "groups"
    headline: tuple[str, ...]
    title: str
    paper: str
    reference: str  # file under results/reference/predictors/


TABLE_SPECS: dict[str, TableSpec] = {
    "etap_table2": TableSpec(
        "etap_table2", "pairs", ("pearson",),
        "Correlation between pairwise affinity scores and ground-truth MTL gains",
        "ETAP, Table 2", "etap_table2_pairwise_affinity.csv"),
    "etap_table3": TableSpec(
        "etap_table3", "groups", ("pearson",),
        "Correlation between ground-truth and predicted MTL gains for groups",
        "ETAP, Table 3", "etap_table3_group_gain_correlation.csv"),
    "etap_table9": TableSpec(
        "etap_table9", "groups", ("pearson", "f1"),
        "ETAP vs. linear surrogate: correlation and F1 of positive vs. negative transfer",
        "ETAP, Table 9 (Appendix D.2)", "etap_table9_etap_vs_surrogate.csv"),
    "divergence_table2": TableSpec(
        "divergence_table2", "pairs-split", ("pearson",),
        "Pairwise MTL gain prediction: correlation between predicted pairwise affinity and actual MTL gain",
        "tabular-divergence-features, Table 2", "divergence_table2_pairwise_correlation.csv"),
    "divergence_table6": TableSpec(
        "divergence_table6", "pairs-split", ("r2", "pearson"),
        "Linear vs. quadratic regression on the task-relation features for pairwise MTL gains",
        "tabular-divergence-features, Table 6 (Appendix A.3)", "divergence_table6_linear_vs_quadratic.csv"),
}
TABLES = tuple(TABLE_SPECS)


def table_rows(table: str, sizes: Sequence[int] = TABLE3_SIZES,
               sizes9: Sequence[int] = TABLE9_SIZES) -> list[RowSpec]:
    """The default rows of ``table`` (``sizes``: ``|G_train|`` of Table 3; ``sizes9``: of Table 9)."""
    if table == "etap_table2":
        return [RowSpec("tag", "TAG", signal="tag"), RowSpec("grad_tae", "GRAD-TAE", signal="grad_tae"),
                RowSpec("etap", "ETAP", signal="etap")]
    if table == "etap_table3":
        return ([RowSpec("tag", "TAG", signal="tag", predictor="affinity", n_train=0)]
                + [RowSpec("mtg_net", "MTGNet", predictor="mtg_net[active_budget=0]", n_train=k) for k in sizes]
                + [RowSpec("etap", "ETAP", signal="etap", predictor="etap", n_train=k) for k in sizes])
    if table == "etap_table9":
        return [RowSpec(m, label, signal=sig, predictor=m, n_train=k) for k in sizes9
                for m, label, sig in (("surrogate", "Surrogate Model", None), ("etap", "ETAP", "etap"))]
    if table == "divergence_table2":
        return [RowSpec("tag", "TAG", signal="tag"), RowSpec("grad_tae", "GRAD-TAE", signal="grad_tae"),
                RowSpec("quadratic", "Feature-Based Quadratic", signal="divergence", predictor="quadratic_ridge")]
    if table == "divergence_table6":
        return [RowSpec("linear", "Linear Regression", signal="divergence",
                        predictor="quadratic_ridge[degree=1,ridge=false]"),
                RowSpec("quadratic", "Quadratic Regression", signal="divergence", predictor="quadratic_ridge")]
    raise unknown_table(table)


def unknown_table(name: str) -> UsageError:
    return UsageError(f"unknown table {name!r}; allowed: {', '.join(TABLES)}")


def setting_label(spec: TableSpec, row: RowSpec, train_fraction: float) -> str:
    if spec.protocol == "pairs":
        return "all pairs"
    if spec.protocol == "pairs-split":
        return f"{train_fraction:.0%} of pairs"
    return "*" if not row.n_train else f"|G_train| = {row.n_train}"


# ----------------------------------------------------------------------------------------------- group draws


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of signals and predictor fits in repeat ``repeat``."""
    return derive_seed(seed, "predeval", "repeat", repeat)


def training_rng(seed: int, dataset: str, repeat: int) -> np.random.Generator:
    """The generator of repeat ``repeat``'s training draw (independent of the method: paired comparisons)."""
    return rng(seed, "predeval", "train", dataset, repeat)


def draw_groups(problem: Problem, count: int, gen: np.random.Generator,
                exclude: Iterable[Group] = ()) -> list[Group]:
    """``count`` distinct groups of two or more tasks, none in ``exclude`` (fewer when fewer exist).

    :func:`bench.predictors.base.random_groups`: every subset available, a size uniform in [2, n], then a uniform
    subset (the distribution ETAP's and the surrogate's training groups are drawn from); a published table with
    some groups only, a uniform sample of the table's groups. Either way a prefix of a longer draw from the same
    generator state is the shorter draw.
    """
    if count <= 0:
        return []
    return random_groups(problem.task_names, count, gen, min_size=2, exclude=exclude, listed=problem.listed_groups())


def n_groups(problem: Problem) -> int:
    """How many groups of two or more tasks have a result."""
    n, listed = problem.n_tasks, problem.listed_groups()
    return (1 << n) - n - 1 if listed is None else sum(1 for g in listed if len(g) >= 2)


def evaluation_groups(problem: Problem, n_eval: int, seed: int, dataset: str, reserve: int = 0) -> list[Group]:
    """The fixed held-out groups of the group tables for (``dataset``, ``seed``), shared by methods and repeats.

    ``min(n_eval, N - reserve)`` groups (at least 2), ``N`` the groups of two or more tasks, so that ``reserve``
    training groups (the largest ``|G_train|`` asked for) remain outside them; a smaller set is a prefix of a
    larger one.
    """
    count = min(n_eval, max(2, n_groups(problem) - reserve))
    return draw_groups(problem, count, rng(seed, "predeval", "eval", dataset))


def dataset_pairs(problem: Problem) -> list[Group]:
    """Every pair of tasks with a result (all pairs, or those of a published table)."""
    pairs, listed = all_pairs(problem.task_names), problem.listed_groups()
    if listed is None:
        return pairs
    known = {make_group(g) for g in listed}
    return [p for p in pairs if p in known]


def split_pairs(pairs: Sequence[Group], fraction: float, gen: np.random.Generator) -> tuple[list[Group], list[Group]]:
    """``round(fraction * len(pairs))`` random pairs (at least 1) for training, the rest (at least 2) held out."""
    if len(pairs) < 3:
        raise Unsupported(f"{len(pairs)} pairs are too few to hold some out (need 3)")
    k = min(max(1, round(fraction * len(pairs))), len(pairs) - 2)
    order = gen.permutation(len(pairs))
    return [pairs[i] for i in order[:k]], [pairs[i] for i in order[k:]]


# ----------------------------------------------------------------------------------------------- ground truth


class GroundTruth:
    """Group results through the runner's cached trainer (:class:`bench.runner._Trainings`) and their gains."""

    def __init__(self, problem: Problem, cache: ResultCache, device: str, seed: int) -> None:
        from bench.runner import _Trainings

        self.problem, self.seed = problem, seed
        self.trainings = _Trainings(problem, cache, device)
        self._results: dict[tuple[Group, int], GroupResult] = {}
        self._stl: dict[str, GroupResult] | None = None

    def result(self, group: Iterable[str], seed: int | None = None) -> GroupResult:
        group = self.problem.check_group(group)
        seed = self.seed if seed is None else seed
        if (group, seed) not in self._results:
            self._results[group, seed] = self.trainings(group, seed)
        return self._results[group, seed]

    def stl(self) -> dict[str, GroupResult]:
        if self._stl is None:
            self._stl = {t: self.result((t,)) for t in self.problem.task_names}
        return self._stl

    def observe(self, group: Iterable[str], split: str) -> Observation:
        return observe(self.result(group), self.stl(), self.problem.tasks, split)


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class _Dataset:
    """Everything shared by the cells of one dataset in one run."""

    id: str
    problem: Problem
    truth: GroundTruth
    seed: int
    device: str
    n_eval: int
    reserve: int = 0
    """Groups to keep outside the evaluation set for training (the largest ``|G_train|`` of the run)."""
    affinities: dict[tuple[str, int], Affinity | BaseException] = field(default_factory=dict)
    _eval: list[Group] | None = None

    def eval_groups(self) -> list[Group]:
        if self._eval is None:
            self._eval = evaluation_groups(self.problem, self.n_eval, self.seed, self.id, self.reserve)
        return self._eval

    def affinity(self, signal_id: str, seed: int) -> Affinity:
        """The signal's affinity under ``seed`` (computed once per run; a raised error is remembered too)."""
        key = (signal_id, seed)
        if key not in self.affinities:
            try:
                from bench.method import Context

                signal = registry.create("signal", signal_id).at_profile(self.problem.identity.get("profile"))
                # through the runner's signal cache: a suite run with this seed and this evaluation share it
                ctx = Context(self.problem, seed, self.truth.result, self.device)
                self.affinities[key] = self.truth.trainings.signal(signal, ctx)
            except Exception as exc:  # noqa: BLE001 - re-raised for every cell that needs it
                self.affinities[key] = exc
        value = self.affinities[key]
        if isinstance(value, BaseException):
            raise value
        return value


@dataclass(frozen=True)
class CellResult:
    scores: Scores
    n_eval_groups: int
    n_train_used: int
    notes: tuple[str, ...] = ()
    entries: tuple[tuple[Group, str, float, float], ...] = ()
    """``(group, task, true gain, prediction)`` per scored member."""
    trained: tuple[Group, ...] = ()
    """Every group the fit saw (its training groups and its oracle's), singletons included."""


def evaluate_row(ds: _Dataset, spec: TableSpec, row: RowSpec, repeat: int, *, fit_split: str = "val",
                 report_split: str = "test", train_fraction: float = TRAIN_FRACTION) -> CellResult:
    """Score one row in one repeat (see the module docstring for the protocol); raises on skip or failure."""
    problem, truth = ds.problem, ds.truth
    tasks = problem.task_names
    rseed = repeat_seed(ds.seed, repeat)
    notes: list[str] = []
    profile = problem.identity.get("profile")
    predictor = registry.create("predictor", row.predictor).at_profile(profile) if row.predictor is not None else None
    affinity = ds.affinity(row.signal, rseed) if row.signal is not None else None
    if predictor is None and affinity is None:
        raise UsageError(f"row {row.method} names neither a signal nor a predictor")
    gen = training_rng(ds.seed, ds.id, repeat)

    if spec.protocol == "pairs":
        train, candidates = [], dataset_pairs(problem)
    elif spec.protocol == "pairs-split":
        train, candidates = split_pairs(dataset_pairs(problem), train_fraction, gen)
    else:
        candidates = ds.eval_groups()
        train = []
        if predictor is not None and row.n_train:
            train = draw_groups(problem, row.n_train, gen, exclude=candidates)
            if not train:
                raise Unsupported(f"all {len(candidates)} groups of two or more tasks are evaluation groups; none "
                                  "is left for training (lower n_eval)")
            if len(train) < row.n_train:
                notes.append(f"only {len(train)} training groups outside the evaluation groups")

    seen: set[Group] = set(train)
    if predictor is not None:
        observations = [truth.observe(g, fit_split) for g in train]

        def oracle(group: Group) -> Observation:
            group = problem.check_group(group)
            seen.add(group)
            return truth.observe(group, fit_split)

        predictor.fit(observations, Evidence(tasks, affinity, oracle, problem.listed_groups()), rseed)
        predict: Callable[[Group], Mapping[str, float]] = predictor.predict
    else:
        assert affinity is not None  # TAG's group score: the mean affinity onto each member from the others
        predict = registry.create("predictor", "affinity").fit([], Evidence(tasks, affinity), rseed).predict

    held_out = [g for g in candidates if g not in seen]
    if len(held_out) < len(candidates):
        notes.append(f"{len(candidates) - len(held_out)} evaluation groups dropped: the predictor trained them")
    entries = []
    for group in held_out:
        actual = truth.observe(group, report_split).gains
        predicted = predict(group)
        entries.extend((group, t, float(actual[t]), float(predicted[t])) for t in group)
    scores = score([e[2] for e in entries], [e[3] for e in entries])
    used = len({g for g in seen if len(g) >= 2})
    return CellResult(scores, len(held_out), used, tuple(notes), tuple(entries),
                      tuple(sorted(seen, key=lambda g: (len(g), g))))


# --------------------------------------------------------------------------------------------------- records


def read_records(out_dir: str | Path) -> list[dict]:
    """The records of ``OUT/evaluations.jsonl`` (a truncated last line from a kill is dropped)."""
    path = Path(out_dir) / RECORDS_FILE
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records


def _append(out_dir: Path, record: dict) -> None:
    path = out_dir / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a+") as fh:  # start on a fresh line if a killed run left a partial one
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(fh.tell() - 1)
            if fh.read(1) != "\n":
                text = "\n" + text
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _identity(kind: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return registry.create(kind, text).identity()
    except Exception:  # noqa: BLE001 - unknown here; the cell itself reports the error
        return text


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------- the driver


def run_predictor_tables(datasets: Sequence[str], tables: Sequence[str], out_dir: str | Path,
                         profile: str = "mini", data_root: str | None = None, cache_dir: str | Path | None = None,
                         seed: int = 0, repeats: int = 3, device: str = "cpu",
                         progress: Callable[[str], None] | None = None, *, n_eval: int = N_EVAL,
                         sizes: Sequence[int] = TABLE3_SIZES, sizes9: Sequence[int] = TABLE9_SIZES,
                         train_fraction: float = TRAIN_FRACTION, fit_split: str = "val", report_split: str = "test",
                         rows: Mapping[str, Sequence[RowSpec]] | None = None,
                         reference_dir: str | Path | None = None) -> list[Path]:
    """Evaluate every (table, dataset, row, repeat) and write ``OUT/<table>.csv`` and ``.md``; returns the paths.

    ``rows`` replaces a table's default rows (:func:`table_rows`), e.g. with other components. Resumable: cells
    with an ``ok`` or ``skipped`` record in ``OUT/evaluations.jsonl`` under the same key are not recomputed.
    """
    from bench.cache import default_cache_dir
    from bench.runner import load_problem

    tables = list(dict.fromkeys(tables))
    for t in tables:
        if t not in TABLE_SPECS:
            raise unknown_table(t)
    if not datasets:
        raise UsageError("no datasets given")
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    if n_eval < 2:
        raise UsageError(f"n_eval must be at least 2, got {n_eval}")
    if not 0 < train_fraction < 1:
        raise UsageError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if any(int(k) < 1 for k in (*sizes, *sizes9)):
        raise UsageError(f"|G_train| sizes must be positive, got {list(sizes)} and {list(sizes9)}")
    for split in (fit_split, report_split):
        if split not in SPLITS:
            raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    problems: dict[str, Problem] = {}
    for d in datasets:  # fail early on unknown datasets, profiles and missing files
        dataset = registry.create("dataset", d)
        if profile not in dataset.profiles:
            raise UsageError(f"dataset {d} has no profile {profile!r}; it has {sorted(dataset.profiles)}")
        problems[d] = load_problem(d, profile, data_root)
    specs = {t: list(rows[t]) if rows is not None and t in rows else table_rows(t, sizes, sizes9) for t in tables}
    for t, row_specs in specs.items():
        labels = [(r.method, setting_label(TABLE_SPECS[t], r, train_fraction)) for r in row_specs]
        if len(set(labels)) < len(labels):
            raise UsageError(f"table {t}: two rows share a method and setting: {labels}")

    reserve = max([r.n_train or 0 for t in tables if TABLE_SPECS[t].protocol == "groups" for r in specs[t]],
                  default=0)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(cache_dir if cache_dir is not None else default_cache_dir())
    done = {r["key"]: r for r in read_records(out) if r.get("status") in ("ok", "skipped")}
    settings = {"version": VERSION, "seed": int(seed), "profile": profile, "n_eval": int(n_eval),
                "train_fraction": float(train_fraction), "fit_split": fit_split, "report_split": report_split,
                "device": device.split(":")[0]}
    contexts: dict[str, _Dataset] = {}
    records: dict[tuple, dict] = {}
    for table in tables:
        spec = TABLE_SPECS[table]
        for d in datasets:
            problem = problems[d]
            ds = contexts.get(d)
            if ds is None:
                ds = contexts[d] = _Dataset(d, problem, GroundTruth(problem, cache, device, seed), seed, device,
                                            n_eval, reserve)
            for row in specs[table]:
                setting = setting_label(spec, row, train_fraction)
                for r in range(repeats):
                    payload = {**settings, "table": table, "protocol": spec.protocol, "dataset": d,
                               "problem": problem.identity, "method": row.method, "n_train": row.n_train,
                               "signal": _identity("signal", row.signal),
                               "predictor": _identity("predictor", row.predictor), "repeat": r,
                               "eval_groups": ds.eval_groups() if spec.protocol == "groups" else None}
                    key = hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:24]
                    record = done.get(key)
                    reused = record is not None
                    if record is None:
                        record = _run_cell(ds, spec, row, r, key, setting, fit_split, report_split, train_fraction,
                                           profile)
                        _append(out, record)
                    records[table, d, row.method, setting, r] = record
                    if progress is not None:
                        progress(f"{table} {d} {row.label} ({setting}) repeat {r}: {_progress_text(record)}"
                                 + (" [reused]" if reused else ""))
    published = load_published(reference_dir)
    paths: list[Path] = []
    for table in tables:
        rows_out = aggregate([rec for (t, *_), rec in records.items() if t == table])
        paths += write_table(out, TABLE_SPECS[table], rows_out, published.get(table, []), problems,
                             dict(settings, repeats=repeats, sizes=list(sizes), sizes9=list(sizes9)))
    return paths


def _progress_text(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']} ({record.get('reason', '')})"
    return ", ".join(f"{m}={record[m]:.3f}" if record.get(m) is not None else f"{m}=nan" for m in METRICS)


def _run_cell(ds: _Dataset, spec: TableSpec, row: RowSpec, repeat: int, key: str, setting: str, fit_split: str,
              report_split: str, train_fraction: float, profile: str) -> dict:
    record = {"key": key, "table": spec.name, "dataset": ds.id, "data": ds.problem.data, "profile": profile,
              "method": row.method, "label": row.label, "signal": row.signal, "predictor": row.predictor,
              "setting": setting, "n_train": row.n_train, "repeat": repeat, "seed": ds.seed,
              "fit_split": fit_split, "report_split": report_split}
    try:
        result = evaluate_row(ds, spec, row, repeat, fit_split=fit_split, report_split=report_split,
                              train_fraction=train_fraction)
    except Unsupported as exc:
        return {**record, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - recorded; the other cells go on
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    s = result.scores
    return {**record, "status": "ok", "n_entries": s.n, "n_eval_groups": result.n_eval_groups,
            "n_train_used": result.n_train_used, "notes": [*result.notes, *s.notes],
            **{m: _finite(getattr(s, m)) for m in METRICS}}


# ------------------------------------------------------------------------------------------------ aggregation


def aggregate(records: Sequence[dict]) -> list[dict]:
    """One row per (dataset, method, setting): mean ± population std of each metric over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["dataset"], rec["method"], rec["setting"]), []).append(rec)
    out = []
    for (dataset, method, setting), recs in groups.items():
        first = recs[0]
        ok = [r for r in recs if r["status"] == "ok"]
        statuses = {r["status"] for r in recs}
        status = "ok" if statuses == {"ok"} else "failed" if "failed" in statuses else \
            "skipped" if statuses == {"skipped"} else "partial"
        row = {"table": first["table"], "dataset": dataset, "data": first["data"], "source": "ours",
               "method": method, "label": first["label"], "signal": first["signal"] or "",
               "predictor": first["predictor"] or "", "setting": setting,
               "n_train": "" if first["n_train"] is None else first["n_train"]}
        for m in METRICS:
            values = [r[m] for r in ok if r.get(m) is not None]
            row[m] = float(np.mean(values)) if values else math.nan
            row[f"{m}_std"] = float(np.std(values)) if values else math.nan
            row[f"{m}_repeats"] = len(values)
        for count in ("n_entries", "n_eval_groups", "n_train_used"):
            values = [r[count] for r in ok]
            row[count] = float(np.mean(values)) if values else math.nan
        row["repeats_ok"] = len(ok)
        row["repeats"] = len(recs)
        row["status"] = status
        reasons = [r["reason"] for r in recs if r["status"] != "ok"]
        row["reason"] = reasons[0] if reasons else ""
        notes: dict[str, int] = {}
        for r in ok:
            for note in r.get("notes", []):
                notes[note] = notes.get(note, 0) + 1
        row["notes"] = "; ".join(f"{n} ({c}/{len(recs)} repeats)" for n, c in notes.items())
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------- published numbers


def read_reference(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """``(# key: value metadata, CSV rows)`` of one file of ``results/reference/predictors/``."""
    meta: dict[str, str] = {}
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            lines.append(line)
    return meta, list(csv.DictReader(io.StringIO("\n".join(lines))))


def load_published(reference_dir: str | Path | None = None) -> dict[str, list[dict[str, str]]]:
    """Published rows by table name (missing files give no rows)."""
    ref = Path(reference_dir) if reference_dir is not None else REFERENCE_DIR
    out = {}
    for name, spec in TABLE_SPECS.items():
        path = ref / spec.reference
        out[name] = read_reference(path)[1] if path.is_file() else []
    return out


def _published_for(published: Sequence[dict[str, str]], dataset: str, data: str) -> list[tuple[str, dict]]:
    """The published rows to set beside ours on ``dataset``: the same data, or labelled related data."""
    if data != "real":
        return []
    name = parse_id(dataset)[0]
    out = []
    for row in published:
        if row.get("dataset_id") in (dataset, name):
            out.append(("published", row))
        elif row.get("related_id") in (dataset, name):
            out.append((f"published (related data: the paper's {row['dataset']})", row))
    return out


def _published_rows(spec: TableSpec, published: Sequence[dict[str, str]], dataset: str, data: str) -> list[dict]:
    """Published rows beside ours, one per (method, setting), metric columns holding the printed cells."""
    merged: dict[tuple, dict] = {}
    for source, p in _published_for(published, dataset, data):
        setting = p["setting"] or ""
        row = merged.setdefault((p["method"], setting), {
            "table": spec.name, "dataset": dataset, "data": "", "source": source, "method": p["method"],
            "label": p["label"], "signal": "", "predictor": "", "setting": setting, "n_train": p.get("g_train", ""),
            "status": "published", "reason": "", "notes": f"{spec.paper}, {p['dataset']}"})
        row[p["metric_id"]] = p["mean"]
        row[f"{p['metric_id']}_std"] = p["std"]
    return list(merged.values())


# ----------------------------------------------------------------------------------------------------- files

CSV_COLUMNS = ["table", "dataset", "data", "source", "method", "label", "signal", "predictor", "setting", "n_train",
               *[c for m in METRICS for c in (m, f"{m}_std", f"{m}_repeats")], "n_entries", "n_eval_groups",
               "n_train_used", "repeats_ok", "repeats", "status", "reason", "notes"]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _fmt(mean: Any, std: Any) -> str:
    if isinstance(mean, str):  # published: as printed
        return f"{mean} ± {std}" if std else mean
    if mean is None or not math.isfinite(mean):
        return "nan"
    return f"{mean:.3f} ± {std:.3f}"


def _md(value: Any) -> str:
    """A markdown table cell: ``|`` escaped (settings read ``|G_train| = 5``)."""
    return str(value).replace("|", "\\|")


def write_table(out: Path, spec: TableSpec, rows: Sequence[dict], published: Sequence[dict[str, str]],
                problems: Mapping[str, Problem], settings: Mapping[str, Any]) -> list[Path]:
    """``OUT/<table>.csv`` (every metric, full precision) and ``OUT/<table>.md`` (the table's headline metrics)."""
    by_dataset: dict[str, list[dict]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    full: list[dict] = []
    for dataset, ours in by_dataset.items():
        full += ours
        full += _published_rows(spec, published, dataset, problems[dataset].data)

    csv_path = out / f"{spec.name}.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in full:
        writer.writerow([_csv_cell(row.get(c)) for c in CSV_COLUMNS])
    csv_path.write_text(buffer.getvalue())

    from bench.tables import markdown_table

    metric_cols = [*spec.headline, *[m for m in METRICS if m not in spec.headline]]
    header = ["dataset", "data", "source", "method", "setting", *[METRIC_LABELS[m] for m in metric_cols],
              "entries", "repeats", "status"]
    body = []
    for row in full:
        ours = row["source"] == "ours"
        if ours and not row["repeats_ok"]:
            cells = ["—"] * len(metric_cols)
        else:
            cells = [_fmt(row.get(m), row.get(f"{m}_std")) if ours or m in row else "" for m in metric_cols]
        if ours:
            entries = "" if not math.isfinite(row["n_entries"]) else f"{row['n_entries']:.0f}"
            status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
            if row["notes"]:
                status += f" — {row['notes']}"
            repeats = f"{row['repeats_ok']}/{row['repeats']}"
        else:
            entries, repeats, status = "", "", row["notes"]
        body.append([_md(v) for v in (row["dataset"], row["data"], row["source"], row["label"], row["setting"],
                                       *cells, entries, repeats, status)])
    intro = (f"Layout of {spec.paper}; {_protocol_text(spec, settings)} Cells: mean ± population std over the "
             f"repeats with a finite value (`repeats` = repeats that ran / asked for). Headline: "
             f"{', '.join(METRIC_LABELS[m] for m in spec.headline)}. Full precision in `{spec.name}.csv`.")
    lines = [f"# {spec.title}", "", intro, "",
             markdown_table(header, body) if body else "(no rows)", ""]
    if published:
        lines += _published_section(spec, published)
    md_path = out / f"{spec.name}.md"
    md_path.write_text("\n".join(lines))
    return [csv_path, md_path]


def _protocol_text(spec: TableSpec, s: Mapping[str, Any]) -> str:
    common = (f"profile {s['profile']}, seed {s['seed']}, {s['repeats']} repeats; predictors fitted on "
              f"{s['fit_split']} gains, scored on {s['report_split']} gains, one entry per member of each group.")
    if spec.protocol == "pairs":
        return f"every pair of tasks scored (no training groups); {common}"
    if spec.protocol == "pairs-split":
        return (f"{s['train_fraction']:.0%} of the pairs drawn for training in each repeat, the other pairs held "
                f"out and used for every row; {common}")
    return (f"{s['n_eval']} fixed held-out groups of two or more tasks, training groups drawn from the others in "
            f"each repeat (the same draw for every method; `*`: no training groups); {common}")


def _published_section(spec: TableSpec, published: Sequence[dict[str, str]]) -> list[str]:
    from bench.tables import markdown_table

    body = []
    for p in published:
        ours = p.get("dataset_id") or (f"related: {p['related_id']}" if p.get("related_id") else "")
        body.append([_md(v) for v in (p["dataset"], ours, p["label"], p["setting"], p["metric"],
                                       _fmt(p["mean"], p["std"]))])
    intro = (f"{spec.paper}, transcribed as printed in `results/reference/predictors/{spec.reference}` (the "
             "paper's datasets and trainings, not ours; `ours` names our dataset with the same data, "
             "or a related one).")
    return ["## Published", "", intro, "",
            markdown_table(["dataset", "ours", "method", "setting", "metric", "published"], body), ""]
