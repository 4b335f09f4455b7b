"""Machinery shared by the lookahead signals (``tag``, ``transfer_gain``, ``etap``).

Two pieces, both vectorised over ``P`` parameter sets at once:

**The optimiser's virtual update** (:func:`virtual_parameters`, :func:`virtual_update`). Given ``P`` gradients of
a fixed list of parameters (one row each, flattened: a ``(P, D)`` matrix), the parameters the trainer's optimiser
would produce from each gradient alone, starting from its *current* state (read through
``ctx.optimizer_state(param)``, never modified) and the hyper-parameters of ``ctx.optimizer.param_groups[0]``:

- ``torch.optim.SGD`` (PyTorch convention): ``d = g + wd * theta``; with momentum ``mu``,
  ``buf' = mu * buf + (1 - dampening) * d`` (``buf' = d`` where the buffer does not exist yet, i.e. before the
  parameter's first update), ``d = buf'`` (Nesterov: ``d + mu * buf'``); ``theta' = theta - lr * d``.
- ``torch.optim.Adam`` / ``AdamW``: ``g = g + wd * theta`` (Adam's L2 form) or ``theta <- theta * (1 - lr * wd)``
  (decoupled, AdamW); ``m' = m + (1 - b1) (g - m)``, ``v' = b2 v + (1 - b2) g^2``, ``k = step + 1``;
  ``theta' = theta - lr / (1 - b1^k) * m' / (sqrt(v') / sqrt(1 - b2^k) + eps)`` (AMSGrad: ``max(v_max, v')`` in
  the denominator); missing state (before the first update) is zero moments and ``step = 0``.
- ``maximize`` negates the gradient first, as torch does. Other optimisers raise :class:`bench.errors.Unsupported`.

The operations follow torch's own single-tensor implementation, so ``theta'`` equals what ``optimizer.step()``
would give up to floating-point rounding (the tests check it against a real step on a copy).

**The batched lookahead evaluation** (:class:`Lookahead`). Given ``P`` replacement values of some parameters
(tensors with a leading ``P`` axis), every task's loss on the current batch, in train mode (batch statistics and
dropout, as TAG's reference does; random layers draw under :meth:`bench.trainer.StepContext.own_randomness`, so
the observed training's own random stream, and with it its trajectory, stays that of a plain training), for each
set: a ``(P, n)`` matrix from *one* call of
``torch.func.vmap(torch.func.functional_call(model, ...))``. Batch-norm layers update their running statistics in
place in train mode; each vmapped call therefore gets ``P`` fresh clones of the model's buffers, and the real
model's buffers are never touched. Where ``vmap`` cannot run the model (an operation without a batching rule,
``.item()`` or other data-dependent Python control flow, random operations such as dropout), the evaluation falls
back to a Python loop over the ``P`` sets (one ``functional_call`` each, again with cloned buffers), for the rest
of the training, and ``Lookahead.fallback`` records why (the signals put it in ``Affinity.info``).
:func:`lookahead_losses_loop` is that loop; the tests use it as the slow reference.

**Random layers: one draw for every set.** The loop evaluates each set from the same random state, so every set
sees the same dropout masks (common random numbers: the sets' losses differ by their parameters alone). The
``vmap`` draws the same way (``randomness="same"``: each random operation draws once, with the shape of one set,
from the same state; equal to the loop's masks). A model with an active dropout layer (:func:`draws_random`) is
not stacked (below), where masks would follow the stacked shapes.

Where the heads allow it (:class:`StackedHeads`: heads of one type and shape, one loss function, no buffers) the
evaluation is faster and equal: the heads and losses run as one task-axis ``vmap`` (an ``nn.Linear`` head as one
batched product), a row-wise encoder (:func:`bench.trainer.row_wise_layers`) runs as batched products over the
parameter sets without ``vmap``, and
:meth:`Lookahead.member_losses` evaluates only chosen tasks per set (transfer gain's pairs), on per-task inputs
from only their samples. ``info["lookahead_heads"]`` says which evaluation ran.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from bench.errors import Unsupported, UsageError, one_line
from bench.signals.base import SignalCallback
from bench.trainer import MTLModel, StepContext, TaskGradients, run_row_wise, stacked_linear


class FlatParams:
    """A fixed, ordered set of named parameters seen as one flat vector of length ``D`` (built once per training).

    ``flatten`` turns ``{name: (P, *shape)}`` into a ``(P, D)`` matrix and ``unflatten`` gives back views of
    such a matrix (no copy: each parameter's columns are contiguous within a row).
    """

    def __init__(self, named: Mapping[str, nn.Parameter]) -> None:
        self.names = list(named)
        self.params = list(named.values())
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.size = sum(self.sizes)
        self.checked: dict | None = None  # the optimiser param group already checked to hold every parameter

    def values(self) -> torch.Tensor:
        """The current parameters, flattened (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def flatten(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        rows = next(iter(stacked.values())).shape[0]
        return torch.cat([stacked[n].detach().reshape(rows, -1) for n in self.names], dim=1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = flat.shape[0]
        pieces = flat.split(self.sizes, dim=1)
        return {n: piece.reshape(rows, *shape) for n, piece, shape in zip(self.names, pieces, self.shapes)}

    def state(self, ctx: StepContext, key: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The optimiser state ``key`` of every parameter, flattened, and a mask of the entries that have it
        (``None`` mask: all have it; ``None`` tensor: none has it)."""
        found = [ctx.optimizer_state(p).get(key) for p in self.params]
        if all(v is None for v in found):
            return None, None
        flat = torch.cat([(v if v is not None else torch.zeros_like(p)).detach().reshape(-1)
                          for v, p in zip(found, self.params)])
        if all(v is not None for v in found):
            return flat, None
        mask = torch.cat([torch.full((s,), v is not None, dtype=torch.bool, device=flat.device)
                          for v, s in zip(found, self.sizes)])
        return flat, mask

    def per_element(self, values: list[float], like: torch.Tensor) -> torch.Tensor | float:
        """One scalar per parameter as a ``(D,)`` vector (a plain float when all are equal)."""
        if all(v == values[0] for v in values):
            return values[0]
        return torch.cat([torch.full((s,), v, dtype=like.dtype, device=like.device)
                          for v, s in zip(values, self.sizes)])


def _group(ctx: StepContext, flat: FlatParams) -> dict:
    group = ctx.optimizer.param_groups[0]
    if flat.checked is not group:  # checked once per training (the group object lives as long as the optimiser)
        members = {id(p) for p in group["params"]}
        if any(id(p) not in members for p in flat.params):
            raise Unsupported("the lookahead reads the hyper-parameters of the optimiser's first parameter "
                              "group, which must hold every parameter it updates")
        flat.checked = group
    return group


def _terms(ctx: StepContext, flat: FlatParams, grads: torch.Tensor):
    """``(theta, theta_eff, direction, scale)`` with ``theta' = theta_eff - scale * direction`` (row-wise).

    ``direction`` is always a fresh ``(P, D)`` tensor the caller may modify in place. The arithmetic works in
    place on at most two ``(P, D)`` temporaries: large short-lived allocations cost more than the arithmetic on a
    CPU (each one can be page-faulted in anew), and with transfer gain's ``n(n+1)/2`` rows they add up.
    ``theta`` (a copy of the parameters) is ``None`` unless the update needs it (weight decay); ``theta_eff`` is
    ``None`` when it equals ``theta``.
    """
    opt, group = ctx.optimizer, _group(ctx, flat)
    maximize = bool(group.get("maximize", False))
    lr = float(group["lr"])
    wd = float(group.get("weight_decay", 0.0))
    theta = flat.values() if wd != 0 else None
    if isinstance(opt, torch.optim.SGD):
        mu, damp = float(group["momentum"]), float(group["dampening"])
        d = grads.neg() if maximize else grads.clone()
        if wd != 0:
            d.add_(theta, alpha=wd)
        if mu != 0:
            buf, mask = flat.state(ctx, "momentum_buffer")
            if buf is not None and mask is None and not group["nesterov"]:  # the common case, in place
                d = (d.mul_(1 - damp) if damp != 0 else d).add_(buf, alpha=mu)
            elif buf is not None:  # buf' = mu buf + (1 - dampening) d; where no buffer exists yet, buf' = d
                new_buf = (d.mul(1 - damp) if damp != 0 else d.clone()).add_(buf, alpha=mu)
                if mask is not None:
                    new_buf = torch.where(mask, new_buf, d)
                d = d.add_(new_buf, alpha=mu) if group["nesterov"] else new_buf
            elif group["nesterov"]:
                d.mul_(1 + mu)  # first update: buf' = d, then d + mu buf'
        return theta, None, d, lr
    if isinstance(opt, torch.optim.Adam):  # AdamW is an Adam with decoupled_weight_decay=True
        b1, b2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        decoupled = bool(group.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW)))
        theta_eff = None
        g = grads.neg() if maximize else grads
        if wd != 0:
            if decoupled:
                theta_eff = theta * (1 - lr * wd)
            else:
                g = g.add(theta, alpha=wd)
        m, _ = flat.state(ctx, "exp_avg")
        v, _ = flat.state(ctx, "exp_avg_sq")
        steps = [float(ctx.optimizer_state(p).get("step", 0.0)) + 1 for p in flat.params]
        k = flat.per_element(steps, grads)
        bc1 = 1 - b1**k
        bc2 = 1 - b2**k
        # v' / bc2 in one pass: (b2 v + (1 - b2) g^2) / (1 - b2^k), so that sqrt(.) is torch's
        # sqrt(v') / sqrt(1 - b2^k) (equal up to rounding)
        if isinstance(bc2, float):
            v_hat = torch.addcmul(v * (b2 / bc2), g, g, value=(1 - b2) / bc2) if v is not None else \
                g.square().mul_((1 - b2) / bc2)
        else:
            v_hat = g.square().mul_((1 - b2) / bc2)
            if v is not None:
                v_hat.add_(v * (b2 / bc2))
        if group.get("amsgrad", False):
            v_max, _ = flat.state(ctx, "max_exp_avg_sq")
            if v_max is not None:
                torch.maximum(v_hat, v_max / bc2, out=v_hat)
        m_new = torch.lerp(m.expand_as(g), g, 1 - b1) if m is not None else g * (1 - b1)
        direction = m_new.div_(v_hat.sqrt_().add_(eps))
        if isinstance(bc1, float):
            return theta, theta_eff, direction, lr / bc1
        return theta, theta_eff, direction.mul_(lr / bc1), 1.0
    raise Unsupported(f"the lookahead implements SGD and Adam/AdamW, not {type(opt).__name__}")


def virtual_parameters(ctx: StepContext, flat: FlatParams, grads: torch.Tensor) -> torch.Tensor:
    """``(P, D)``: row ``p`` = the parameters after the optimiser's step from gradient ``grads[p]`` alone."""
    theta, theta_eff, direction, scale = _terms(ctx, flat, grads)
    base = theta_eff if theta_eff is not None else theta if theta is not None else flat.values()
    return direction.mul_(-scale).add_(base)


def virtual_update(ctx: StepContext, flat: FlatParams, grads: torch.Tensor) -> torch.Tensor:
    """``(P, D)``: row ``p`` = ``theta - theta'_p``, the step the optimiser would take from ``grads[p]`` alone
    (computed directly, without the cancellation of subtracting two nearby parameter vectors)."""
    theta, theta_eff, direction, scale = _terms(ctx, flat, grads)
    update = direction.mul_(scale) if scale != 1.0 else direction
    if theta_eff is not None:
        update.add_(theta - theta_eff)
    return update


def _batched_buffers(buffers: Mapping[str, torch.Tensor], rows: int | None) -> dict[str, torch.Tensor]:
    """Fresh copies of the model's buffers (``rows`` copies stacked, or one), for train-mode forwards that write
    running statistics: the real model's buffers stay untouched."""
    if rows is None:
        return {n: b.clone() for n, b in buffers.items()}
    return {n: b.unsqueeze(0).expand(rows, *b.shape).clone() for n, b in buffers.items()}


def lookahead_losses_loop(ctx: StepContext, replaced: Mapping[str, torch.Tensor],
                          fixed: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Slow reference and fallback of :meth:`Lookahead.losses`: a Python loop of ``P`` calls of
    ``ctx.losses_with`` (one full forward each)."""
    rows = next(iter(replaced.values())).shape[0]
    out = []
    with torch.no_grad():
        for p in range(rows):
            params = {**(fixed or {}), **{n: v[p] for n, v in replaced.items()},
                      **_batched_buffers(dict(ctx.model.named_buffers()), None)}
            losses = ctx.losses_with(params, train_mode=True)
            out.append(torch.stack([losses[t] for t in ctx.group]))
    return torch.stack(out)


def draws_random(model: nn.Module) -> bool:
    """Whether ``model`` holds a dropout layer (any ``torch.nn`` dropout module) with ``p > 0``: its train-mode
    forward draws random numbers. Random operations a custom ``forward`` calls directly are not seen here."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


BATCHED_ROWS = 8192
"""At most this many rows (over all parameter sets) per batched call of a row-wise encoder in
:meth:`StackedHeads.encode`; more sets run in chunks. Measured on the development CPU (one thread, the cost
benchmark's 32-64-32 encoder): one batched call is 2-3x faster than a loop of one call per set up to about 10,000
rows (9 sets of 64 rows: 0.07 against 0.17 ms; 36 sets of 256 rows: 0.86 against 1.35 ms), while at 20 sets of
576 rows it is 2.6x slower (the intermediate tensors then outgrow the cache)."""


class StackedHeads:
    """The heads of a training evaluated as ONE module with stacked parameters, where they allow it.

    When every head has the same type and the same parameter names and shapes, every task has the same loss
    function, the model holds no buffers and uses :class:`~bench.trainer.MTLModel`'s own forward, the n heads'
    outputs and losses are one ``vmap`` over a task axis (of ``functional_call`` of the first head with the
    stacked parameters) instead of n head calls and n loss calls: the per-operation cost of a vmapped call then
    no longer grows with n. A step whose batch does not stack (targets of different shapes; per-task inputs of
    different sizes) is evaluated the general way. ``None`` from :meth:`build` where the heads do not allow it, and
    for a model with an active dropout layer (:func:`draws_random`): stacked encoders and per-set rows would draw
    masks of the stacked shapes, not one mask for every set as the loop does.
    """

    def __init__(self, model: MTLModel, group, loss_fn, row_loss_fn, layers) -> None:
        self.model, self.group, self.loss_fn, self.row_loss_fn = model, tuple(group), loss_fn, row_loss_fn
        self.own = dict(model.named_parameters())  # the same objects for the whole training
        self.template = model.heads[self.group[0]]
        self.names = [k for k, _ in self.template.named_parameters()]
        self.layers = layers

    @classmethod
    def build(cls, model: nn.Module, group, loss_fns: Mapping, row_loss_fns: Mapping, layers
              ) -> StackedHeads | None:
        """``loss_fns`` / ``row_loss_fns``: every task's loss and its per-sample form
        (:data:`bench.metrics.ROW_LOSSES`); ``layers``: the encoder's :func:`~bench.trainer.row_wise_layers` (the
        trainer's), or ``None``."""
        if not isinstance(model, MTLModel) or type(model).forward is not MTLModel.forward:
            return None
        if any(True for _ in model.buffers()) or len({id(loss_fns[t]) for t in group}) != 1 or draws_random(model):
            return None
        heads = [model.heads[t] for t in group]
        shapes = [[(k, p.shape, p.dtype) for k, p in h.named_parameters()] for h in heads]
        if len({type(h) for h in heads}) != 1 or any(s != shapes[0] for s in shapes) or not shapes[0]:
            return None
        return cls(model, group, loss_fns[group[0]], row_loss_fns[group[0]], layers)

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """``(x, y, shared)``: the shared input ``(N, ...)`` or the stacked per-task inputs ``(n, b, ...)``, the
        stacked targets ``(n, ...)``; ``None`` when this batch does not stack."""
        xs = [batch.inputs[t] for t in self.group]
        ys = [batch.targets[t] for t in self.group]
        if any(y.shape != ys[0].shape for y in ys):
            return None
        if all(x is xs[0] for x in xs):
            return xs[0], torch.stack(ys), True
        if len({id(x) for x in xs}) != len(xs) or any(x.shape != xs[0].shape for x in xs):
            return None
        return torch.stack(xs), torch.stack(ys), False

    def parameters(self, fixed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads' parameters (``fixed`` where given, else the model's), stacked: ``name -> (n, ...)``."""
        own = self.own
        out = {}
        for k in self.names:
            full = [f"heads.{t}.{k}" for t in self.group]
            out[k] = torch.stack([(fixed[f] if f in fixed else own[f]).detach() for f in full])
        return out

    def _losses(self, heads: dict, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Task-axis vmap: ``heads`` ``(m, ...)``, features ``z`` ``(m, rows, F)``, targets ``(m, ...)`` -> ``(m,)``.
        A Linear head is one batched product, and its loss the mean over each slice's rows of the per-sample loss
        (no vmap)."""
        template, loss = self.template, self.loss_fn
        if type(template) is nn.Linear and z.ndim == 3:  # the common head: one batched product
            out = stacked_linear(z, heads["weight"], heads.get("bias"))
            m, rows = out.shape[:2]
            per_sample = self.row_loss_fn(out.reshape(m * rows, -1), y.reshape(m * rows, *y.shape[2:]))
            return per_sample.reshape(m, rows).mean(1)

        def one(params, features, target):
            return loss(torch.func.functional_call(template, params, (features,)), target)

        return torch.func.vmap(one)(heads, z, y)

    def encode(self, encoder: dict, x: torch.Tensor, per_set: bool) -> torch.Tensor:
        """``(P, rows, F)``: the encoder under each of the ``P`` parameter sets, on ``x`` (``(rows, ...)``, the same
        for every set) or on ``x[p]`` (``per_set``). A row-wise encoder (:func:`~bench.trainer.row_wise_layers`)
        runs as batched products over the sets (:func:`~bench.trainer.run_row_wise`), at most
        :data:`BATCHED_ROWS` rows per call; any other encoder as one ``vmap`` of ``functional_call``."""
        sets = next(iter(encoder.values())).shape[0]
        if self.layers is None:
            enc = self.model.encoder
            return torch.func.vmap(lambda params, inputs: torch.func.functional_call(enc, params, (inputs,)),
                                   in_dims=(0, 0 if per_set else None), randomness="error")(encoder, x)
        chunk = max(1, BATCHED_ROWS // x.shape[1 if per_set else 0])
        if chunk >= sets:
            return run_row_wise(self.layers, x, encoder)
        return torch.cat([run_row_wise(self.layers, x[a:a + chunk] if per_set else x,
                                       {k: v[a:a + chunk] for k, v in encoder.items()})
                          for a in range(0, sets, chunk)])

    def all_tasks(self, encoder: dict, heads: dict, x: torch.Tensor, y: torch.Tensor, shared: bool) -> torch.Tensor:
        """``(P, n)`` losses of every task under ``P`` encoder parameter sets (``encoder``: ``(P, ...)`` each)."""
        n = len(self.group)
        z = self.encode(encoder, x if shared else x.reshape(-1, *x.shape[2:]), per_set=False)  # (P, N, F)
        sets = z.shape[0]
        z = z.unsqueeze(1).expand(sets, n, *z.shape[1:]) if shared else z.reshape(sets, n, -1, *z.shape[2:])
        return self._over_sets(heads, z, y.expand(sets, *y.shape))

    def members(self, encoder: dict, heads: dict, x: torch.Tensor, y: torch.Tensor, shared: bool,
                members: torch.Tensor) -> torch.Tensor:
        """``(P, m)`` losses of the tasks ``members[p]`` (an ``(P, m)`` index into the group) only: on per-task
        inputs each set encodes only its members' samples (``m x b`` rows instead of ``n x b``); on shared inputs
        each set encodes the batch once and only its members' heads and losses run."""
        sets, m = members.shape
        own = {k: v[members] for k, v in heads.items()}  # (P, m, ...)
        if shared:
            z = self.encode(encoder, x, per_set=False)  # (P, N, F)
            z = z.unsqueeze(1).expand(sets, m, *z.shape[1:])
        else:
            xs = x[members]  # (P, m, b, ...)
            z = self.encode(encoder, xs.reshape(sets, -1, *xs.shape[3:]), per_set=True)
            z = z.reshape(sets, m, -1, *z.shape[2:])
        return self._over_sets(own, z, y[members], per_set_heads=True)

    def _over_sets(self, heads: dict, z: torch.Tensor, y: torch.Tensor, per_set_heads: bool = False
                   ) -> torch.Tensor:
        """``(P, m)`` losses from features ``(P, m, rows, F)`` and targets ``(P, m, ...)``, with the heads'
        parameters ``(m, ...)`` (or ``(P, m, ...)``), as one task-axis vmap over the ``P * m`` pairs."""
        sets, m = z.shape[:2]
        if not per_set_heads:
            heads = {k: v.expand(sets, *v.shape) for k, v in heads.items()}
        flat = {k: v.reshape(sets * m, *v.shape[2:]) for k, v in heads.items()}
        out = self._losses(flat, z.reshape(sets * m, *z.shape[2:]), y.reshape(sets * m, *y.shape[2:]))
        return out.reshape(sets, m)


class Lookahead:
    """Batched re-evaluation of the task losses under ``P`` replacement parameter sets (see the module
    docstring). One instance per training: it remembers a fallback to the loop."""

    def __init__(self) -> None:
        self.fallback: str | None = None
        self.stack_fallback: str | None = None
        self.calls = 0
        self._buffers: tuple[nn.Module, dict[str, torch.Tensor]] | None = None
        self._tied = True
        self._stacked: tuple[nn.Module, StackedHeads | None] | None = None

    def losses(self, ctx: StepContext, replaced: Mapping[str, torch.Tensor],
               fixed: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(P, n)``: row ``p`` holds every task's loss (``ctx.group`` order) on this step's batch with
        ``replaced[name][p]`` (and ``fixed[name]`` for every row) substituted; train mode; no gradients."""
        self.calls += 1
        fixed = dict(fixed or {})
        with ctx.own_randomness():
            out = self._stacked_run(ctx, replaced, fixed, lambda heads, enc, x, y, shared:
                                    self.stacked.all_tasks(enc, heads, x, y, shared))
            if out is not None:
                return out
            if self.fallback is None:
                try:
                    return self._vmapped(ctx, replaced, fixed)
                except Exception as exc:  # noqa: BLE001 -- the loop below re-raises a genuine error of the model
                    self.fallback = one_line(exc)
        return lookahead_losses_loop(ctx, replaced, fixed)

    def member_losses(self, ctx: StepContext, replaced: Mapping[str, torch.Tensor],
                      fixed: Mapping[str, torch.Tensor] | None, members: torch.Tensor) -> torch.Tensor | None:
        """``(P, m)``: the losses of tasks ``members[p]`` (indices into ``ctx.group``) only (see
        :meth:`StackedHeads.members`); ``None`` where the heads do not stack (then use :meth:`losses`, which
        evaluates every task)."""
        with ctx.own_randomness():
            out = self._stacked_run(ctx, replaced, dict(fixed or {}), lambda heads, enc, x, y, shared:
                                    self.stacked.members(enc, heads, x, y, shared, members))
        self.calls += out is not None
        return out

    @property
    def stacked(self) -> StackedHeads | None:
        return self._stacked[1] if self._stacked is not None else None

    def _stacked_run(self, ctx: StepContext, replaced: Mapping[str, torch.Tensor], fixed: dict, evaluate
                     ) -> torch.Tensor | None:
        """``evaluate(heads, encoder, x, y, shared)`` of this step's :class:`StackedHeads` evaluation, or ``None``
        where it does not apply or fails (a failure is kept in ``stack_fallback``: the rest of the training then
        goes the general way)."""
        model = ctx.model
        if self._stacked is None or self._stacked[0] is not model:
            loop = ctx._trainer
            self._stacked = (model, StackedHeads.build(model, ctx.group, loop.loss_fns, loop.row_loss_fns,
                                                       loop.layers))
        heads = self.stacked
        if heads is None or self.stack_fallback is not None or self.fallback is not None:
            return None
        if any(not k.startswith("encoder.") for k in replaced) or any(not k.startswith("heads.") for k in fixed):
            return None
        batch = heads.batch(ctx.batch)
        if batch is None:
            return None
        x, y, shared = batch
        encoder = {k[len("encoder."):]: v for k, v in replaced.items()}

        ctx._trainer.set_mode(True)
        try:
            with torch.inference_mode():
                return evaluate(heads.parameters(fixed), encoder, x, y, shared)
        except Exception as exc:  # noqa: BLE001 -- the general path re-raises a genuine error of the model
            self.stack_fallback = one_line(exc)
            return None

    def _vmapped(self, ctx: StepContext, replaced: Mapping[str, torch.Tensor], fixed: dict) -> torch.Tensor:
        loop = ctx._trainer  # the trainer's own loss functions and mode switch (no public need for them)
        model, batch, group = ctx.model, ctx.batch, ctx.group
        if self._buffers is None or self._buffers[0] is not model:
            # buffers are updated in place (running statistics, load_state_dict): the references stay valid
            self._buffers = (model, dict(model.named_buffers()))
            # functional_call's handling of tied weights walks the module tree on every call (a third of the
            # call's time on a small model); only a model that ties weights needs it
            self._tied = len(dict(model.named_parameters(remove_duplicate=False))) != len(list(model.parameters()))
        rows = next(iter(replaced.values())).shape[0]
        batched = {**replaced, **_batched_buffers(self._buffers[1], rows)} if self._buffers[1] else replaced
        loss_fns, tied = loop.loss_fns, self._tied

        def one(params: dict, constant: dict) -> torch.Tensor:
            out = torch.func.functional_call(model, (params, constant), (batch.inputs,), strict=False,
                                             tie_weights=tied)
            return torch.stack([loss_fns[t](out[t], batch.targets[t]) for t in group])

        loop.set_mode(True)
        with torch.inference_mode():
            return torch.func.vmap(one, in_dims=(0, None), randomness="same")(batched, fixed)


class GradientCallback(SignalCallback):
    """Base of the callbacks that read per-task gradients of the shared parameters (tag, cs, transfer_gain,
    etap): asks the trainer to keep what the batched gradient computation needs, flattens the gradients and
    counts their cost (n backward passes where the plain step does 1: ``n - 1`` extra per observed step)."""

    wants_task_gradients = True

    def __init__(self, tasks, every: int = 1) -> None:
        super().__init__(tasks, every)
        self.shared: FlatParams | None = None
        self.lookahead = Lookahead()
        self.gradient_method: str | None = None
        self.gradient_fallback: str | None = None

    def on_train_start(self, group, model, optimizer) -> None:
        if tuple(group) != self.tasks:
            raise UsageError(f"this callback was built for tasks {self.tasks}, the training has {tuple(group)}")
        self.shared = FlatParams(model.shared_parameters())
        if self.shared.size == 0:
            raise Unsupported("the model's encoder has no parameters: there is nothing shared to measure")
        self.lookahead = Lookahead()

    def gradients(self, ctx: StepContext) -> tuple[TaskGradients, torch.Tensor]:
        """This step's per-task gradients and the ``(n, D)`` matrix of their shared part (group order)."""
        grads = self.task_gradients(ctx)
        return grads, self.shared.flatten(grads.shared)

    def task_gradients(self, ctx: StepContext) -> TaskGradients:
        """This step's per-task gradients (stacked), counted."""
        grads = ctx.stacked_task_gradients()
        self.gradient_method = grads.method
        self.gradient_fallback = getattr(ctx._trainer, "gradient_fallback", None)
        self.extra_backward += len(ctx.group) - 1
        return grads

    @staticmethod
    def check_denominators(ctx: StepContext, signal: str, losses, rows=None, what: str = "loss") -> None:
        """Raise a clear error where a loss a signal divides by is not positive and finite (``rows``: the group
        indices of ``losses``, default all): 0/0 would otherwise read as "not observed", x/0 as an infinity that
        surfaces only when the training has ended."""
        values = np.asarray(torch.as_tensor(losses).detach().cpu(), dtype=np.float64)
        rows = range(len(values)) if rows is None else rows
        bad = {ctx.group[j]: float(v) for j, v in zip(rows, values) if not (np.isfinite(v) and v > 0)}
        if bad:
            raise UsageError(f"{signal}: at step {ctx.step} the {what} is {bad}; the signal divides by it, so it "
                             "must be positive and finite (a loss that reaches exactly 0 has no relative change)")

    @staticmethod
    def step_losses(ctx: StepContext) -> torch.Tensor:
        """The step's per-task losses at the current parameters (group order), without their graph."""
        return torch.stack([ctx.losses[t].detach() for t in ctx.group])

    def info(self) -> dict:
        out = super().info()
        if self.gradient_method is not None:
            out["task_gradients"] = self.gradient_method
            if self.gradient_fallback is not None:
                out["task_gradients_fallback"] = self.gradient_fallback
        if self.lookahead.calls:
            out["lookahead"] = "vmap" if self.lookahead.fallback is None else "loop"
            if self.lookahead.fallback is not None:
                out["lookahead_fallback"] = self.lookahead.fallback
            stacked = self.lookahead.stacked is not None and self.lookahead.stack_fallback is None
            out["lookahead_heads"] = "stacked" if stacked else "one by one"
            if self.lookahead.stack_fallback is not None:
                out["lookahead_heads_fallback"] = self.lookahead.stack_fallback
        return out


__all__ = ["FlatParams", "GradientCallback", "Lookahead", "draws_random", "lookahead_losses_loop",
           "virtual_parameters", "virtual_update"]
