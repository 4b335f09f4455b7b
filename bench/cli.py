"""Command line: ``python -m bench run | list | table | compare | group | affinity | perf``.

Usage errors (unknown names, malformed lists, missing files) print one line saying what was wrong and what is
allowed, and exit with status 2. A run whose records include failures exits with status 1 after finishing every
other run; an interrupted run exits with 130 and keeps every finished record (run it again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from bench import registry
from bench.cache import default_cache_dir
from bench.component import _split_top_level
from bench.dataset import DATA_ROOT_ENV, PROFILES
from bench.errors import BenchError, UsageError
from bench.heap import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 as well; keep its usage line, add our hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ids(text: str, what: str) -> tuple[str, ...]:
    items = tuple(_split_top_level(text))
    if not items:
        raise UsageError(f"--{what} needs a comma-separated list, got {text!r}")
    return items


def _ints(text: str, what: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--{what} takes comma-separated integers (e.g. 2,3,4), got {text!r}") from None
    if not values:
        raise UsageError(f"--{what} needs at least one integer, got {text!r}")
    if min(values) < minimum:
        raise UsageError(f"--{what} values must be >= {minimum}, got {text!r}")
    return tuple(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    from bench.suites import SUITES

    parser = _Parser(prog="python -m bench", description="Task-grouping benchmark harness.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a suite (datasets x methods x split counts x seeds), then write tables")
    run.add_argument("--suite", default="all", help=f"suite name ({', '.join(SUITES)}); default all")
    run.add_argument("--datasets", help="comma-separated dataset ids, e.g. taskonomy,synthetic[clusters=[3,3]]")
    run.add_argument("--methods", help="comma-separated method/baseline ids, e.g. optimal,random[repeats=10]")
    run.add_argument("--splits", help="split counts (number of groups), e.g. 2,3,4")
    run.add_argument("--seeds", help="seeds, e.g. 0,1,2")
    run.add_argument("--profile", choices=PROFILES, help="smoke | mini | paper (default: the suite's)")
    run.add_argument("--data-root", help=f"folder with the real data files (default: ${DATA_ROOT_ENV}); "
                                         "without one, datasets use their synthetic stand-ins")
    run.add_argument("--out", default="out", help="output folder (records.jsonl, tables/); default ./out")
    run.add_argument("--cache", help="group-result cache folder (default: $BENCH_CACHE_DIR or "
                                     "~/.cache/task-grouping-bench)")
    run.add_argument("--jobs", default="1", help="worker processes (default 1)")
    run.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    lst = sub.add_parser("list", help="list registered datasets, methods, baselines, solvers, signals, predictors "
                                      "or suites")
    lst.add_argument("what", nargs="?", default="all",
                     help="datasets | methods | baselines | solvers | signals | predictors | suites | all")

    aff = sub.add_parser("affinity", help="compute a task x task affinity matrix (CSV for bench group --affinity)")
    aff.add_argument("--dataset", required=True, help="dataset id, e.g. synthetic[clusters=[3,3]]")
    aff.add_argument("--signal", required=True, help="signal id (python -m bench list signals), e.g. tag[every=10]")
    aff.add_argument("--profile", default="mini", choices=PROFILES, help="smoke | mini | paper (default mini)")
    aff.add_argument("--seed", default="0", help="seed (default 0)")
    aff.add_argument("--data-root", help=f"folder with the real data files (default: ${DATA_ROOT_ENV})")
    aff.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    aff.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the matrix (task names as "
                                                                      "header; row i, column j: effect of j on i)")

    table = sub.add_parser("table", help="write CSV and markdown tables from OUT/records.jsonl")
    table.add_argument("out", help="output folder of a run")

    compare = sub.add_parser("compare", help="put the reproduced tables beside the published ones")
    compare.add_argument("out", help="output folder of a run")
    compare.add_argument("--reference", help="folder of published tables (default results/reference)")

    group = sub.add_parser("group", help="group tasks from an affinity matrix or per-group scores you already have")
    src = group.add_mutually_exclusive_group(required=True)
    src.add_argument("--affinity", metavar="S.csv", help="square matrix, task names as header; S[i,j] = effect "
                                                          "of task j on task i (larger is better)")
    src.add_argument("--group-scores", metavar="G.csv", help="one row per candidate group: 'group' (names joined "
                                                              "by +), one score column per task, optional 'cost'")
    group.add_argument("--splits", required=True, metavar="K", help="number of groups")
    group.add_argument("--semantics", default="select", help="select (network selection, overlap allowed; "
                                                             "default) | partition | miqp | miqp-partition")
    group.add_argument("--solver", default="dp", help="solver id (python -m bench list solvers); default dp")
    group.add_argument("--budget-matrix", metavar="B.csv", help="MIQP budget matrix, tasks x groups")
    group.add_argument("--capacity", metavar="b.csv", help="MIQP capacity per group")
    group.add_argument("--budget", type=float, help="network selection: largest total cost (G.csv 'cost')")
    group.add_argument("--min-size", default="1", metavar="m", help="smallest group size (default 1)")
    group.add_argument("--max-size", metavar="M", help="largest group size (default: no limit)")
    group.add_argument("--minimize", action="store_true", help="the scores are losses: smaller is better")
    group.add_argument("--seed", default="0", help="seed for randomised solvers (default 0)")
    group.add_argument("--format", default="table", help="table (default) | json")

    perf = sub.add_parser(
        "perf", help="measure the solvers (Table 6 layout, scaling, gaps) or the signals (cost / plain training)")
    perf.add_argument("what", choices=["solvers", "signals", "batched"], help="what to measure")
    perf.add_argument("--out", default="out/perf", help="output folder (default out/perf)")
    perf.add_argument("--time-limit", type=float, default=60.0, help="seconds per solve before × (default 60)")
    perf.add_argument("--repeats", type=int, default=3, help="timed runs per scaling cell (default 3)")
    perf.add_argument("--quick", action="store_true", help="a few small instances only (a smoke check)")
    perf.add_argument("--only", help="comma-separated reports: table6, scaling, gaps (default all)")
    perf.add_argument("--datasets", default="landmine", help="batched: dataset ids (default landmine)")
    perf.add_argument("--profile", default="mini", choices=PROFILES, help="batched: profile (default mini)")
    perf.add_argument("--single", default="8", help="batched: groups trained one by one (default 8)")
    perf.add_argument("--data-root", help=f"batched: folder with the real data files (default: ${DATA_ROOT_ENV})")
    perf.add_argument("--scale", default="all",
                      help="signals: model scale(s), comma-separated: small, wide (default all; see "
                           "bench.signal_perf.SCALES)")

    pred = sub.add_parser("predictors", help="prediction quality of signals and gain predictors on held-out groups "
                                             "(ETAP Tables 2, 3, 9; tabular-divergence Tables 2, 6)")
    pred.add_argument("--datasets", default="synthetic", help="comma-separated dataset ids (default synthetic)")
    pred.add_argument("--tables", help="comma-separated tables: etap_table2, etap_table3, etap_table9, "
                                       "divergence_table2, divergence_table6 (default all)")
    pred.add_argument("--profile", default="mini", choices=PROFILES, help="smoke | mini | paper (default mini)")
    pred.add_argument("--repeats", default="3", help="training draws per cell (default 3)")
    pred.add_argument("--seed", default="0", help="seed of the ground truth and the draws (default 0)")
    pred.add_argument("--n-eval", default="30", help="held-out groups of the group tables (default 30)")
    pred.add_argument("--sizes", default="5,10,20", help="|G_train| of etap_table3 (default 5,10,20)")
    pred.add_argument("--sizes9", default="20", help="|G_train| of etap_table9 (default 20)")
    pred.add_argument("--split", default="test", choices=("val", "test"),
                      help="split whose gains are scored (default test; predictors are fitted on val gains)")
    pred.add_argument("--out", default="out/predictors", help="output folder (default out/predictors)")
    pred.add_argument("--data-root", help=f"folder with the real data files (default: ${DATA_ROOT_ENV})")
    pred.add_argument("--cache", help="group-result cache folder (default: $BENCH_CACHE_DIR or "
                                      "~/.cache/task-grouping-bench)")
    pred.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    sw = sub.add_parser("sweep", help="train every group of some sizes (stacked, cached) and write the pairwise-MTL "
                                      "summary (affinity-predictor-local-search Table 1 columns)")
    sw.add_argument("--dataset", required=True, help="dataset id, e.g. landmine")
    sw.add_argument("--sizes", default="1,2", help="group sizes, n for the all-task group (default 1,2)")
    sw.add_argument("--profile", default="mini", choices=PROFILES, help="smoke | mini | paper (default mini)")
    sw.add_argument("--seed", default="0", help="seed (default 0)")
    sw.add_argument("--data-root", help=f"folder with the real data files (default: ${DATA_ROOT_ENV})")
    sw.add_argument("--cache", help="group-result cache folder (default: $BENCH_CACHE_DIR or "
                                    "~/.cache/task-grouping-bench)")
    sw.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    sw.add_argument("--out", required=True, help="output folder (groups.csv, summary.csv, summary.md)")

    dl = sub.add_parser("download", help="download a dataset's public files into the data root")
    dl.add_argument("dataset", help="dataset id, e.g. school")
    dl.add_argument("--data-root", required=True, help="folder to download into (created if missing)")
    dl.add_argument("--force", action="store_true", help="download again even where the file exists")
    return parser


def _cmd_sweep(args) -> int:
    from bench.sweep import run_sweep

    dataset = registry.create("dataset", args.dataset)
    seed = _int(args.seed, "seed")
    sizes = [s if s in ("n", "all") else _int(s, "sizes") for s in _ids(args.sizes, "sizes")]
    _check_device_and_root(args)
    problem = dataset.load(args.profile, args.data_root)
    if problem.notice:
        print(f"note: {problem.notice}", file=sys.stderr)
    paths = run_sweep(problem, dataset.id, sizes, seed, Path(args.cache) if args.cache else default_cache_dir(),
                      args.device, Path(args.out), say=lambda line: print(line, file=sys.stderr),
                      profile=args.profile)
    for path in paths:
        print(path)
    return 0


def _cmd_download(args) -> int:
    from bench.datafiles import download

    dataset = registry.create("dataset", args.dataset)
    if not dataset.data_files:
        raise UsageError(f"{dataset.name} has no files to download (it needs no data root)")
    root = Path(args.data_root).expanduser()
    written = download(dataset.name, root, dataset.data_files, force=args.force)
    for path in written:
        print(path)
    for file in dataset.data_files:
        if file.url is None and not (root / file.path).is_file():
            print(f"{file.path}: no public URL; {file.note}", file=sys.stderr)
    return 0


def _cmd_run(args) -> int:
    from bench.runner import Settings, run_suite
    from bench.suites import get_suite
    from bench.tables import write_tables

    suite = get_suite(args.suite).override(
        datasets=_ids(args.datasets, "datasets") if args.datasets is not None else None,
        methods=_ids(args.methods, "methods") if args.methods is not None else None,
        splits=_ints(args.splits, "splits", 1) if args.splits is not None else None,
        seeds=_ints(args.seeds, "seeds", 0) if args.seeds is not None else None,
        profile=args.profile,
    )
    try:
        jobs = int(args.jobs)
    except ValueError:
        raise UsageError(f"--jobs takes a positive integer, got {args.jobs!r}") from None
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    _check_device_and_root(args)
    settings = Settings(
        out_dir=str(Path(args.out)),
        cache_dir=str(Path(args.cache) if args.cache else default_cache_dir()),
        data_root=args.data_root,
        device=args.device,
        profile=suite.profile,
    )
    datasets, methods = suite.expand_datasets(), suite.expand_methods()
    overridden = any(v is not None for v in (args.datasets, args.methods, args.splits, args.seeds, args.profile))
    label = f"suite {suite.name}" + (" with command-line overrides" if overridden else "")
    print(f"{label}: {len(datasets)} datasets x {len(methods)} methods x splits {list(suite.splits)} "
          f"x seeds {list(suite.seeds)}, profile {suite.profile}, out {settings.out_dir}", file=sys.stderr)
    try:
        summary = run_suite(datasets, methods, suite.splits, suite.seeds, settings, jobs=jobs,
                            show_progress=False if args.no_progress else None,
                            notify=lambda notice: print(f"note: {notice}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"interrupted: finished records are kept in {settings.out_dir}/records.jsonl; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    paths = write_tables(settings.out_dir)
    print(f"records: {summary.ok} ok, {summary.skipped} skipped, {summary.failed} failed, "
          f"{summary.reused} reused from an earlier run; tables: {len(paths)} files in {settings.out_dir}/tables",
          file=sys.stderr)
    for line in summary.failures:
        print(f"failed: {line}", file=sys.stderr)
    return summary.exit_code


def _cmd_list(args) -> int:
    from bench.suites import SUITES

    kinds = {"datasets": "dataset", "methods": "method", "baselines": "baseline", "solvers": "solver",
             "signals": "signal", "predictors": "predictor"}
    if args.what not in (*kinds, "suites", "all"):
        raise UsageError(f"cannot list {args.what!r}; allowed: {', '.join(kinds)}, suites, all")
    sections = list(kinds) + ["suites"] if args.what == "all" else [args.what]
    for section in sections:
        if args.what == "all":
            print(f"{section}:")
        if section == "suites":
            for name, suite in SUITES.items():
                print(f"  {name:<12} {suite.description}")
            continue
        for name, cls in sorted(registry.components(kinds[section]).items()):
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
            if section == "solvers":
                kind = "exact" if cls.exact else "heuristic"
                print(f"  {name:<17} {'/'.join(cls.problems):<24} {kind:<9} {doc[0] if doc else ''}")
                continue
            if section == "signals":
                when = "training" if cls.during_training else "static"
                print(f"  {name:<16} {when:<9} {doc[0] if doc else ''}")
                continue
            print(f"  {name:<18} {doc[0] if doc else ''}")
    return 0


def _cmd_table(args) -> int:
    from bench.tables import write_tables

    _need_dir(args.out)
    for path in write_tables(args.out):
        print(path)
    return 0


def _cmd_compare(args) -> int:
    from bench.compare import compare

    _need_dir(args.out)
    if args.reference is not None:
        _need_dir(args.reference)
    for path in compare(args.out, args.reference):
        print(path)
    return 0


def _int(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--{what} takes an integer, got {text!r}") from None


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what native libraries write to file descriptor 1 (HiGHS prints a debug line now and then) to stderr,
    so that ``--format json`` output stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _cmd_group(args) -> int:
    import json

    from tabulate import tabulate

    from bench.group import build_problem

    if args.format not in ("table", "json"):
        raise UsageError(f"--format must be table or json, got {args.format!r}")
    solver = registry.create("solver", args.solver)
    problem = build_problem(
        splits=_int(args.splits, "splits"), semantics=args.semantics, affinity=args.affinity,
        group_scores=args.group_scores, budget_matrix=args.budget_matrix, capacity=args.capacity,
        budget=args.budget, min_size=_int(args.min_size, "min-size"), max_size=_int(args.max_size, "max-size"),
        minimize=args.minimize)
    seed = _int(args.seed, "seed")
    with _stdout_to_stderr():
        solution = solver.solve(problem, seed=seed)
    sign = -1.0 if args.minimize else 1.0
    out = solution.to_json()
    out["objective"] = sign * solution.objective
    out["sense"] = "min" if args.minimize else "max"
    out["tasks"] = list(problem.tasks)
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return 0
    rows = [[j + 1, "+".join(g)] for j, g in enumerate(solution.groups)]
    print(tabulate(rows, headers=["group", "tasks"], tablefmt="github"))
    print(f"\nobjective {out['objective']:.6g} ({out['sense']}), status {solution.status}, solver {solution.solver}, "
          f"{solution.problem} problem, solved in {solution.solve_time_s:.4f} s")
    for note in solution.notes:
        print(f"note: {note}")
    return 0


def _cmd_perf(args) -> int:
    from bench.perf import run_solver_report

    if args.time_limit <= 0 or args.repeats < 1:
        raise UsageError("--time-limit must be positive and --repeats at least 1")
    if args.what == "batched":
        from bench.batched_perf import measure, write_report

        n_single = _int(args.single, "single")
        rows = []
        for dataset_id in _ids(args.datasets, "datasets"):
            problem = registry.create("dataset", dataset_id).load(args.profile, args.data_root)
            print(f"{dataset_id}: {n_single} pairs one by one, all pairs batched (data={problem.data}) ...",
                  file=sys.stderr)
            rows.append((dataset_id, args.profile, measure(problem, n_single=n_single)))
        for path in write_report(rows, Path(args.out)):
            print(path)
        return 0
    if args.what == "signals":
        from bench.signal_perf import LAYOUTS, SCALES, sca_cost, signal_costs, write_signal_report

        scales = list(SCALES) if args.scale == "all" else _ids(args.scale, "scale")
        unknown = sorted(set(scales) - set(SCALES))
        if unknown:
            raise UsageError(f"unknown scale(s) {unknown}; allowed: {', '.join(SCALES)} or all")
        print("timing the training signals against plain training ...", file=sys.stderr)
        rows = []
        for scale in scales:
            for layout in LAYOUTS:
                print(f"  {scale} model, {layout} inputs", file=sys.stderr)
                rows += signal_costs(repeats=args.repeats, quick=args.quick, layout=layout, scale=scale)
        print("timing SCA against one MTL training ...", file=sys.stderr)
        rows.append(sca_cost(repeats=args.repeats, quick=args.quick))
        for path in write_signal_report(rows, args.out):
            print(path)
        return 0
    from bench.perf import REPORTS

    only = REPORTS if args.only is None else _ids(args.only, "only")
    unknown = sorted(set(only) - set(REPORTS))
    if unknown:
        raise UsageError(f"unknown report(s) {unknown}; allowed: {', '.join(REPORTS)}")
    for path in run_solver_report(args.out, args.time_limit, args.repeats, args.quick,
                                  progress=lambda line: print(line, file=sys.stderr), only=only):
        print(path)
    return 0


def _cmd_affinity(args) -> int:
    from bench.trainer import resolve_device

    signal = registry.create("signal", args.signal).at_profile(args.profile)
    dataset = registry.create("dataset", args.dataset)
    seed = _int(args.seed, "seed")
    resolve_device(args.device)
    if not args.out.endswith(".csv"):
        raise UsageError(f"--out must name a .csv file, got {args.out!r}")
    problem = dataset.load(args.profile, args.data_root)
    if problem.notice:
        print(f"note: {problem.notice}", file=sys.stderr)
    print(f"{signal.id} on {dataset.id} ({problem.n_tasks} tasks, profile {args.profile}, data={problem.data}, "
          f"seed {seed})", file=sys.stderr)
    start = time.perf_counter()
    affinity = signal.compute(problem, seed, device=args.device)
    elapsed = time.perf_counter() - start
    affinity.to_csv(args.out)
    facts = ", ".join(f"{k}={v}" for k, v in affinity.info.items() if isinstance(v, (int, float, str)))
    print(f"wrote {args.out} in {elapsed:.2f} s" + (f" ({facts})" if facts else ""), file=sys.stderr)
    print(args.out)
    return 0


def _cmd_predictors(args) -> int:
    from bench.predeval import TABLES, run_predictor_tables

    tables = TABLES if args.tables is None else _ids(args.tables, "tables")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise UsageError(f"unknown table(s) {unknown}; allowed: {', '.join(TABLES)}")
    repeats, seed, n_eval = _int(args.repeats, "repeats"), _int(args.seed, "seed"), _int(args.n_eval, "n-eval")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    _check_device_and_root(args)
    paths = run_predictor_tables(
        _ids(args.datasets, "datasets"), tables, args.out, args.profile, args.data_root,
        Path(args.cache) if args.cache else default_cache_dir(), seed, repeats, args.device,
        progress=lambda line: print(line, file=sys.stderr), n_eval=n_eval, sizes=_ints(args.sizes, "sizes", 1),
        sizes9=_ints(args.sizes9, "sizes9", 1), report_split=args.split)
    import csv

    failed = 0
    for path in paths:
        print(path)
        if path.suffix == ".csv":
            with path.open() as fh:
                failed += sum(row["status"] == "failed" for row in csv.DictReader(fh))
    if failed:
        print(f"{failed} table rows failed (see the status and reason columns)", file=sys.stderr)
    return 1 if failed else 0


def _check_device_and_root(args) -> None:
    from bench.trainer import resolve_device

    resolve_device(args.device)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a directory")


def _need_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise UsageError(f"{path} is not a directory (give the --out folder of a run)")


COMMANDS = {"run": _cmd_run, "list": _cmd_list, "table": _cmd_table, "compare": _cmd_compare, "group": _cmd_group,
            "perf": _cmd_perf, "affinity": _cmd_affinity, "predictors": _cmd_predictors, "sweep": _cmd_sweep,
            "download": _cmd_download}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        keep_freed_memory()  # see bench.heap: freed memory stays in the process (fewer page faults per step)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
