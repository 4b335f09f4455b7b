"""The MTL trainer: hard parameter sharing (one shared encoder, one head per task).

One training of a group runs the loop every paper in this benchmark uses: the total loss is the plain **sum** of
the member tasks' losses (as in TAG's CelebA code and HOA's Taskonomy code), an optimiser step per batch, an
optional learning-rate schedule per epoch, and early stopping on the summed validation loss with the best epoch's
weights restored before the test evaluation.

Data come in two layouts, both as :class:`Split` objects:

- *shared inputs* (CelebA, ETTm1, QM9): every task reads the same input tensor; the encoder runs once per batch.
- *per-task inputs* (School, Landmine, Parkinson): each task has its own samples. A step draws one batch from every
  member task; an epoch is one pass over the largest member task while smaller tasks cycle through fresh
  permutations. The distinct inputs of a step are concatenated and encoded in one call, so a batch-statistics
  layer sees the union of the tasks' batches.

Signals (TAG, ETAP, transfer gain, ...) observe the training through :class:`Callback` objects. They receive a
:class:`StepContext` holding the per-task losses (with their graph), the batch, the model's shared and task
parameters, per-task gradients of the shared parameters and the optimiser state, and a functional re-evaluation
of the losses under other shared parameters. Callbacks never patch the trainer.

Per-task gradients (:meth:`StepContext.task_gradients`) cost one ordinary backward pass through the heads and one
*batched* backward pass through the encoder (``torch.autograd.grad(..., is_grads_batched=True)``, a ``vmap`` over
the n task cotangents), and the trainer's update is then their sum: no further backward pass. With per-task inputs
and a row-wise encoder (:func:`row_wise_layers`: an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise
activations, the tabular datasets' encoders) a sample reaches only its own task's loss, so one ordinary backward
gives every task's gradient: each Linear's weight gradient is split into per-task sums over the task's rows (the
``segments`` method, the same arithmetic as one backward). A callback that
will ask for them sets ``wants_task_gradients = True`` so that the step's forward keeps the encoder output and
gives each head its own view of it (:meth:`MTLModel.forward_parts`); without that flag, or where batching fails,
the gradients come from one batched backward of the stacked losses, or from a loop of one backward per task.

Determinism: all randomness comes from ``seed`` (model initialisation under a forked global RNG, batch order from
a private generator), so two trainings with the same seed on the CPU give identical results.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import UsageError, one_line
from bench.metrics import loss_fn, metric_fn, row_loss_fn
from bench.progress import progress
from bench.types import Group, GroupResult, Task


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one group training (a dataset profile fixes them)."""

    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"  # none | step | cosine
    step_size: int = 10
    gamma: float = 0.5
    patience: int | None = 5  # epochs without improvement of the summed validation loss; None: never stop early
    min_delta: float = 0.0
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise UsageError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("none", "step", "cosine"):
            raise UsageError(f"schedule must be 'none', 'step' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch_size must be at least 1")


@dataclass
class Split:
    """One split of the data: per task an input tensor and a target tensor (first axis = samples).

    For shared inputs, pass the same tensor object for every task.
    """

    inputs: Mapping[str, torch.Tensor]
    targets: Mapping[str, torch.Tensor]

    def shared(self, group: Sequence[str]) -> bool:
        first = self.inputs[group[0]]
        return all(self.inputs[t] is first for t in group)

    def to(self, device: torch.device) -> Split:
        moved: dict[int, torch.Tensor] = {}
        inputs = {}
        for t, x in self.inputs.items():
            inputs[t] = moved.setdefault(id(x), x.to(device))
        return Split(inputs, {t: y.to(device) for t, y in self.targets.items()})


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split


class MTLModel(nn.Module):
    """A shared encoder and one head per task; ``forward`` maps per-task inputs to per-task outputs."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        distinct: dict[int, torch.Tensor] = {}
        for x in inputs.values():
            distinct.setdefault(id(x), x)
        if len(distinct) == 1:
            z = self.encoder(next(iter(distinct.values())))
            return {t: self.heads[t](z) for t in inputs}
        xs = list(distinct.values())
        zs = self.encoder(torch.cat(xs)).split([x.shape[0] for x in xs])
        by_id = {key: z for key, z in zip(distinct, zs)}
        return {t: self.heads[t](by_id[id(x)]) for t, x in inputs.items()}

    def forward_parts(self, inputs: Mapping[str, torch.Tensor], layers: list[tuple[str, nn.Module]] | None = None
                      ) -> tuple[dict[str, torch.Tensor], EncoderParts | None]:
        """:meth:`forward` (same values), also returning the encoder output and each task's view of it.

        Every head reads its own view node of the encoder output ``z`` (rows ``rows[t]``), so the gradient of the
        summed loss with respect to ``head_inputs[t]`` is exactly task ``t``'s cotangent at ``z``: one backward
        pass gives all n cotangents, which :meth:`_Loop.per_task_gradients` then pushes through the encoder in one
        batched backward.

        ``layers`` (:func:`row_wise_layers` of the encoder): with per-task inputs the encoder is run layer by layer
        (the same operations as its ``forward``) and every ``nn.Linear``'s input and output are kept in
        ``EncoderParts.linears``, from which the per-task gradients are segment sums (see
        :meth:`_Loop.task_gradient_stack`).
        """
        distinct: dict[int, torch.Tensor] = {}
        for x in inputs.values():
            distinct.setdefault(id(x), x)
        xs = list(distinct.values())
        full = len(xs) == 1
        linears: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
        if not full and layers is not None:  # per-task inputs through a row-wise encoder: record every Linear
            linears = []
            z = run_row_wise(layers, torch.cat(xs), record=linears)
        else:
            z = self.encoder(xs[0] if full else torch.cat(xs))
        if not isinstance(z, torch.Tensor):  # structured encoder output (shared inputs only): no views to take
            return {t: self.heads[t](z) for t in inputs}, None
        starts, offset = {}, 0
        for key, x in zip(distinct, xs):
            starts[key] = (offset, offset + x.shape[0])
            offset += x.shape[0]
        rows = {t: starts[id(x)] for t, x in inputs.items()}
        if full:  # n aliases of z from one node (cheaper than n view nodes, forward and backward)
            head_inputs = dict(zip(inputs, z.expand(len(inputs), *z.shape).unbind(0)))
        elif len(xs) == len(inputs):  # every task its own rows: one split node (its backward is one cat, where
            # n slice nodes would each scatter into a zero tensor of z's size)
            pieces = dict(zip(distinct, z.split([x.shape[0] for x in xs])))
            head_inputs = {t: pieces[id(x)] for t, x in inputs.items()}
        else:
            head_inputs = {t: z[a:b] for t, (a, b) in rows.items()}
        out = {t: self.heads[t](h) for t, h in head_inputs.items()}
        return out, EncoderParts(z, rows, head_inputs, linears)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {f"encoder.{n}": p for n, p in self.encoder.named_parameters()}

    def task_parameters(self, task: str) -> dict[str, nn.Parameter]:
        return {f"heads.{task}.{n}": p for n, p in self.heads[task].named_parameters()}


ModelFactory = Callable[[Group], MTLModel]


@dataclass
class EncoderParts:
    """The encoder output of one forward pass and the per-task views the heads read (see
    :meth:`MTLModel.forward_parts`); ``rows[t]`` is the half-open row range of task ``t``'s samples in ``z``."""

    z: torch.Tensor
    rows: dict[str, tuple[int, int]]
    head_inputs: dict[str, torch.Tensor]
    linears: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
    """Per-task inputs through a row-wise encoder: ``(module path, input, output)`` of every ``nn.Linear`` of the
    encoder, in forward order."""


ROW_WISE = (nn.Linear, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
            nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid,
            nn.Hardswish, nn.Tanhshrink)
"""Modules that map each sample (row) on its own and hold no parameters except ``nn.Linear``'s."""


def row_wise_layers(encoder: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The leaf modules of ``encoder`` in forward order when it is an ``nn.Sequential`` (nested ones allowed) of
    :data:`ROW_WISE` modules, each used once; otherwise ``None``.

    Such an encoder maps every sample on its own (no batch statistics, no mixing of rows) and all its parameters
    are ``nn.Linear`` weights and biases, so with per-task inputs the gradient of task ``t``'s loss with respect to
    a Linear's weight is ``delta_t^T a_t`` over task ``t``'s rows alone (``a``: the layer's input, ``delta``: the
    summed loss's gradient at its output). Exact types only: a subclass may redefine ``forward``.
    """
    if type(encoder) is not nn.Sequential:
        return None
    layers: list[tuple[str, nn.Module]] = []
    for path, module in encoder.named_modules(remove_duplicate=False):
        if type(module) is nn.Sequential:
            continue
        if type(module) not in ROW_WISE:
            return None
        layers.append((path, module))
    if len({id(m) for _, m in layers}) != len(layers):
        return None
    return layers


def stacked_linear(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``P`` Linear layers at once: ``weight`` ``(P, out, in)``, ``bias`` ``(P, out)`` or ``None``, on ``z`` of
    shape ``(rows, in)`` (the same rows for every layer) or ``(P, rows, in)``; one batched product, ``(P, rows,
    out)``."""
    x = z if z.ndim == 3 else z.expand(weight.shape[0], *z.shape)
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def run_row_wise(layers: list[tuple[str, nn.Module]], z: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
                 record: list | None = None) -> torch.Tensor:
    """The encoder of :func:`row_wise_layers` on ``z``, layer by layer: its ``forward``, with the Linear layers'
    ``weight`` / ``bias`` taken from ``params`` (keyed ``"<path>.weight"``) where given, and every Linear's
    ``(path, input, output)`` appended to ``record`` where given.

    ``params`` may also hold ``P`` stacked parameter sets (a weight of shape ``(P, out, in)``): then every Linear
    is one batched product over the sets, on ``z`` of shape ``(rows, in)`` (the same rows for every set) or
    ``(P, rows, in)`` (each set its own rows), and the result is ``(P, rows, out)``. The elementwise layers run
    unchanged on the stacked tensor."""
    for path, layer in layers:
        if isinstance(layer, nn.Linear) and params is not None:
            weight, bias = params[f"{path}.weight"], params.get(f"{path}.bias")
            out = stacked_linear(z, weight, bias) if weight.ndim == 3 else nn.functional.linear(z, weight, bias)
        else:
            out = layer(z)
        if record is not None and isinstance(layer, nn.Linear):
            record.append((path, z, out))
        z = out
    return z


@dataclass
class TaskGradients:
    """Per-task gradients of one step, stacked: ``shared[name]`` has shape ``(n, *param.shape)`` with row ``i`` the
    gradient of task ``tasks[i]``'s loss; ``heads[name]`` is the gradient of a head parameter (it depends on its
    own task's loss only). ``unused`` names parameters no loss reached (zero here; the update leaves their
    ``grad`` unset, as a plain backward would); ``method`` says how they were computed: ``segments`` (per-task
    inputs through a row-wise encoder: one backward, then per-task sums over each task's rows), ``two_stage``
    (heads, then one batched backward through the encoder), ``batched`` (one batched backward of the stacked
    losses) or ``loop`` (one backward per task)."""

    tasks: Group
    shared: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    unused: frozenset[str]
    method: str

    def per_task(self) -> dict[str, dict[str, torch.Tensor]]:
        """``task -> {parameter name -> gradient}`` over the shared parameters and the task's own head."""
        out = {}
        for i, t in enumerate(self.tasks):
            prefix = f"heads.{t}."
            out[t] = {**{n: g[i] for n, g in self.shared.items()},
                      **{n: g for n, g in self.heads.items() if n.startswith(prefix)}}
        return out


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]


class StepContext:
    """What a callback sees at one optimisation step (before the update is applied).

    ``losses`` carry their graph; :meth:`task_gradients` gives, per task, the gradient of that task's loss with
    respect to the shared parameters (computed once per step and reused by the trainer for its own update, so
    asking for it costs no extra backward pass beyond one per task); :meth:`losses_with` re-evaluates the
    per-task losses on the same batch with some parameters replaced (``torch.func.functional_call``), which is what
    a lookahead needs.
    """

    def __init__(self, trainer: _Loop, step: int, epoch: int, batch: Batch, losses: dict[str, torch.Tensor],
                 parts: EncoderParts | None = None):
        self._trainer = trainer
        self.step = step
        self.epoch = epoch
        self.batch = batch
        self.losses = losses
        self._parts = parts
        self._gradients: TaskGradients | None = None

    @property
    def group(self) -> Group:
        return self._trainer.group

    @property
    def model(self) -> MTLModel:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def config(self) -> TrainConfig:
        return self._trainer.config

    @property
    def lr(self) -> float:
        return float(self._trainer.optimizer.param_groups[0]["lr"])

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return self._trainer.model.shared_parameters()

    def task_parameters(self, task: str) -> dict[str, nn.Parameter]:
        return self._trainer.model.task_parameters(task)

    def optimizer_state(self, param: nn.Parameter) -> dict:
        """The optimiser's state for one parameter (momentum buffer, Adam moments); empty before the first step."""
        return self._trainer.optimizer.state.get(param, {})

    def task_gradients(self) -> dict[str, dict[str, torch.Tensor]]:
        """``task -> {shared parameter name -> gradient of that task's loss}`` at the current parameters."""
        stacked = self.stacked_task_gradients().shared
        return {t: {n: g[i] for n, g in stacked.items()} for i, t in enumerate(self.group)}

    def stacked_task_gradients(self) -> TaskGradients:
        """The same per-task gradients stacked along a leading task axis (group order), plus the heads' gradients.

        Computed once per step (see the module docstring for the cost) and reused by the trainer's update.
        """
        if self._gradients is None:
            self._gradients = self._trainer.task_gradient_stack(self.losses, self._parts)
        return self._gradients

    def losses_with(self, params: Mapping[str, torch.Tensor], train_mode: bool = True) -> dict[str, torch.Tensor]:
        """Per-task losses on this batch with ``params`` (a subset of named parameters) substituted; random layers
        (dropout) draw under :meth:`own_randomness`, so the training's random stream is left as it was."""
        with self.own_randomness():
            return self._trainer.losses(self.batch, params=params, train_mode=train_mode)

    def own_randomness(self) -> contextlib.AbstractContextManager:
        """A context in which a callback's extra evaluations may draw random numbers (dropout masks in train
        mode) without moving the training's random stream: the generators of the model's device are put back on
        exit (about 3 microseconds on a CPU). The draws are fresh with respect to this step's forward (they are the
        ones the next step's forward will draw again), evaluations of one step all start from the same state
        (common random numbers across the sets they compare), and the training draws exactly what a plain
        training draws, so observing a training never changes its trajectory."""
        device = self._trainer.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class Callback:
    """Observer of a training. Override what you need; every hook is optional.

    ``wants_task_gradients``: set it to True in a callback that calls :meth:`StepContext.task_gradients` (on some
    steps at least); the step's forward then keeps what the fastest per-task gradient computation needs.
    """

    wants_task_gradients: bool = False

    def on_train_start(self, group: Group, model: MTLModel, optimizer: torch.optim.Optimizer) -> None: ...

    def before_step(self, ctx: StepContext) -> None: ...

    def after_step(self, ctx: StepContext) -> None: ...

    def on_epoch_end(self, epoch: int, train_loss: float, val_loss: Mapping[str, float]) -> None: ...

    def on_train_end(self, result: GroupResult) -> None: ...


def batch_indices(sizes: Mapping[str, int], shared: bool, group: Group, batch_size: int,
                  gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """The sample indices of one epoch's batches, per task (see the module docstring for the per-task layout).

    Shared inputs: one permutation, the same indices for every task. Per-task inputs: one pass over the largest
    member task; a smaller task draws a fresh permutation whenever it runs out. The generator is consumed in a
    fixed order (task order within a step), so the batched trainer (:mod:`bench.batched`) replays exactly the
    batches of :func:`train_group`.
    """
    if shared:
        n = sizes[group[0]]
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            yield dict.fromkeys(group, idx)
        return
    steps = max(math.ceil(sizes[t] / batch_size) for t in group)
    perms = {t: torch.randperm(sizes[t], generator=gen) for t in group}
    pos = dict.fromkeys(group, 0)
    for _ in range(steps):
        out = {}
        for t in group:
            if pos[t] >= sizes[t]:
                perms[t], pos[t] = torch.randperm(sizes[t], generator=gen), 0
            out[t] = perms[t][pos[t] : pos[t] + batch_size]
            pos[t] += batch_size
        yield out


def _batches(split: Split, group: Group, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    """One epoch of batches (see :func:`batch_indices`)."""
    shared = split.shared(group)
    sizes = {t: split.inputs[t].shape[0] for t in group}
    for idx in batch_indices(sizes, shared, group, batch_size, gen):
        if shared:
            x = split.inputs[group[0]]
            i = idx[group[0]].to(x.device)
            xb = x[i]
            yield Batch({t: xb for t in group}, {t: split.targets[t][i] for t in group})
            continue
        inputs, targets = {}, {}
        for t in group:
            i = idx[t].to(split.inputs[t].device)
            inputs[t], targets[t] = split.inputs[t][i], split.targets[t][i]
        yield Batch(inputs, targets)


class _Loop:
    def __init__(self, model, tasks, group, config, callbacks):
        self.model: MTLModel = model
        self.group = group
        self.config = config
        self.callbacks = list(callbacks)
        self.loss_fns = {t: loss_fn(tasks[t].loss) for t in group}
        self.row_loss_fns = {t: row_loss_fn(tasks[t].loss) for t in group}  # per-sample forms (batched lookahead)
        self._modules = list(model.modules())
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._named = dict(model.named_parameters())
        # the parameter dicts of the per-task gradients, built once (a training never swaps parameters)
        self._shared = model.shared_parameters()
        self._own = {t: model.task_parameters(t) for t in group}
        self._heads = {n: p for t in group for n, p in self._own[t].items()}
        self._eye: torch.Tensor | None = None
        self._ones: torch.Tensor | None = None
        # forward_parts mirrors MTLModel.forward; a subclass with its own forward keeps its forward
        self._plain_forward = isinstance(model, MTLModel) and type(model).forward is MTLModel.forward
        # the encoder's row-wise layers (the recording forward, the lookahead's batched encoder), or None
        self.layers = row_wise_layers(model.encoder) if self._plain_forward else None
        self.parts: EncoderParts | None = None
        self.gradient_fallback: str | None = None
        params = list(model.parameters())
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        if config.schedule == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.step_size, config.gamma)
        elif config.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.epochs)
        else:
            self.scheduler = None

    def set_mode(self, train_mode: bool) -> None:
        """``model.train(train_mode)``, skipped when every module already is in that mode (it costs a walk of
        the module tree with one ``__setattr__`` per module, a visible share of a small step)."""
        if any(m.training != train_mode for m in self._modules):
            self.model.train(train_mode)

    def losses(self, batch: Batch, params=None, train_mode: bool = True,
               capture: bool = False) -> dict[str, torch.Tensor]:
        """Per-task losses on ``batch``; ``capture`` (a plain forward only) keeps the encoder's output and the
        heads' views of it in ``self.parts`` (see :meth:`MTLModel.forward_parts`)."""
        self.set_mode(train_mode)
        self.parts = None
        if params:
            out = torch.func.functional_call(self.model, dict(params), (batch.inputs,), strict=False)
        elif capture and self._plain_forward:
            out, self.parts = self.model.forward_parts(batch.inputs, self.layers)
        else:
            out = self.model(batch.inputs)
        return {t: self.loss_fns[t](out[t], batch.targets[t]) for t in self.group}

    def per_task_gradients(self, losses: dict[str, torch.Tensor], parts: EncoderParts | None = None,
                           method: str = "auto") -> dict[str, dict[str, torch.Tensor]]:
        """``task -> {parameter -> gradient of the task's loss}`` over the shared parameters and the task's head.

        ``method``: ``auto`` (batched, falling back to the loop if batching fails), ``batched`` or ``loop``; see
        :meth:`task_gradient_stack`.
        """
        return self.task_gradient_stack(losses, parts, method).per_task()

    def task_gradient_stack(self, losses: dict[str, torch.Tensor], parts: EncoderParts | None = None,
                            method: str = "auto") -> TaskGradients:
        """The n per-task gradients, stacked (:class:`TaskGradients`).

        Batched: with the forward's :class:`EncoderParts`, one ordinary backward of the summed loss to the heads'
        inputs and parameters (heads see their own task only, so that gives every task's head gradient and
        cotangent at the encoder output), then one batched backward through the encoder with the n cotangents
        (``is_grads_batched=True``); without them, one batched backward of the stacked losses with the identity
        as ``grad_outputs``. Either way the graph is retained, so a failure of batching (an operation without a
        vmap rule) can fall back to the loop of one backward per task; after one failure this training stays on
        the loop (``self.gradient_fallback`` says why).
        """
        if method not in ("auto", "batched", "loop"):
            raise UsageError(f"method must be auto, batched or loop, got {method!r}")
        if method != "loop" and self.gradient_fallback is None:
            try:
                if parts is not None and parts.linears is not None:
                    segments = self._segments(parts)
                    if segments is not None:
                        return self._segment_gradients(losses, parts, segments)
                if parts is not None:
                    return self._two_stage_gradients(losses, parts)
                return self._batched_gradients(losses)
            except RuntimeError as exc:
                if method == "batched":
                    raise
                self.gradient_fallback = one_line(exc)
        return self._loop_gradients(losses)

    @staticmethod
    def _filled(named: Mapping[str, nn.Parameter], values, n: int | None) -> tuple[dict, set]:
        """Gradients with ``None`` (parameter not reached) replaced by zeros; ``n``: rows of a stacked one."""
        out, unused = {}, set()
        for (name, p), g in zip(named.items(), values):
            if g is None:
                unused.add(name)
                g = torch.zeros((n, *p.shape) if n is not None else p.shape, dtype=p.dtype, device=p.device)
            out[name] = g
        return out, unused

    def _summed_gradient(self, losses: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> tuple:
        """The gradient of the summed loss with respect to ``inputs`` (``None`` where unreached), seeded at every
        task's loss (no graph for the sum itself); the graph is kept for the callbacks."""
        roots = [losses[t] for t in self.group]
        if self._ones is None or self._ones.dtype != roots[0].dtype or self._ones.device != roots[0].device:
            self._ones = torch.ones((), dtype=roots[0].dtype, device=roots[0].device)
        return torch.autograd.grad(roots, inputs, grad_outputs=[self._ones] * len(roots), retain_graph=True,
                                   allow_unused=True)

    def _two_stage_gradients(self, losses, parts: EncoderParts) -> TaskGradients:
        group, n = self.group, len(self.group)
        shared, heads = self._shared, self._heads
        views = [parts.head_inputs[t] for t in group]
        first = self._summed_gradient(losses, [*views, *heads.values()])
        z = parts.z
        cot = [g if g is not None else torch.zeros_like(v) for g, v in zip(first[:n], views)]
        if all(parts.rows[t] == (0, z.shape[0]) for t in group):
            stacked = torch.stack(cot)
        else:  # per-task inputs: task t's cotangent lives in its own rows of z
            stacked = z.new_zeros((n, *z.shape))
            for i, t in enumerate(group):
                a, b = parts.rows[t]
                stacked[i, a:b] = cot[i]
        values = torch.autograd.grad(z, list(shared.values()), grad_outputs=stacked, is_grads_batched=True,
                                     retain_graph=True, allow_unused=True)
        shared_grads, unused = self._filled(shared, values, n)
        head_grads, unused_heads = self._filled(heads, first[n:], None)
        return TaskGradients(group, shared_grads, head_grads, frozenset(unused | unused_heads), "two_stage")

    def _segments(self, parts: EncoderParts) -> int | torch.Tensor | None:
        """How task ``t``'s rows sit in the encoded batch: an ``int`` ``b`` when the tasks hold consecutive blocks
        of ``b`` rows in group order; else an ``(n, b_max)`` index into the rows plus one zero row (index ``N``)
        that pads the shorter tasks; ``None`` when two tasks share rows (then no task owns its rows)."""
        spans = [parts.rows[t] for t in self.group]
        if len(set(spans)) != len(spans):
            return None
        sizes = [b - a for a, b in spans]
        total = parts.z.shape[0]
        if all(a == i * sizes[0] and b - a == sizes[0] for i, (a, b) in enumerate(spans)) and total == sum(sizes):
            return sizes[0]
        index = torch.full((len(spans), max(sizes)), total, dtype=torch.long, device=parts.z.device)
        for i, (a, b) in enumerate(spans):
            index[i, : b - a] = torch.arange(a, b, device=parts.z.device)
        return index

    def _segment_gradients(self, losses, parts: EncoderParts, segments: int | torch.Tensor) -> TaskGradients:
        """Per-task inputs through a row-wise encoder (:func:`row_wise_layers`): ONE backward of the summed loss
        to the outputs of the encoder's Linear layers and to the heads' parameters (no weight gradients are formed
        in it), then per Linear ``grad_t W = delta_t^T a_t`` and ``grad_t b = sum of delta_t`` over task ``t``'s
        rows, as one batched matrix product: the same arithmetic as the weight gradients of one ordinary backward.
        """
        group, n = self.group, len(self.group)
        heads = self._heads
        outputs = [out for _, _, out in parts.linears]
        values = self._summed_gradient(losses, [*outputs, *heads.values()])

        def by_task(rows: torch.Tensor) -> torch.Tensor:  # (N, ..., k) -> (n, rows per task, k)
            if not isinstance(segments, int):
                rows = torch.cat([rows, rows.new_zeros((1, *rows.shape[1:]))])[segments]
            return rows.reshape(n, -1, rows.shape[-1])

        shared_grads: dict[str, torch.Tensor] = {}
        for (path, inp, out), delta in zip(parts.linears, values):
            if delta is None:
                delta = torch.zeros_like(out)
            d = by_task(delta.detach())
            shared_grads[f"encoder.{path}.weight"] = torch.bmm(d.transpose(1, 2), by_task(inp.detach()))
            if f"encoder.{path}.bias" in self._shared:
                shared_grads[f"encoder.{path}.bias"] = d.sum(1)
        shared_grads = {name: shared_grads[name] for name in self._shared}  # the parameters' own order
        head_grads, unused = self._filled(heads, values[len(outputs):], None)
        return TaskGradients(group, shared_grads, head_grads, frozenset(unused), "segments")

    def _batched_gradients(self, losses) -> TaskGradients:
        group, n = self.group, len(self.group)
        shared, heads = self._shared, self._heads
        stacked = torch.stack([losses[t] for t in group])
        if self._eye is None or self._eye.dtype != stacked.dtype or self._eye.device != stacked.device:
            self._eye = torch.eye(n, dtype=stacked.dtype, device=stacked.device)
        eye = self._eye
        with warnings.catch_warnings():  # "no batching rule, performance drop": correct, only slower
            warnings.simplefilter("ignore", UserWarning)
            values = torch.autograd.grad(stacked, [*shared.values(), *heads.values()], grad_outputs=eye,
                                         is_grads_batched=True, retain_graph=True, allow_unused=True)
        shared_grads, unused = self._filled(shared, values[: len(shared)], n)
        head_rows, unused_heads = self._filled(heads, values[len(shared):], n)
        owner = {k: i for i, t in enumerate(group) for k in self._own[t]}
        head_grads = {k: g[owner[k]] for k, g in head_rows.items()}  # the other rows are zero
        return TaskGradients(group, shared_grads, head_grads, frozenset(unused | unused_heads), "batched")

    def _loop_gradients(self, losses) -> TaskGradients:
        group = self.group
        shared = self._shared
        per_task, heads, unused_shared, unused = [], {}, set(shared), set()
        for t in group:
            own = self._own[t]
            named = {**shared, **own}
            # the graph stays for other callbacks of the step; it is freed with the step's losses
            values = torch.autograd.grad(losses[t], list(named.values()), retain_graph=True, allow_unused=True)
            filled, missing = self._filled(named, values, None)
            per_task.append(filled)
            heads.update({k: filled[k] for k in own})
            unused |= missing & set(own)
            unused_shared &= missing
        shared_grads = {name: torch.stack([g[name] for g in per_task]) for name in shared}
        return TaskGradients(group, shared_grads, heads, frozenset(unused | unused_shared), "loop")

    @staticmethod
    def _sum(losses: dict[str, torch.Tensor]) -> torch.Tensor:
        values = iter(losses.values())
        total = next(values)
        for value in values:
            total = total + value
        return total

    def step(self, ctx: StepContext | None, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        given = ctx is not None and ctx._gradients is not None
        # The plain sum, without the extra ``0 + ...`` graph node that ``sum()`` adds (same value, same gradient);
        # with the per-task gradients given it is only the running loss, so no graph is built for it.
        if given:
            with torch.no_grad():
                total = self._sum(losses)
        else:
            total = self._sum(losses)
        self.optimizer.zero_grad(set_to_none=True)
        if given:
            # The update is the sum of the per-task gradients the callbacks already asked for: no extra pass.
            grads = ctx._gradients
            named = self._named
            for n, g in grads.shared.items():
                if n not in grads.unused:
                    named[n].grad = g.detach().sum(0)
            for n, g in grads.heads.items():
                if n not in grads.unused:
                    # shared with the callbacks' copy without cloning: Adam and SGD never write into ``.grad``
                    # and ``zero_grad(set_to_none=True)`` only drops the reference
                    named[n].grad = g.detach()
        else:
            total.backward()
        self.optimizer.step()
        return total.detach()

    @torch.no_grad()
    def evaluate(self, split: Split, tasks: Mapping[str, Task], with_metrics: bool = True,
                 extra: dict[str, dict[str, float]] | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Per-task (loss, metric) over a whole split, computed in evaluation mode (no metrics: ``{}``); the
        tasks' ``extra_metrics`` go into ``extra[metric][task]`` when a dict is given."""
        self.set_mode(False)
        bs = self.config.eval_batch_size
        losses, metrics = {}, {}
        shared = split.shared(self.group)
        n_max = max(split.inputs[t].shape[0] for t in self.group)
        outs: dict[str, list[torch.Tensor]] = {t: [] for t in self.group}
        for start in range(0, n_max, bs):
            inputs = {}
            if shared:
                xb = split.inputs[self.group[0]][start : start + bs]
                inputs = dict.fromkeys(self.group, xb)
            else:
                for t in self.group:
                    x = split.inputs[t]
                    if start < x.shape[0]:
                        inputs[t] = x[start : start + bs]
            if inputs:
                for t, o in self.model(inputs).items():
                    outs[t].append(o)
        for t in self.group:
            out, target = (outs[t][0] if len(outs[t]) == 1 else torch.cat(outs[t])), split.targets[t]
            losses[t] = float(self.loss_fns[t](out, target))
            if with_metrics:
                metrics[t] = float(metric_fn(tasks[t].metric)(out, target))
            if extra is not None:
                for name in tasks[t].extra_metrics:
                    extra.setdefault(name, {})[t] = float(metric_fn(name)(out, target))
        return losses, metrics


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (an error if none is available) or ``auto`` (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but no CUDA device is available; use cpu or auto")
        return torch.device(device)
    raise UsageError(f"unknown device {device!r}; allowed: cpu, cuda, auto")


def train_group(
    model_factory: ModelFactory,
    data: TaskData,
    tasks: Mapping[str, Task],
    group: Group,
    config: TrainConfig,
    seed: int,
    callbacks: Iterable[Callback] = (),
    device: str = "cpu",
    show_progress: bool = False,
) -> GroupResult:
    """Train one group and return its per-task validation and test metrics (see the module docstring)."""
    unknown = [t for t in group if t not in tasks]
    if unknown:
        raise UsageError(f"group names unknown tasks {unknown}; known: {sorted(tasks)}")
    dev = resolve_device(device)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = model_factory(group).to(dev)
        gen = torch.Generator().manual_seed(seed)
        train, val, test = data.train.to(dev), data.val.to(dev), data.test.to(dev)
        loop = _Loop(model, tasks, group, config, callbacks)
        for cb in loop.callbacks:
            cb.on_train_start(group, model, loop.optimizer)
        capture = any(getattr(cb, "wants_task_gradients", False) for cb in loop.callbacks)
        best_val, best_epoch, best_state, bad = math.inf, 0, None, 0
        curves: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": []}
        step = 0
        epochs = progress(range(config.epochs), desc=f"train {'+'.join(group)}", leave=False, enabled=show_progress)
        for epoch in epochs:
            running, n_steps = torch.zeros((), device=dev), 0
            curves["lr"].append(float(loop.optimizer.param_groups[0]["lr"]))
            for batch in _batches(train, group, config.batch_size, gen):
                losses = loop.losses(batch, capture=capture)
                ctx = None
                if loop.callbacks:
                    ctx = StepContext(loop, step, epoch, batch, losses, loop.parts)
                    for cb in loop.callbacks:
                        cb.before_step(ctx)
                running += loop.step(ctx, losses)
                if ctx is not None:
                    for cb in loop.callbacks:
                        cb.after_step(ctx)
                step += 1
                n_steps += 1
            if loop.scheduler is not None:
                loop.scheduler.step()
            val_losses, _ = loop.evaluate(val, tasks, with_metrics=False)
            total_val = sum(val_losses.values())
            if not math.isfinite(total_val):
                raise FloatingPointError(f"validation loss of group {group} became {total_val} at epoch {epoch}")
            curves["train_loss"].append(float(running) / max(n_steps, 1))
            curves["val_loss"].append(total_val)
            for cb in loop.callbacks:
                cb.on_epoch_end(epoch, curves["train_loss"][-1], val_losses)
            if total_val < best_val - config.min_delta:
                best_val, best_epoch, bad = total_val, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if config.patience is not None and bad >= config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        extra: dict[str, dict[str, dict[str, float]]] = {"val": {}, "test": {}}
        val_losses, val_metrics = loop.evaluate(val, tasks, extra=extra["val"])
        _, test_metrics = loop.evaluate(test, tasks, extra=extra["test"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    result = GroupResult(
        group=tuple(group),
        seed=seed,
        val=val_metrics,
        test=test_metrics,
        val_loss=val_losses,
        curves=curves,
        epochs_run=len(curves["val_loss"]),
        best_epoch=best_epoch,
        wall_time_s=time.perf_counter() - start,
        device=str(dev),
        extra=extra if any(extra.values()) else {},
    )
    for cb in loop.callbacks:
        cb.on_train_end(result)
    return result


__all__ = [
    "Batch",
    "Callback",
    "EncoderParts",
    "MTLModel",
    "Split",
    "StepContext",
    "TaskData",
    "TaskGradients",
    "TrainConfig",
    "resolve_device",
    "train_group",
]

