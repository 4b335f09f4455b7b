"""What the training signals cost: one MTL training with each signal's callback against plain training.

:func:`signal_costs` builds one problem and times, in the same run and in interleaved order (median of
``repeats`` rounds after a warm-up round), a plain training of all tasks and the same training observed by each
training signal: ``tag``, ``cs``, ``transfer_gain``, ``transfer_gain[sample=true]``, ``etap`` (and
``etap[update=optimizer]``, its Adam-step form), and a naive TAG
(one backward per task and one Python-level forward per lookahead, the way the reference codes do it) for scale.
Every run trains the same steps (fixed epochs, ``patience=None``) from the same seed.

**The problem.** 9 regression tasks, an encoder ``Linear(d, h) + ReLU + Linear(h, f) + ReLU``, a ``Linear(f, 1)``
head per task, Adam (lr 1e-3), a validation pass per epoch, at two scales (:data:`SCALES`):

- ``small`` (d, h, f = 32, 64, 32; batch 64): the papers' tabular models (School, Chemical, Parkinsons: a few
  dense layers). A step takes about 1 ms and is bound by per-operation overhead on a CPU.
- ``wide`` (64, 512, 256; batch 256): a step bound by arithmetic and memory traffic (4-30 ms on a CPU).

Two input layouts (``layout``): ``shared`` (one input tensor for all tasks: CelebA, ETTm1, QM9) and ``per_task``
(every task its own samples, a step encodes 9 batches: School, Landmine, Parkinson, Chemical). Torch and BLAS are
held to one thread while measuring (the machine's other core then cannot distort small-matrix kernels; the same
convention as ``bench.perf``).

**Targets** (reported pass/fail by :func:`write_signal_report` on ``ratio``, never asserted in unit tests): ETAP <=
1.10x plain; TAG <= 2x plain at 9 tasks; ``transfer_gain[sample=true]`` below TAG. Beside ``ratio`` the report
gives ``over_task_gradients``, the ratio to the :data:`TASK_GRADIENTS` step, which computes the n per-task
gradients and updates with their sum: ETAP's premise (Section 3.1: "these gradients are already computed as part
of the standard backpropagation") and its reference code's training step. The difference between the two columns
is the price of the per-task gradients themselves.

**Measured** on the development machine (2 shared CPU cores, one thread, median of 7 rounds;
``python -m bench perf signals --out results/signals --repeats 7``), shared / per-task inputs:

- ``small`` (ranges over 8 whole runs): plain 0.88-0.92 / 1.11-1.24 ms per step; ``tag`` 1.84-1.97x / 1.84-2.22x
  (under 2x in every shared run and 6 of 8 per-task runs; the naive loop 3.8-4.1x / 4.4-4.8x);
  ``transfer_gain[sample=true]`` 2.05-2.32x / 1.77-2.18x (below ``tag`` of the same run in 7 of 8 per-task runs,
  in none of the shared ones); ``cs`` 1.47-1.55x / 1.19-1.23x; the per-task gradients alone 1.36-1.39x /
  1.10-1.11x. ``etap`` (2 runs, ``update=gradient``) 1.47-1.49x / 1.18-1.25x, 1.08x / 1.06-1.14x over the
  per-task-gradient step; ``etap[update=optimizer]`` 1.57-1.61x / 1.26-1.36x (6 runs before ``update`` existed:
  1.57-1.64x / 1.26-1.32x).
- ``wide`` (4 runs): plain 4.2-4.5 / 28-29 ms per step; the per-task gradients alone 4.4-4.5x / 1.03-1.04x;
  ``tag`` 7.2-7.3x / 3.6x (naive loop 7.0-7.2x / 7.4-7.7x: on shared inputs batching saves nothing once arithmetic
  dominates); ``transfer_gain[sample=true]`` 8.9-9.4x / 2.2-2.3x; ``etap`` 4.7-5.0x / 1.08-1.09x (1.08-1.10x /
  1.04-1.05x over the per-task-gradient step); ``etap[update=optimizer]`` 5.1-5.4x / 1.14-1.17x; ``cs`` 4.7-4.8x
  / 1.07-1.09x.

The process keeps freed memory (:mod:`bench.heap`; without it per-task TAG took 3.2-3.3x in a process that ran only
plain training and TAG, from page faults).

**What the targets presuppose, and where they cannot hold.** The targets count a lookahead's cost in encoder
forwards and take the per-task gradients as free. Both are true of an overhead-bound step only:

- **per-task gradients**. Per-task inputs through a row-wise encoder: one ordinary backward split by task
  (``segments`` in :mod:`bench.trainer`), the same arithmetic as plain training (1.04x wide; +0.1-0.2x small, the
  per-layer split and per-parameter bookkeeping of a ~1 ms step). Shared inputs: every task's cotangent reaches
  every sample, so the n gradients need n encoder backwards' arithmetic; no exact implementation can do with less
  (with linear heads the cotangents are rank one per sample, but the weight-gradient contraction still runs over
  the batch once per task). That is 4.5x plain on the wide model, so on shared inputs ETAP <= 1.10x (and TAG <= 2x)
  cannot hold for an arithmetic-bound model; on the small one the batched backward costs +0.4x.
- **ETAP** (``update=gradient``, the reference scripts' form) then adds one ``n x n`` Gram product of the
  gradients and the division by the losses: 1.04-1.14x over the per-task-gradient step (at most 1.10x in 6 of the
  8 cells of two runs), so with the per-task gradients given it sits at the target; against plain training it
  meets it on per-task inputs at the wide scale (1.08x), not at the small one (the ~0.07 ms of products and
  bookkeeping on top of the split backward's +0.1x). Since the Gram product runs parameter by parameter on views
  of the stacked gradients (no ``(n, D)`` copy), the wide model's ETAP costs 1.04x / 1.02x over that step
  (shared / per-task; 4.6x / 1.08x plain). ``update=optimizer`` adds the
  virtual Adam step over the n gradients (~6 elementwise passes over ``n x D``): 1.10-1.24x over that step.
- **TAG**: n = 9 lookahead parameter sets, each encoding the whole batch, as batched products without ``vmap``
  (:func:`bench.trainer.run_row_wise`); stacked heads (:class:`bench.signals._lookahead.StackedHeads`) make the
  heads and the losses one batched product and one per-sample loss. Batching removes per-call overhead, not
  arithmetic: the 9 extra encoder forwards cost what they cost, about 3x plain training's forward share on the
  wide model (3.6x in all on per-task inputs; the naive loop 7.7x). On the small model they are ~0.5 ms of
  arithmetic at about 80 GFLOP/s on a ~1.2 ms step, so TAG sits near 2x and run-to-run noise decides the side.
- **transfer gain** (version 2, the diagonal measured from the doubled single step, as the reference code and the
  paper's cost model do): ``n(n+3)/2 = 54`` parameter sets per step (``n`` singles, ``n`` doubled singles,
  ``n(n-1)/2`` pairs), ``E[T(T+3)/2] = (n+1)(n+5)/6 = 23.3`` with sampling (Appendix E.2's count of updates), each
  evaluating only its members' heads and losses; the heads' virtual steps are read from the trainer's update (they
  are that update). On per-task inputs a set encodes only its members' samples (``forward_batches``: 5.6
  batch-equivalents per step against TAG's 9; a single's set encodes its task's batch twice, in the same call as
  the pairs). On shared inputs each set needs a whole-batch encoder forward, 23.3 against TAG's 9: it cannot run
  below TAG there. Measured (two runs of 7 rounds, ``diagonal=doubled``; small / wide): shared 2.22x / 11.2-11.3x
  against ``tag``'s 1.86-1.87x / 7.38-7.42x; per-task 1.91-1.93x / 2.70-2.77x against 1.88x / 3.74-3.75x, so
  below TAG on the wide per-task model only (version 1, without the ``2n`` diagonal sets: 18.3 sets, 1.77-2.18x /
  2.2-2.3x per-task, below TAG in 7 of 8 small runs). ``transfer_gain[diagonal=zero]`` is version 1's computation.
  The paper's cost model (Section 4.3, Table 9) counts one forward per *task loss* (``n^2 + n`` for TAG), which
  holds for per-task inputs, not for a shared encoder.

A GPU changes the picture (a batched lookahead fills an otherwise idle device; the n-backward arithmetic stays);
not measured here: no GPU was available.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.dataset import TrainedProblem
from bench.errors import UsageError
from bench.heap import keep_freed_memory
from bench.signals._lookahead import GradientCallback, lookahead_losses_loop, virtual_parameters
from bench.signals.base import SignalCallback
from bench.signals.cs import CosineCallback
from bench.signals.etap import EtapCallback
from bench.signals.tag import TagCallback
from bench.signals.transfer_gain import TransferGainCallback
from bench.trainer import MTLModel, Split, TaskData, TrainConfig
from bench.types import Task

LAYOUTS = ("shared", "per_task")
TARGETS = {"etap": ("<= 1.10x plain", 1.10), "tag": ("<= 2x plain", 2.0)}
SCALES = {"small": (32, 64, 32, 64), "wide": (64, 512, 256, 256)}
"""``scale -> (input features, hidden units, encoder output, batch size per task)``: ``small`` is the papers'
tabular size (a step is bound by per-operation overhead on a CPU), ``wide`` one whose step is bound by arithmetic
and memory traffic."""
STEPS = {"small": 64, "wide": 16}
"""Default training steps per timed training at each scale (a ``wide`` step takes ~5-30 ms)."""
TASK_GRADIENTS = "task gradients"
"""The reference variant whose step computes the n per-task gradients and updates with their sum, observing
nothing (:class:`TaskGradientsCallback`)."""


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def cost_problem(n_tasks: int = 9, steps: int = 64, epochs: int = 2, seed: int = 1234,
                 layout: str = "shared", scale: str = "small") -> TrainedProblem:
    """The benchmark's problem: ``n_tasks`` regression tasks (see the module docstring); ``steps`` training steps
    in all, over ``epochs`` epochs. ``layout``: ``shared`` (every task reads the same samples, as CelebA, ETTm1,
    QM9) or ``per_task`` (every task its own samples, as School, Landmine, Parkinson; a step then encodes
    ``n_tasks x`` batch rows). ``scale``: the encoder's widths and the batch size (:data:`SCALES`)."""
    _check("layout", layout, LAYOUTS)
    _check("scale", scale, SCALES)
    dim, hidden, feature, batch = SCALES[scale]
    names = [f"t{i}" for i in range(n_tasks)]
    per_epoch = max(1, math.ceil(steps / epochs))
    gen = torch.Generator().manual_seed(seed)
    weights = {t: torch.randn(dim, generator=gen) / math.sqrt(dim) for t in names}

    def split(n: int) -> Split:
        if layout == "shared":
            x = torch.randn(n, dim, generator=gen)
            inputs = dict.fromkeys(names, x)
        else:
            inputs = {t: torch.randn(n, dim, generator=gen) for t in names}
        targets = {t: torch.tanh(inputs[t] @ w) + 0.1 * torch.randn(n, generator=gen) for t, w in weights.items()}
        return Split(inputs, targets)

    def factory(group) -> MTLModel:
        encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, feature), nn.ReLU())
        return MTLModel(encoder, {t: nn.Linear(feature, 1) for t in group})

    tasks = [Task(t, kind="regression", metric="mse", higher_is_better=False, loss="mse") for t in names]
    data = TaskData(split(per_epoch * batch), split(512), split(512))
    config = TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-3, patience=None)
    identity = {"name": "signal-cost", "n_tasks": n_tasks, "steps": steps, "epochs": epochs, "seed": seed,
                "layout": layout, "scale": scale}
    return TrainedProblem(tasks, "synthetic", identity, data, factory, config)


class NaiveTagCallback(TagCallback):
    """TAG as the reference codes compute it: one backward pass per task, then one forward pass per lookahead
    (the same numbers as :class:`~bench.signals.tag.TagCallback`, for the cost comparison only)."""

    wants_task_gradients = False

    def step_matrix(self, ctx):
        n = len(ctx.group)
        stacked = ctx._trainer.task_gradient_stack(ctx.losses, None, method="loop")
        ctx._gradients = stacked  # the trainer's update reuses them, as the fast path does
        self.extra_backward += n - 1
        grads = self.shared.flatten(stacked.shared)
        after = lookahead_losses_loop(ctx, self.shared.unflatten(virtual_parameters(ctx, self.shared, grads)))
        self.extra_forward += n
        before = self.step_losses(ctx)
        return ((1.0 - after.T / before[:, None]) / ctx.lr).cpu().numpy()


class TaskGradientsCallback(GradientCallback):
    """The reference of :data:`TASK_GRADIENTS`: the step computes the n per-task gradients (the trainer then
    updates with their sum) and nothing else. It is the training step ETAP's premise assumes ("these gradients are
    already computed as part of the standard backpropagation", Section 3.1) and the one its reference code runs
    (one backward per task, then the summed update)."""

    def step_matrix(self, ctx):
        self.task_gradients(ctx)
        return None


def variants(tasks: tuple[str, ...]) -> dict[str, Callable[[int], list[SignalCallback]]]:
    """Label -> a factory of the callbacks of one timed training (fresh ones per training), given the signal's
    seed. The measurement gives every round its own signal seed: sampled transfer gain's cost follows the subset
    sizes it draws (one 64-step draw can be 13% above the expected 18.3 sets per step), so the median over rounds
    is over draws too."""
    return {
        "plain": lambda s: [],
        TASK_GRADIENTS: lambda s: [TaskGradientsCallback(tasks)],
        "tag": lambda s: [TagCallback(tasks)],
        "cs": lambda s: [CosineCallback(tasks)],
        "transfer_gain": lambda s: [TransferGainCallback(tasks, seed=s)],
        "transfer_gain[sample=true]": lambda s: [TransferGainCallback(tasks, sample=True, seed=s)],
        "etap": lambda s: [EtapCallback(tasks)],
        "etap[update=optimizer]": lambda s: [EtapCallback(tasks, update="optimizer")],
        "tag (naive loop)": lambda s: [NaiveTagCallback(tasks)],
        # lazy collection (one step in 10), for scale: the targets are for every-step collection
        "tag[every=10]": lambda s: [TagCallback(tasks, every=10)],
        "transfer_gain[sample=true,every=10]": lambda s: [TransferGainCallback(tasks, sample=True, seed=s, every=10)],
        "etap[every=10]": lambda s: [EtapCallback(tasks, every=10)],
    }


def signal_costs(n_tasks: int = 9, steps: int | None = None, repeats: int = 5, quick: bool = False, seed: int = 0,
                 only: tuple[str, ...] | None = None, layout: str = "shared", scale: str = "small") -> list[dict]:
    """Seconds per training (median over ``repeats`` interleaved rounds) and the ratio to plain training.

    ``steps``: training steps per timed training (default :data:`STEPS` of the scale); ``quick``: 8 steps and 1
    round (a smoke check of the machinery, not a measurement). Rows: ``variant``, ``layout``, ``scale``,
    ``seconds``, ``ratio`` (to plain training), ``over_task_gradients`` (to the :data:`TASK_GRADIENTS` step),
    ``per_step_ms``, ``extra_forward`` and ``extra_backward`` per training, ``target`` and ``met`` where a target
    applies (targets are judged on ``ratio``).
    """
    _check("scale", scale, SCALES)
    if steps is None:
        steps = STEPS[scale]
    from threadpoolctl import threadpool_limits

    keep_freed_memory()  # the command line's heap settings (bench.heap), for plain training and signals alike
    if quick:
        steps, repeats = 8, 1
    problem = cost_problem(n_tasks, steps, layout=layout, scale=scale)
    group = problem.task_names
    makers = variants(tuple(sorted(group)))
    if only is not None:
        makers = {k: v for k, v in makers.items() if k in ("plain", TASK_GRADIENTS) or k in only}
    labels = list(makers)
    times: dict[str, list[float]] = {k: [] for k in labels}
    counts: dict[str, dict] = {}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            for rnd in range(repeats + 1):  # round 0 warms up (vmap, allocator, lazy imports)
                shift = rnd % len(labels)
                order = labels[shift:] + labels[:shift]  # interleaved: each variant in every position in turn
                for label in order:
                    callbacks = makers[label](seed + rnd)
                    start = time.perf_counter()
                    problem.train(group, seed, callbacks=callbacks)
                    elapsed = time.perf_counter() - start
                    if rnd > 0:
                        times[label].append(elapsed)
                    if callbacks:
                        counts[label] = callbacks[0].info()
    finally:
        torch.set_num_threads(threads)
    plain = statistics.median(times["plain"])
    with_gradients = statistics.median(times[TASK_GRADIENTS])
    rows = []
    for label in labels:
        seconds = statistics.median(times[label])
        info = counts.get(label, {})
        row = {"variant": label, "layout": layout, "scale": scale, "tasks": n_tasks, "steps": steps,
               "repeats": repeats, "seconds": seconds, "ratio": seconds / plain,
               "over_task_gradients": seconds / with_gradients, "per_step_ms": 1000 * seconds / steps,
               "extra_forward": info.get("extra_forward", 0), "extra_backward": info.get("extra_backward", 0),
               "forward_batches": info.get("extra_forward_batches", info.get("extra_forward", 0)),
               "target": "", "met": ""}
        if label in TARGETS:
            text, bound = TARGETS[label]
            row["target"], row["met"] = text, "yes" if row["ratio"] <= bound else "NO"
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    if "transfer_gain[sample=true]" in by and "tag" in by:
        r = by["transfer_gain[sample=true]"]
        r["target"] = "< tag"
        r["met"] = "yes" if r["seconds"] < by["tag"]["seconds"] else "NO"
    return rows


SCA_DATASET = "synthetic[clusters=[3,3,3]]"
SCA_TARGET = 0.05


def sca_cost(repeats: int = 5, quick: bool = False, seed: int = 0, profile: str = "mini") -> dict:
    """SCA (no MTL training) against one whole MTL training of the same problem (9 synthetic tasks, ``mini``
    profile, its early stopping), median of ``repeats`` interleaved rounds, one thread."""
    from threadpoolctl import threadpool_limits

    from bench import registry

    keep_freed_memory()
    if quick:
        repeats, profile = 1, "smoke"
    problem = registry.create("dataset", SCA_DATASET).load(profile)
    signal = registry.create("signal", "sca")
    train_s, sca_s = [], []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            for rnd in range(repeats + 1):
                start = time.perf_counter()
                problem.train(problem.task_names, seed)
                t_train = time.perf_counter() - start
                start = time.perf_counter()
                signal.compute(problem, seed)
                t_sca = time.perf_counter() - start
                if rnd > 0:
                    train_s.append(t_train)
                    sca_s.append(t_sca)
    finally:
        torch.set_num_threads(threads)
    seconds, training = statistics.median(sca_s), statistics.median(train_s)
    ratio = seconds / training
    return {"variant": f"sca (vs one MTL training of {SCA_DATASET}, {profile})", "tasks": problem.n_tasks,
            "steps": "", "repeats": repeats, "seconds": seconds, "ratio": ratio, "per_step_ms": "",
            "extra_forward": "", "extra_backward": "", "target": f"< {SCA_TARGET:.0%} of one training",
            "met": "yes" if ratio < SCA_TARGET else "NO", "training_seconds": training}


def _heap_note() -> str:
    settings = keep_freed_memory()
    if not settings:
        return "malloc at its defaults"
    return "freed memory kept in the process (bench.heap: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"


def write_signal_report(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """``signal_costs.csv`` (every field) and ``signal_costs.md`` (the table and what was measured)."""
    from bench.tables import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = out / "signal_costs.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    shown = ["scale", "layout", "variant", "seconds", "ratio", "over_task_gradients", "per_step_ms", "extra_forward",
             "forward_batches", "extra_backward", "target", "met"]

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    table = markdown_table(shown, [[cell(r.get(k, "")) for k in shown] for r in rows])
    timed = [r for r in rows if r.get("layout")]
    first = timed[0] if timed else {}
    steps = ", ".join(dict.fromkeys(f"{r['scale']}: {r['steps']} steps" for r in timed))
    note = (f"Measured {time.strftime('%Y-%m-%d')}: one training of {first.get('tasks', '?')} tasks per variant "
            f"({steps}; scales: `bench.signal_perf.SCALES`); median of {first.get('repeats', '?')} interleaved "
            "rounds after a warm-up round; torch and BLAS on one thread. `ratio` = seconds / plain training's "
            "seconds in the same run (the targets are judged on it); `over_task_gradients` = seconds / the seconds "
            f"of the `{TASK_GRADIENTS}` step, which computes the n per-task gradients and updates with their sum "
            "(the step ETAP's premise assumes). Extra passes are counted per training by the signals themselves. "
            "Why the ratios are what they are: the docstring of `bench/signal_perf.py`. Heap: "
            f"{_heap_note()}.")
    md_path = out / "signal_costs.md"
    md_path.write_text(f"# Training-signal cost against plain training\n\n{note}\n\n{table}\n")
    return [csv_path, md_path]


__all__ = ["cost_problem", "signal_costs", "write_signal_report"]
