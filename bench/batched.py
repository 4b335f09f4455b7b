"""Training many small MTL models at once: stacked weights, one vectorised step for all of them.

Ground truth on the tabular benchmarks means thousands of small trainings (all 9,591 School pairs, all 406
Landmine pairs and the single-task models). :func:`train_groups` trains groups of equal size together: the
models' parameters are stacked along a leading model axis, one forward (``torch.func.vmap`` over
``functional_call`` of one template model) and one backward serve all of them, and the optimiser update is done
on the stacks. Every model still gets exactly the training :func:`bench.trainer.train_group` gives it:

- the same initial weights (each model is built by the problem's factory under ``torch.manual_seed(seed)``, as
  ``train_group`` does), the same batches (each model has its own generator seeded with ``seed`` and the indices
  come from :func:`bench.trainer.batch_indices`, the function ``train_group`` uses), the same summed loss;
- ragged batches (a task's last, short batch; models whose epoch has fewer steps) are padded, and the padding is
  masked out of the loss; a model that takes no step at some global step keeps its weights and optimiser state;
- Adam and SGD are applied per model with its own step count, by the formulas of ``torch.optim.Adam`` / ``SGD``
  (elementwise, so a stack is K independent optimisers); the learning-rate schedule is the same per epoch;
- early stopping per model on its summed validation loss, best weights restored; a stopped model leaves the stack
  (the stacks are compacted), so it costs nothing afterwards;
- the final validation and test evaluation is the trainer's own (:meth:`bench.trainer._Loop.evaluate`) on the
  model rebuilt with its best weights.

The results equal one-by-one training within float tolerance (batched matrix products sum in another order), which
``tests/test_batched.py`` checks. A model with buffers (batch normalisation) or dropout cannot be stacked this way
(its batch statistics and random masks would differ): :func:`stackable` says so and the caller trains those one by
one (same results, no speed-up). A group that is the only one of its size is trained one by one too (a stack of
one, :func:`_train_alone`). Each result's ``wall_time_s`` is its share of its stack's time (the stack's time
divided by its number of models).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics import loss_fn, metric_fn, row_loss_fn
from bench.progress import progress
from bench.trainer import MTLModel, ModelFactory, Split, TaskData, TrainConfig, resolve_device, train_group
from bench.types import Group, GroupResult, Task

DEFAULT_STACK = 1024
"""Models per stack: large enough to amortise the per-step overhead, small enough to keep memory modest."""


def stackable(model: nn.Module) -> str | None:
    """None if ``model`` can be trained in a stack; otherwise why not."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. batch normalisation)"
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return "the model uses dropout"
    return None


def _positional(model: MTLModel, group: Group) -> dict[str, torch.Tensor]:
    """The model's parameters with each head named by its task's position in the group (``heads.0.weight``)."""
    out = {}
    pos = {t: str(i) for i, t in enumerate(group)}
    for name, p in model.named_parameters():
        if name.startswith("heads."):
            _, task, rest = name.split(".", 2)
            name = f"heads.{pos[task]}.{rest}"
        out[name] = p.detach()
    return out


def _template(model: MTLModel, group: Group) -> MTLModel:
    heads = {str(i): copy.deepcopy(model.heads[t]) for i, t in enumerate(group)}
    return MTLModel(copy.deepcopy(model.encoder), heads)


@dataclass
class _Model:
    """One model's bookkeeping while it is in a stack."""

    group: Group
    gen: torch.Generator
    curves: dict[str, list[float]] = field(default_factory=lambda: {"train_loss": [], "val_loss": [], "lr": []})
    best_val: float = math.inf
    best_epoch: int = 0
    bad: int = 0
    error: Exception | None = None


def epoch_indices(sizes: Mapping[str, int], shared: bool, group: Group, batch_size: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of :func:`bench.trainer.batch_indices` as tensors: ``idx`` and ``mask`` of shape
    ``(steps, m, batch_size)`` (row ``s``, position ``p``: the local sample indices of task ``group[p]`` at step
    ``s``, padded; ``mask`` marks the real ones).

    The generator is consumed in the same order as ``batch_indices`` (every task's first permutation in task order,
    then a task's next permutation at the step where it runs out, tasks in order within a step), so the batches
    are identical; a batch never straddles two permutations (a task's last batch of a permutation is short).
    """
    b = batch_size
    if shared:
        n = sizes[group[0]]
        steps = -(-n // b)
        perm = torch.randperm(n, generator=gen)
        idx = torch.zeros(steps * b, dtype=torch.long)
        idx[:n] = perm
        mask = torch.arange(steps * b) < n
        idx, mask = idx.reshape(steps, 1, b), mask.reshape(steps, 1, b)
        m = len(group)
        return idx.expand(steps, m, b), mask.expand(steps, m, b)
    chunks = [-(-sizes[t] // b) for t in group]
    steps = max(chunks)
    perms: list[list[torch.Tensor]] = [[torch.randperm(sizes[t], generator=gen)] for t in group]
    # task p draws permutation r >= 1 at step r * chunks[p]; within a step, in task order
    draws = sorted((r * c, p) for p, c in enumerate(chunks) for r in range(1, -(-steps // c)))
    for _, p in draws:
        perms[p].append(torch.randperm(sizes[group[p]], generator=gen))
    idx = torch.zeros((steps, len(group), b), dtype=torch.long)
    mask = torch.zeros((steps, len(group), b), dtype=torch.bool)
    for p, (t, c) in enumerate(zip(group, chunks)):
        n = sizes[t]
        block = torch.zeros((len(perms[p]), c * b), dtype=torch.long)
        block[:, :n] = torch.stack(perms[p])
        real = (torch.arange(c * b) < n).expand(len(perms[p]), c * b)
        idx[:, p] = block.reshape(-1, b)[:steps]
        mask[:, p] = real.reshape(-1, b)[:steps]
    return idx, mask


class _Data:
    """A split with every task's rows in one tensor (per-task offsets), for gathering padded batches."""

    def __init__(self, split: Split, tasks: Sequence[str], device: torch.device) -> None:
        first = split.inputs[tasks[0]]
        self.shared = all(split.inputs[t] is first for t in tasks)
        self.sizes = {t: int(split.targets[t].shape[0]) for t in tasks}
        starts = dict(zip(tasks, torch.tensor([0] + [self.sizes[t] for t in tasks]).cumsum(0).tolist()))
        if self.shared:
            self.x = first.to(device)
            self.x_offset = dict.fromkeys(tasks, 0)
        else:
            self.x = torch.cat([split.inputs[t] for t in tasks]).to(device)
            self.x_offset = starts
        tshapes = {tuple(split.targets[t].shape[1:]) for t in tasks}
        if len(tshapes) != 1:
            raise ValueError(f"tasks' targets differ in shape beyond the sample axis: {sorted(tshapes)}")
        self.y = torch.cat([split.targets[t] for t in tasks]).to(device)
        self.y_offset = starts

    def offsets(self, groups: Sequence[Group]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per model and position, where its task's rows start in ``x`` and in ``y``: two ``(K, m)`` tensors."""
        xo = torch.tensor([[self.x_offset[t] for t in g] for g in groups])
        yo = torch.tensor([[self.y_offset[t] for t in g] for g in groups])
        return xo, yo

    def gather(self, idx: torch.Tensor, mask: torch.Tensor, offsets: tuple[torch.Tensor, torch.Tensor]):
        """Inputs ``(K, m, B, ...)`` (``(K, B, ...)`` for shared inputs), targets ``(K, m, B, ...)`` and the mask
        for local indices ``idx`` ``(K, m, B)``; padded entries read row 0 of their task and are masked."""
        xo, yo = offsets
        dev = self.x.device
        xi = idx + xo[:, :, None]
        x = self.x[(xi[:, 0] if self.shared else xi).to(dev)]
        return x, self.y[(idx + yo[:, :, None]).to(dev)], mask.to(dev)

    def whole(self, groups: Sequence[Group]) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` and ``mask`` covering every row of each model's tasks (a whole split)."""
        sizes = torch.tensor([[self.sizes[t] for t in g] for g in groups])
        width = int(sizes.max())
        ar = torch.arange(width)
        mask = ar < sizes[:, :, None]
        return (ar * mask).expand(*mask.shape).clone(), mask


class _Stack:
    """K models of one group size, trained together."""

    def __init__(self, factory: ModelFactory, groups: Sequence[Group], tasks: Mapping[str, Task],
                 config: TrainConfig, seed: int, device: torch.device, shared: bool) -> None:
        self.config, self.device, self.tasks = config, device, tasks
        self.models: list[_Model] = []
        stacks: dict[str, list[torch.Tensor]] = {}
        self.template: MTLModel | None = None
        for group in groups:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                model = factory(group)
            named = _positional(model, group)
            if self.template is None:
                self.template = _template(model, group).to(device)
                self.shapes = {n: p.shape for n, p in named.items()}
            elif {n: p.shape for n, p in named.items()} != self.shapes:
                raise ValueError(f"group {group} gives a model of another structure than {groups[0]}; "
                                 "groups of one stack need identical models")
            for n, p in named.items():
                stacks.setdefault(n, []).append(p)
            self.models.append(_Model(group, torch.Generator().manual_seed(seed)))
        # one flat (K, P) buffer holds every model's parameters: the update is a few operations on one tensor
        self.names = list(stacks)
        sizes = [stacks[n][0].numel() for n in self.names]
        self.slices = dict(zip(self.names, zip(torch.tensor([0, *sizes]).cumsum(0).tolist(), sizes)))
        self.flat = torch.cat([torch.stack(stacks[n]).reshape(len(groups), -1) for n in self.names], 1).to(device)
        self.flat.requires_grad_(True)
        self.best = self.flat.detach().clone()
        k = len(groups)
        self.steps = torch.zeros(k, dtype=torch.float64, device=device)
        n_state = 2 if config.optimizer == "adam" else 1
        self.state = [torch.zeros_like(self.best) for _ in range(n_state)]
        self.m = len(groups[0])
        self.val: tuple[torch.Tensor, ...] | None = None  # the validation batch of every model, gathered once
        self.train_offsets: tuple[torch.Tensor, torch.Tensor] | None = None
        losses = {tasks[t].loss for g in groups for t in g}
        if len(losses) != 1:
            raise ValueError(f"a stack needs one loss for all tasks, got {sorted(losses)}")
        self.loss = row_loss_fn(losses.pop())
        template = self.template

        def forward(params, x):
            if shared:  # one input for every head (the encoder runs once, as in train_group)
                inputs = dict.fromkeys((str(i) for i in range(self.m)), x)
            else:  # per-task inputs: x is (m, B, ...)
                inputs = {str(i): x[i] for i in range(self.m)}
            out = torch.func.functional_call(template, params, (inputs,))
            return torch.stack([out[str(i)] for i in range(self.m)])

        self._forward = torch.func.vmap(forward)

    # -------------------------------------------------------------------------------------------- stack state
    def keep(self, alive: list[int]) -> None:
        """Drop the models not in ``alive`` (indices into the current stack) from every stacked tensor."""
        if len(alive) == len(self.models):
            return
        idx = torch.tensor(alive, dtype=torch.long, device=self.device)
        self.flat = self.flat.detach()[idx].clone().requires_grad_(True)
        self.best = self.best[idx]
        self.state = [s[idx] for s in self.state]
        self.steps = self.steps[idx]
        self.models = [self.models[i] for i in alive]
        if self.val is not None:
            self.val = tuple(v[idx] for v in self.val)
        if self.train_offsets is not None:
            self.train_offsets = tuple(o[idx.cpu()] for o in self.train_offsets)

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        return {n: flat[:, a : a + size].reshape(k, *self.shapes[n]) for n, (a, size) in self.slices.items()}

    def outputs(self, x: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        """The stacked models' outputs ``(K, m, B, ...)`` (with ``flat``: those weights instead)."""
        return self._forward(self.params(self.flat if flat is None else flat), x)

    def model_losses(self, x, y, mask) -> torch.Tensor:
        """Each model's summed (over its tasks) mean loss on a padded batch: shape ``(K,)``."""
        out = self.outputs(x)  # (K, m, B, ...)
        k, m, b = mask.shape
        rows = self.loss(out.reshape(k * m * b, *out.shape[3:]), y.reshape(k * m * b, *y.shape[3:]))
        rows = rows.reshape(k, m, b) * mask
        counts = mask.sum(-1).clamp(min=1)
        return (rows.sum(-1) / counts).sum(-1)

    @torch.no_grad()
    def update(self, stepping: torch.Tensor, lr: float, every: bool = False) -> None:
        """One optimiser step for the models with ``stepping`` set (the others keep weights and state), by the
        formulas of ``torch.optim.Adam`` and ``torch.optim.SGD`` (scalars in double, as torch computes them).
        ``every``: all models step (in place, no masking)."""
        cfg = self.config
        self.steps += stepping.to(self.steps.dtype)
        p, g = self.flat, self.flat.grad
        p.grad = None
        on = stepping[:, None]

        def put(dst: torch.Tensor, value: torch.Tensor) -> None:
            dst.copy_(value if every else torch.where(on, value, dst))

        if cfg.weight_decay:
            g = g.add(p, alpha=cfg.weight_decay)
        if cfg.optimizer == "adam":
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            exp_avg, exp_avg_sq = self.state
            steps = self.steps.clamp(min=1)
            step_size = (lr / (1 - beta1**steps)).to(p.dtype)[:, None]
            bc2_sqrt = ((1 - beta2**steps) ** 0.5).to(p.dtype)[:, None]
            if every:
                exp_avg.lerp_(g, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                new_avg, new_sq = exp_avg, exp_avg_sq
            else:
                new_avg = exp_avg.lerp(g, 1 - beta1)
                new_sq = exp_avg_sq.mul(beta2).addcmul_(g, g, value=1 - beta2)
                put(exp_avg, new_avg)
                put(exp_avg_sq, new_sq)
            denom = new_sq.sqrt().div_(bc2_sqrt).add_(eps)
            put(p, p.addcdiv(new_avg * -step_size, denom))
        else:
            step = g
            if cfg.momentum:
                (buf,) = self.state
                step = torch.where((self.steps == 1)[:, None], g, buf * cfg.momentum + g)
                put(buf, step)
            put(p, p - lr * step)


def _lr_schedule(config: TrainConfig) -> list[float]:
    """The learning rate of every epoch, from torch's own scheduler on a dummy parameter."""
    dummy = torch.zeros(1, requires_grad=True)
    if config.optimizer == "adam":
        opt = torch.optim.Adam([dummy], lr=config.lr)
    else:
        opt = torch.optim.SGD([dummy], lr=config.lr, momentum=config.momentum)
    if config.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, config.step_size, config.gamma)
    elif config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
    else:
        sched = None
    lrs = []
    for _ in range(config.epochs):
        lrs.append(float(opt.param_groups[0]["lr"]))
        if sched is not None:
            opt.step()
            sched.step()
    return lrs


def _train_stack(stack: _Stack, train: _Data, val: _Data, config: TrainConfig) -> dict[Group, tuple]:
    """Run the epochs; returns per group ``(best flat weights, bookkeeping)``."""
    finished: dict[Group, tuple] = {}
    lrs = _lr_schedule(config)
    groups = [m.group for m in stack.models]
    stack.train_offsets = train.offsets(groups)
    stack.val = val.gather(*val.whole(groups), val.offsets(groups))
    for epoch in range(config.epochs):
        if not stack.models:
            break
        lr = lrs[epoch]
        k = len(stack.models)
        plans = [epoch_indices(train.sizes, train.shared, m.group, config.batch_size, m.gen) for m in stack.models]
        n_steps = torch.tensor([e[0].shape[0] for e in plans])
        steps = int(n_steps.max())
        idx = torch.stack([F.pad(e[0], (0, 0, 0, 0, 0, steps - e[0].shape[0])) for e in plans], 1)
        mask = torch.stack([F.pad(e[1], (0, 0, 0, 0, 0, steps - e[1].shape[0])) for e in plans], 1)
        running = torch.zeros(k)  # float32, summed in step order like the trainer's running loss
        for step in range(steps):
            stepping = n_steps > step  # a model whose epoch has fewer steps waits, its weights untouched
            x, y, mk = train.gather(idx[step], mask[step], stack.train_offsets)
            totals = stack.model_losses(x, y, mk)
            totals.sum().backward()
            stack.update(stepping.to(stack.device), lr, every=bool(stepping.all()))
            running += torch.where(stepping, totals.detach().cpu(), 0.0)
        with torch.no_grad():
            val_totals = stack.model_losses(*stack.val).double().cpu()
        alive = []
        for i, m in enumerate(stack.models):
            total = float(val_totals[i])
            m.curves["lr"].append(lr)
            m.curves["train_loss"].append(float(running[i]) / max(int(n_steps[i]), 1))
            m.curves["val_loss"].append(total)
            stop = False
            if not math.isfinite(total):
                m.error = FloatingPointError(f"validation loss of group {m.group} became {total} at epoch {epoch}")
                stop = True
            elif total < m.best_val - config.min_delta:
                m.best_val, m.best_epoch, m.bad = total, epoch, 0
                stack.best[i] = stack.flat.detach()[i]
            else:
                m.bad += 1
                stop = config.patience is not None and m.bad >= config.patience
            if stop:
                finished[m.group] = (stack.best[i].clone(), m)
            else:
                alive.append(i)
        stack.keep(alive)
    for i, m in enumerate(stack.models):
        finished[m.group] = (stack.best[i].clone(), m)
    return finished


@torch.no_grad()
def _evaluate(stack: _Stack, finished: dict[Group, tuple], data: TaskData, tasks: Mapping[str, Task],
              groups: Sequence[Group], names: Sequence[str], seed: int) -> dict[Group, GroupResult]:
    """Each model's final per-task loss and metrics on val and test with its best weights: one batched forward
    over each whole split, then the trainer's own loss and metric functions on each task's rows (as
    :meth:`bench.trainer._Loop.evaluate` does)."""
    flat = torch.stack([finished[g][0] for g in groups])
    per_split = {}
    for split_name, split in (("val", data.val), ("test", data.test)):
        d = _Data(split, names, stack.device)
        x, _, _ = d.gather(*d.whole(groups), d.offsets(groups))
        per_split[split_name] = (stack.outputs(x, flat).cpu(), split)
    out = {}
    for k, group in enumerate(groups):
        m: _Model = finished[group][1]
        values: dict[str, dict[str, float]] = {"val": {}, "test": {}, "val_loss": {}}
        extra: dict[str, dict[str, dict[str, float]]] = {"val": {}, "test": {}}
        for split_name, (outputs, split) in per_split.items():
            for p, t in enumerate(group):
                target = split.targets[t]
                pred = outputs[k, p, : target.shape[0]]
                values[split_name][t] = float(metric_fn(tasks[t].metric)(pred, target))
                if split_name == "val":
                    values["val_loss"][t] = float(loss_fn(tasks[t].loss)(pred, target))
                for name in tasks[t].extra_metrics:
                    extra[split_name].setdefault(name, {})[t] = float(metric_fn(name)(pred, target))
        out[group] = GroupResult(
            group=tuple(group), seed=seed, val=values["val"], test=values["test"], val_loss=values["val_loss"],
            curves=m.curves, epochs_run=len(m.curves["val_loss"]), best_epoch=m.best_epoch,
            device=str(stack.device), extra=extra if any(extra.values()) else {},
        )
    return out


def _train_alone(factory, data, tasks, group, config, seed, device) -> GroupResult | Exception:
    """A stack of one is a plain :func:`bench.trainer.train_group` training. Stacking one model gains nothing
    reliable (0.8x-1.9x the time of ``train_group`` on School and Landmine), and so a group's numbers do not depend
    on whether it was trained alone or as the only group of its size in a call: a one-model stack's products take
    other kernels (matrix-vector for a one-output head) and differ from ``train_group``'s in their last bits."""
    try:
        return train_group(factory, data, tasks, group, config, seed, device=device)
    except Exception as exc:  # noqa: BLE001 - reported as this group's outcome, like a failed stacked model
        return exc


def train_groups(
    factory: ModelFactory,
    data: TaskData,
    tasks: Mapping[str, Task],
    groups: Sequence[Group],
    config: TrainConfig,
    seed: int,
    device: str = "cpu",
    stack_size: int = DEFAULT_STACK,
    show_progress: bool = False,
    on_result: Callable[[Group, GroupResult | Exception], None] | None = None,
) -> dict[Group, GroupResult | Exception]:
    """Train every group in ``groups`` (see the module docstring); a group whose training failed maps to its
    exception. Groups are stacked by size, at most ``stack_size`` models per stack; ``on_result`` sees each
    group's outcome as soon as its stack is done."""
    dev = resolve_device(device)
    names = sorted({t for g in groups for t in g})
    train, val = _Data(data.train, names, dev), _Data(data.val, names, dev)
    results: dict[Group, GroupResult | Exception] = {}
    by_size: dict[int, list[Group]] = {}
    for g in dict.fromkeys(groups):
        by_size.setdefault(len(g), []).append(g)
    chunks = [gs[i : i + stack_size] for _, gs in sorted(by_size.items()) for i in range(0, len(gs), stack_size)]
    for chunk in progress(chunks, desc="train stacks", enabled=show_progress):
        if len(chunk) == 1:
            outcome = {chunk[0]: _train_alone(factory, data, tasks, chunk[0], config, seed, device)}
        else:
            start = time.perf_counter()
            stack = _Stack(factory, chunk, tasks, config, seed, dev, train.shared)
            finished = _train_stack(stack, train, val, config)
            failed = {g: finished[g][1].error for g in chunk if finished[g][1].error is not None}
            ok = [g for g in chunk if g not in failed]
            evaluated = _evaluate(stack, finished, data, tasks, ok, names, seed) if ok else {}
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            share = (time.perf_counter() - start) / len(chunk)
            outcome = {**failed, **{g: replace(r, wall_time_s=share) for g, r in evaluated.items()}}
        for group in chunk:
            results[group] = outcome[group]
            if on_result is not None:
                on_result(group, outcome[group])
    return results
