"""Speed of the batched trainer against one-at-a-time training, measured in the same run (``bench perf batched``).

For one dataset and profile: ``n_single`` groups (spread evenly over the list, so that they are a fair sample of
its early-stopping lengths) are trained one by one with
:meth:`Problem.train` and all ``groups`` (every pair unless given) are trained with :func:`bench.batched.train_groups`;
both without the cache. The report gives seconds per model each way, their ratio (the speed-up), the projected
one-by-one time of the whole set, the speed-up per
model-epoch (equal work: early stopping makes the sampled groups run more or fewer epochs than the mean), and
the largest relative difference of the test metric between the two ways on
the groups trained both ways (the batched results must equal one-by-one ones within float tolerance).
"""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.batched import train_groups
from bench.dataset import TrainedProblem
from bench.errors import Unsupported
from bench.provenance import provenance
from bench.tables import markdown_table
from bench.types import Group


def measure(problem: TrainedProblem, groups: Sequence[Group] | None = None, n_single: int = 8,
            seed: int = 0) -> dict:
    if not isinstance(problem, TrainedProblem) or problem.stackable() is not None:
        raise Unsupported("the batched trainer needs a trained problem whose model can be stacked")
    groups = list(groups) if groups is not None else list(itertools.combinations(problem.task_names, 2))
    singles = groups[::max(1, len(groups) // n_single)][:n_single]
    tasks = {t.name: t for t in problem.tasks}
    # warm-up of both paths (first calls pay for imports and allocator growth), untimed
    problem.train(groups[0], seed + 1)
    train_groups(problem.model_factory, problem.task_data, tasks, groups[:2], problem.config, seed + 1)
    start = time.perf_counter()
    one = {g: problem.train(g, seed) for g in singles}
    t_single = time.perf_counter() - start
    start = time.perf_counter()
    many = train_groups(problem.model_factory, problem.task_data, tasks, groups, problem.config, seed)
    t_batched = time.perf_counter() - start
    worst = max(abs(many[g].test[t] - one[g].test[t]) / max(abs(one[g].test[t]), 1e-12) for g in singles for t in g)
    per_single, per_batched = t_single / len(singles), t_batched / len(groups)
    epochs_single = sum(r.epochs_run for r in one.values())
    epochs_batched = sum(r.epochs_run for r in many.values() if not isinstance(r, Exception))
    return {"groups": len(groups), "single_groups": len(singles), "single_s_per_model": per_single,
            "batched_s_per_model": per_batched, "speedup": per_single / per_batched, "batched_total_s": t_batched,
            "one_by_one_projected_s": per_single * len(groups), "max_rel_diff_test": worst,
            "speedup_per_epoch": (t_single / epochs_single) / (t_batched / max(epochs_batched, 1)),
            "epochs_single_mean": epochs_single / len(one), "epochs_batched_mean": epochs_batched / len(groups),
            "threads": torch.get_num_threads()}


def write_report(rows: Sequence[tuple[str, str, dict]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    keys = ["groups", "single_groups", "single_s_per_model", "batched_s_per_model", "speedup", "speedup_per_epoch",
            "batched_total_s", "one_by_one_projected_s", "max_rel_diff_test", "epochs_single_mean",
            "epochs_batched_mean", "threads"]
    header = ["dataset", "profile", *keys]
    body = [[d, p, *(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys)] for d, p, r in rows]
    with (out / "batched_speed.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    facts = provenance("cpu")
    text = ["# Batched training against one-at-a-time training (same run)", "",
            f"Machine: {facts['platform']}, torch {facts['packages']['torch']}, "
            f"{rows[0][2]['threads'] if rows else '?'} threads. Produced by `python -m bench perf batched`.", "",
            markdown_table(header, body)]
    (out / "batched_speed.md").write_text("\n".join(text) + "\n")
    return [out / "batched_speed.csv", out / "batched_speed.md"]
