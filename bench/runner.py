"""The runner: a suite = datasets x methods/baselines x split counts x seeds, one JSON record per run.

Work is cut into *cells*, one per (dataset, method, seed). A cell loads the problem, runs the method's
``collect`` and ``fit`` once, then ``solve`` for every split count, trains the chosen groups through the shared
cache and scores them (:func:`bench.selection.evaluate`). Split-independent methods (STL, Naive-MTL) give one
record per seed with ``n_groups = null``.

Timing (only the runner times): ``t_signal_s``, ``t_fit_s`` and ``t_solve_s`` are the phases of the method, and
``t_train_s`` the training of the groups finally chosen. Ground-truth trainings a phase asks for count in that
phase at their **originally measured** time, whether they were trained now or found in the cache, so a table's
timings do not depend on what the cache held (``wall_s`` is what this run really spent). ``n_trainings`` counts
the distinct ground-truth trainings the method consumed for that split count (its signal and fit, shared by every
split count, and that split count's own solve: the same whichever other split counts ran in the cell),
``n_trainings_solve`` those of the solve that the signal and the fit had not consumed; ``cache_hits`` how many
of those phases' trainings and of the chosen groups' were hits.

Resumable: a record is appended (and synced) as soon as its cell finishes; on start, finished records are read
back (a truncated last line from a kill is dropped) and their runs are not redone. Group trainings are cached as
they finish, so a cell killed halfway loses at most the training in progress. ``--jobs N`` runs cells in N
processes; records are written by the parent only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench import registry
from bench.cache import ENGINE_VERSION, ResultCache, canonical_json, result_key
from bench.dataset import Problem
from bench.errors import BenchError, Unsupported, UsageError
from bench.heap import keep_freed_memory
from bench.method import Context, Method
from bench.progress import progress
from bench.provenance import pin, provenance
from bench.selection import evaluate, mean_defined
from bench.types import Group, GroupResult, Grouping


@dataclass(frozen=True)
class Settings:
    """Everything about a run that is not the suite's grid."""

    out_dir: str
    cache_dir: str
    data_root: str | None = None
    device: str = "cpu"
    profile: str = "mini"


@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    seed: int
    splits: tuple[int, ...]


@dataclass
class Summary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    reused: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ----------------------------------------------------------------------------------------------- records file


def records_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "records.jsonl"


def read_records(out_dir: str | Path) -> list[dict]:
    """The records of ``out_dir``; a truncated or corrupt line (a run killed while writing) is dropped."""
    path = records_path(out_dir)
    if not path.exists():
        return []
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:  # rewrite without the broken lines, so appends start on a clean line
        rewrite_records(out_dir, records)
    return records


def rewrite_records(out_dir: str | Path, records: Iterable[dict]) -> None:
    """Replace the records of ``out_dir`` atomically (a temporary file renamed over it: an interruption never
    leaves half a file)."""
    path = records_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)


def append_records(out_dir: str | Path, records: Iterable[dict]) -> None:
    path = records_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_key(dataset: str, method: Method, n_groups: int | None, seed: int, problem_identity: dict) -> str:
    payload = {"dataset": dataset, "method": method.identity(), "n_groups": n_groups, "seed": seed,
               "problem": problem_identity}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ one cell

_PROBLEMS: dict[tuple, Problem] = {}


def load_problem(dataset_id: str, profile: str, data_root: str | None) -> Problem:
    key = (dataset_id, profile, data_root)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = registry.create("dataset", dataset_id).load(profile, data_root)
    return _PROBLEMS[key]


class _Trainings:
    """Trains groups through the cache and accounts for time: real elapsed vs originally measured cost."""

    def __init__(self, problem: Problem, cache: ResultCache, device: str) -> None:
        self.problem, self.cache, self.device = problem, cache, device
        self.elapsed = 0.0
        self.cost = 0.0
        self.hits = 0
        self.count = 0

    def __call__(self, group: Group, seed: int) -> GroupResult:
        start = time.perf_counter()
        if self.problem.cacheable:
            key = result_key(self.problem.identity, group, seed, self.device)
            result = self.cache.get_or_compute(key, lambda: self.problem.train(group, seed, device=self.device))
        else:
            result = self.problem.train(group, seed, device=self.device)
        self.elapsed += time.perf_counter() - start
        self.cost += result.wall_time_s
        self.hits += int(result.cached)
        self.count += 1
        return result

    def many(self, groups: Sequence[Group], seed: int) -> dict[Group, GroupResult]:
        """Like calling this object for every group, with the cache misses trained together
        (:meth:`Problem.train_many`: stacked where the model allows) and each stored as soon as it is done.

        Unlike a single training, the misses are not locked against a concurrent run (a stack would hold a lock
        per group): two runs may both train a group. The first stored entry stays, and both use it (with their
        own training time), so runs that share a cache report the same numbers (see :mod:`bench.cache`)."""
        start = time.perf_counter()
        out: dict[Group, GroupResult] = {}
        keys = {g: result_key(self.problem.identity, g, seed, self.device) for g in groups}
        misses = []
        for group in dict.fromkeys(groups):
            hit = self.cache.get(keys[group]) if self.problem.cacheable else None
            if hit is not None:
                self.cache.hits += 1
                out[group] = hit
            else:
                misses.append(group)
        if misses:
            stored: dict[Group, GroupResult] = {}

            def store(group: Group, result: GroupResult) -> None:
                stored[group] = self.cache.put(keys[group], result)

            try:
                out.update(self.problem.train_many(misses, seed, self.device,
                                                   on_result=store if self.problem.cacheable else None))
                out.update(stored)
            finally:
                self.elapsed += time.perf_counter() - start
        else:
            self.elapsed += time.perf_counter() - start
        for group in dict.fromkeys(groups):
            result = out[group]
            self.cost += result.wall_time_s
            self.hits += int(result.cached)
            self.count += 1
        return {g: out[g] for g in groups}

    def signal(self, signal, ctx: Context):
        """``signal.compute`` through the cache (key: problem identity, signal identity, seed, device).

        The signal's own cost (its time minus the trainings it asked for, which are accounted as trainings) is
        stored with it; a hit adds that original cost and replays the trainings the signal asked for through
        ``ctx.train`` (cache hits themselves), so counts and timings do not depend on what the cache held.
        """
        from bench.signals.base import Affinity

        if not self.problem.cacheable:
            return signal.compute(self.problem, ctx.seed, self.device, train=ctx.trainer)
        key = hashlib.sha256(canonical_json({
            "engine": ENGINE_VERSION, "kind": "signal", "problem": self.problem.identity,
            "signal": signal.identity(), "seed": ctx.seed, "device": self.device.split(":")[0],
        }).encode()).hexdigest()
        start, e0, ledger0 = time.perf_counter(), self.elapsed, len(ctx.ledger)

        def compute():
            affinity = signal.compute(self.problem, ctx.seed, self.device, train=ctx.trainer)
            own = time.perf_counter() - start - (self.elapsed - e0)
            trained = [[list(t.group), t.seed] for t in ctx.ledger[ledger0:]]
            return {"affinity": affinity.to_json(), "own_time_s": own, "trainings": trained}

        payload, cached = self.cache.get_or_compute_payload(key, compute)
        if cached:
            by_seed: dict[int, list[Group]] = {}
            for group, seed in payload["trainings"]:
                by_seed.setdefault(seed, []).append(tuple(group))
            for seed, groups in by_seed.items():
                ctx.train_many(groups, seed)
            self.hits += 1
        own = float(payload["own_time_s"])
        self.elapsed += time.perf_counter() - start - (self.elapsed - e0)
        self.cost += own
        return Affinity.from_json(payload["affinity"])

    def phase(self, fn, *args):
        """Run ``fn(*args)``; its time with trainings counted at their original cost."""
        e0, c0 = self.elapsed, self.cost
        start = time.perf_counter()
        value = fn(*args)
        wall = time.perf_counter() - start
        return value, wall - (self.elapsed - e0) + (self.cost - c0)


def _base_record(cell: Cell, method: Method, problem: Problem, settings: Settings, n_groups, key) -> dict:
    return {
        "run_key": key,
        "dataset": cell.dataset,
        "method": method.id,
        "kind": method.kind,
        "semantics": method.semantics,
        "uses_splits": method.uses_splits,
        "n_groups": n_groups,
        "seed": cell.seed,
        "profile": settings.profile,
        "data": problem.data,
        "tasks": list(problem.task_names),
        "metric": problem.tasks[0].metric,
        "higher_is_better": problem.tasks[0].higher_is_better,
        "provenance": provenance(settings.device),
    }


def run_cell(cell: Cell, settings: Settings, done: frozenset[str] = frozenset()) -> list[dict]:
    """Run one (dataset, method, seed) for all its split counts; returns the new records (never raises)."""
    wall0 = time.perf_counter()
    problem = load_problem(cell.dataset, settings.profile, settings.data_root)
    method = registry.create_method(cell.method)
    ks: Sequence[int | None] = tuple(cell.splits) if method.uses_splits else (None,)
    keys = {k: run_key(cell.dataset, method, k, cell.seed, problem.identity) for k in ks}
    todo = [k for k in ks if keys[k] not in done]
    if not todo:
        return []
    cache = ResultCache(settings.cache_dir)
    trainings = _Trainings(problem, cache, settings.device)
    ctx = Context(problem, cell.seed, trainings, settings.device, signals=trainings.signal)
    records: list[dict] = []

    def finish(k, **fields):
        record = _base_record(cell, method, problem, settings, k, keys[k])
        # the signal, predictor and solver ids with the values they ran with (profile defaults included)
        record["parts"] = dict(ctx.parts) or None
        record.update(fields)
        records.append(record)

    try:
        signal, t_signal = trainings.phase(method.collect, ctx)
        model, t_fit = trainings.phase(method.fit, signal, ctx)
    except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
        for k in todo:
            finish(k, **_error_fields(exc))
        return records
    signal_info = _json_facts(getattr(signal, "info", None))
    # what collect and fit consumed, shared by every split count; each split count adds its own solve's
    fit_end, fit_hits = len(ctx.ledger), trainings.hits
    for k in todo:
        if k is not None and k > problem.n_tasks:
            finish(k, status="skipped", reason=f"n_groups={k} exceeds the {problem.n_tasks} tasks")
            continue
        ledger_start, hits_start = len(ctx.ledger), trainings.hits
        try:
            solved, t_solve = trainings.phase(method.solve, model, k if k is not None else problem.n_tasks, ctx)
            groupings = [solved] if isinstance(solved, Grouping) else list(solved)
            if not groupings:
                raise BenchError(f"{method.id} returned no grouping")
            for grouping in groupings:
                grouping.validate(problem.task_names, max_groups=k)
            eval_trainings = _Trainings(problem, cache, settings.device)
            distinct = sorted({g for grouping in groupings for g in grouping.groups}, key=lambda g: (len(g), g))
            results = eval_trainings.many(distinct, cell.seed)
            evaluations = [evaluate(gr, results, problem.tasks, serve_by=method.serve_by) for gr in groupings]
        except Exception as exc:  # noqa: BLE001
            finish(k, **_error_fields(exc))
            continue
        shared = {(t.group, t.seed) for t in ctx.ledger[:fit_end]}
        consumed = shared | {(t.group, t.seed) for t in ctx.ledger[ledger_start:]}
        per_task = {t: float(np.mean([e.per_task[t] for e in evaluations])) for t in problem.task_names}
        per_task_val = {t: float(np.mean([e.per_task_val[t] for e in evaluations])) for t in problem.task_names}
        extra = {m: {t: mean_defined([e.extra[m][t] for e in evaluations]) for t in problem.task_names}
                 for m in evaluations[0].extra}
        finish(
            k,
            status="ok",
            groups=groupings[0].as_lists(),
            # every grouping of a method that averages several (Random): a group as a hex bitmask over ``tasks``
            # (300 covers of MIMIC-III's 27 tasks as name lists made a record of 100 KB)
            grouping_masks=[[group_mask(g, problem.task_names) for g in gr.groups] for gr in groupings]
            if len(groupings) > 1 else None,
            grouping_totals=[e.total for e in evaluations] if len(groupings) > 1 else None,
            # the position in ``groups`` of the group serving each task (a list per task would make the record
            # quadratic in the number of tasks: half a megabyte for one School record)
            served_by={t: groupings[0].groups.index(evaluations[0].served_by[t]) for t in problem.task_names},
            per_task=per_task,
            per_task_val=per_task_val,
            extra_per_task=extra or None,
            total=float(sum(per_task.values())),
            t_signal_s=t_signal,
            t_fit_s=t_fit,
            t_solve_s=t_solve,
            t_train_s=eval_trainings.cost,
            n_trainings=len(consumed),
            n_trainings_solve=len(consumed - shared),  # distinct, beyond those the signal and the fit consumed
            signal_info=signal_info,
            # the solver and its status per grouping ("feasible": stopped by its time limit, not proved optimal)
            solved_by=[list(g.solved_by) for g in groupings if g.solved_by is not None] or None,
            cache_hits=fit_hits + trainings.hits - hits_start + eval_trainings.hits,
            wall_s=time.perf_counter() - wall0,
        )
    return records


def group_mask(group: Sequence[str], tasks: Sequence[str]) -> str:
    """``group`` as a hex bitmask over ``tasks`` (bit ``i``: ``tasks[i]``), as records list several groupings."""
    index = {t: i for i, t in enumerate(tasks)}
    return hex(sum(1 << index[t] for t in group))


def mask_group(mask: str, tasks: Sequence[str]) -> list[str]:
    """The inverse of :func:`group_mask`: the task names of a hex bitmask, in ``tasks`` order."""
    bits = int(mask, 16)
    return [t for i, t in enumerate(tasks) if bits >> i & 1]


def _json_facts(info) -> dict | None:
    """The scalar facts of a signal's ``info`` (steps observed, extra passes, ...) for the record."""
    if not isinstance(info, Mapping) or not info:
        return None
    return {str(k): v for k, v in info.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _error_fields(exc: Exception) -> dict:
    status = "skipped" if isinstance(exc, Unsupported) else "failed"
    fields = {"status": status, "reason": f"{type(exc).__name__}: {exc}"}
    if status == "failed":
        fields["traceback"] = traceback.format_exc(limit=20)
    return fields


# ------------------------------------------------------------------------------------------------ the suite


def _worker_init(threads: int, facts: dict, device: str) -> None:
    import torch

    pin(device, facts)  # the parent's provenance, taken when the suite started
    os.environ["BENCH_NO_PROGRESS"] = "1"
    torch.set_num_threads(threads)
    keep_freed_memory()  # the parent's heap settings (mallopt is per process)


def validate(datasets: Sequence[str], methods: Sequence[str], settings: Settings) -> list[str]:
    """Fail early (before any work) on unknown names, bad parameters, bad profiles and missing data files.

    Returns the datasets' notices (e.g. that a synthetic stand-in replaces missing real data).
    """
    notices = []
    for d in datasets:
        dataset = registry.create("dataset", d)
        if settings.profile not in dataset.profiles:
            raise UsageError(f"dataset {d} has no profile {settings.profile!r}; it has {sorted(dataset.profiles)}")
        problem = load_problem(d, settings.profile, settings.data_root)  # missing or malformed files fail here
        if problem.notice:
            notices.append(problem.notice)
    for m in methods:
        registry.create_method(m).check()
    return notices


def run_suite(datasets: Sequence[str], methods: Sequence[str], splits: Sequence[int], seeds: Sequence[int],
              settings: Settings, jobs: int = 1, show_progress: bool | None = None,
              notify: Callable[[str], None] | None = None) -> Summary:
    """Run every cell of the grid; ``notify`` receives the datasets' notices before any work starts."""
    facts = pin(settings.device)  # the code as it is when the suite starts
    for notice in validate(datasets, methods, settings):
        if notify is not None:
            notify(notice)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = frozenset(r["run_key"] for r in read_records(out) if r.get("status") in ("ok", "skipped") and "run_key" in r)
    cells = [Cell(d, m, s, tuple(splits)) for d in datasets for m in methods for s in seeds]
    summary = Summary(reused=len(done))
    bar = progress(range(len(cells)), desc="runs", total=len(cells), enabled=show_progress)
    ticker = iter(bar)

    def collect(records: list[dict]) -> None:
        append_records(out, records)
        for r in records:
            setattr(summary, r["status"], getattr(summary, r["status"]) + 1)
            if r["status"] == "failed":
                summary.failures.append(f"{r['dataset']} / {r['method']} / k={r['n_groups']} / seed={r['seed']}: "
                                        f"{r['reason']}")
        next(ticker, None)

    if jobs <= 1:
        for cell in cells:
            collect(run_cell(cell, settings, done))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads, facts, settings.device)) as pool:
            pending = {pool.submit(run_cell, cell, settings, done) for cell in cells}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        collect(fut.result())
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    next(ticker, None)
    return summary
