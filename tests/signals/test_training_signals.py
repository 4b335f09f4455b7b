"""Training signals (tag, cs, transfer_gain, etap), their shared lookahead machinery and the trainer's batched
per-task gradients.

Every batched computation is checked against an independent slow implementation: a deep copy of the model and of
the optimiser, a real ``optimizer.step()`` per virtual step and a Python loop over tasks and pairs, in float64 on
a tiny model, for SGD (momentum + weight decay) and Adam (weight decay), on the first step and on later steps
(momentum buffers and moments non-empty), for a shared-input model with batch norm in the encoder and for the
per-task-input layout. On a synthetic problem with strongly planted clusters, every signal ranks every
within-cluster pair above every cross-cluster pair.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from bench import registry
from bench.dataset import TrainedProblem
from bench.errors import Unsupported, UsageError
from bench.metrics import loss_fn
from bench.signals import _lookahead as la
from bench.signals.base import TrainingSignal
from bench.signals.cs import CosineCallback
from bench.signals.etap import EtapCallback
from bench.signals.tag import TagCallback
from bench.signals.transfer_gain import TransferGainCallback
from bench.trainer import Callback, MTLModel, Split, TaskData, TrainConfig
from bench.types import Task

SIGNALS = ("tag", "cs", "transfer_gain", "etap")
TASKS3 = ("a", "b", "c")
DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and an oversubscribed machine makes small
    batched matmuls wait for the second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ tiny problems


def _tasks(names):
    return {t: Task(t, kind="regression", metric="mse", higher_is_better=False, loss="mse") for t in names}


def tiny_data(layout: str, names=TASKS3, dim: int = 5, seed: int = 0) -> TaskData:
    """float64 data; ``shared``: one input tensor for all tasks; ``per_task``: different sample counts."""
    gen = torch.Generator().manual_seed(seed)
    w = {t: torch.randn(dim, generator=gen, dtype=DT) for t in names}

    def split(sizes):
        if layout == "shared":
            x = torch.randn(sizes[0], dim, generator=gen, dtype=DT)
            xs = dict.fromkeys(names, x)
        else:
            xs = {t: torch.randn(s, dim, generator=gen, dtype=DT) for t, s in zip(names, sizes)}
        ys = {t: torch.tanh(xs[t] @ w[t]) + 0.1 * torch.randn(xs[t].shape[0], generator=gen, dtype=DT)
              for t in names}
        return Split(xs, ys)

    train = split([24] * len(names) if layout == "shared" else [16 + 4 * i for i in range(len(names))])
    return TaskData(train, split([12] * len(names)), split([12] * len(names)))


def tiny_factory(batch_norm: bool = True, dim: int = 5):
    def factory(group):
        layers = [nn.Linear(dim, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh(), nn.Linear(8, 4)]
        return MTLModel(nn.Sequential(*layers).to(DT), {t: nn.Linear(4, 1).to(DT) for t in group})

    return factory


OPTIMIZERS = {
    "sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
    "adam": {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-2},
}


def tiny_problem(layout: str, optimizer: str, epochs: int = 2, batch_norm: bool = True) -> TrainedProblem:
    config = TrainConfig(epochs=epochs, batch_size=8, patience=None, **OPTIMIZERS[optimizer])
    return TrainedProblem(list(_tasks(TASKS3).values()), "synthetic", {"name": f"tiny-{layout}-{batch_norm}"},
                          tiny_data(layout), tiny_factory(batch_norm), config)


# ----------------------------------------------------------------------------------- slow, independent references


def _copy(ctx):
    """A deep copy of the model and a fresh optimiser of the same kind holding a copy of the current state."""
    model = copy.deepcopy(ctx.model)
    optimizer = type(ctx.optimizer)(model.parameters(), **ctx.optimizer.defaults)
    optimizer.load_state_dict(copy.deepcopy(ctx.optimizer.state_dict()))
    return model, optimizer


def _losses(model, ctx) -> np.ndarray:
    model.train()
    with torch.no_grad():
        out = model(ctx.batch.inputs)
    return np.array([float(loss_fn("mse")(out[t], ctx.batch.targets[t])) for t in ctx.group])


def _independent_gradients(ctx):
    """Per task: gradients of the task's loss w.r.t. the encoder and to its own head, from a fresh forward of a copy
    and one backward per task."""
    model = copy.deepcopy(ctx.model)
    model.train()
    out = model(ctx.batch.inputs)
    shared, heads = {}, {}
    for t in ctx.group:
        loss = loss_fn("mse")(out[t], ctx.batch.targets[t])
        enc = list(model.encoder.parameters())
        own = list(model.heads[t].parameters())
        grads = torch.autograd.grad(loss, enc + own, retain_graph=True)
        shared[t] = [g.detach() for g in grads[: len(enc)]]
        heads[t] = [g.detach() for g in grads[len(enc):]]
    return shared, heads


def _stepped(ctx, encoder_grads, head_grads: dict | None = None):
    """A copy after one real optimiser step with the given gradients (parameters without one do not move)."""
    model, optimizer = _copy(ctx)
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(model.encoder.parameters(), encoder_grads):
        p.grad = g.clone()
    for t, grads in (head_grads or {}).items():
        for p, g in zip(model.heads[t].parameters(), grads):
            p.grad = g.clone()
    optimizer.step()
    return model


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def reference_tag(ctx) -> np.ndarray:
    shared, _ = _independent_gradients(ctx)
    before = np.array([float(ctx.losses[t].detach()) for t in ctx.group])
    n = len(ctx.group)
    out = np.zeros((n, n))
    for j, source in enumerate(ctx.group):
        after = _losses(_stepped(ctx, shared[source]), ctx)
        out[:, j] = (1 - after / before) / ctx.lr
    return out


def reference_etap(ctx) -> np.ndarray:
    """ETAP's default (``update=gradient``): ``[j, i] = g_j . g_i / L_j``."""
    shared, _ = _independent_gradients(ctx)
    before = np.array([float(ctx.losses[t].detach()) for t in ctx.group])
    n = len(ctx.group)
    out = np.zeros((n, n))
    for (i, source), (j, recipient) in itertools.product(enumerate(ctx.group), repeat=2):
        out[j, i] = float(_flat(shared[recipient]) @ _flat(shared[source])) / before[j]
    return out


def reference_etap_optimizer(ctx) -> np.ndarray:
    """``update=optimizer``: ``[j, i] = g_j . (theta - theta'_i) / (L_j lr)`` with ``theta'_i`` a real step."""
    shared, _ = _independent_gradients(ctx)
    before = np.array([float(ctx.losses[t].detach()) for t in ctx.group])
    theta = _flat(p.detach() for p in ctx.model.encoder.parameters())
    n = len(ctx.group)
    out = np.zeros((n, n))
    for i, source in enumerate(ctx.group):
        update = theta - _flat(p.detach() for p in _stepped(ctx, shared[source]).encoder.parameters())
        for j, recipient in enumerate(ctx.group):
            out[j, i] = float(_flat(shared[recipient]) @ update) / (before[j] * ctx.lr)
    return out


def reference_cs(ctx) -> np.ndarray:
    shared, _ = _independent_gradients(ctx)
    kept = [k for k, p in enumerate(ctx.model.encoder.parameters()) if p.ndim > 1]
    vec = {t: _flat(shared[t][k] for k in kept) for t in ctx.group}
    n = len(ctx.group)
    out = np.eye(n)
    for (i, a), (j, b) in itertools.permutations(enumerate(ctx.group), 2):
        out[i, j] = float(vec[a] @ vec[b] / (vec[a].norm() * vec[b].norm()))
    return out


def reference_transfer_gain(ctx, members=None, diagonal="doubled") -> np.ndarray:
    """Eq. 3 for every ordered pair of ``members``; the diagonal from the step on ``L_j + L_j`` (or 0)."""
    shared, heads = _independent_gradients(ctx)
    n = len(ctx.group)
    members = range(n) if members is None else members
    out = np.full((n, n), np.nan)
    for j in members:
        recipient = ctx.group[j]
        alone = _losses(_stepped(ctx, shared[recipient], {recipient: heads[recipient]}), ctx)[j]
        out[j, j] = 0.0
        for i in members:
            if i == j and diagonal == "zero":
                continue
            source = ctx.group[i]
            both = [a + b for a, b in zip(shared[source], shared[recipient])]
            paired = _losses(_stepped(ctx, both, {recipient: heads[recipient]}), ctx)[j]
            out[j, i] = 1 - paired / alone
    return out


REFERENCES = {"tag": reference_tag, "cs": reference_cs, "transfer_gain": reference_transfer_gain,
              "transfer_gain[diagonal=zero]": lambda ctx: reference_transfer_gain(ctx, diagonal="zero"),
              "etap": reference_etap, "etap[update=optimizer]": reference_etap_optimizer}
CALLBACKS = {"tag": TagCallback, "cs": CosineCallback, "transfer_gain": TransferGainCallback, "etap": EtapCallback,
             "transfer_gain[diagonal=zero]": lambda tasks: TransferGainCallback(tasks, diagonal="zero"),
             "etap[update=optimizer]": lambda tasks: EtapCallback(tasks, update="optimizer")}


class Compare(Callback):
    """At chosen steps, the signal callback's step matrix beside the slow reference's (computed first, on copies,
    before the update). The callback runs through its own hooks (transfer gain finishes after the update) and
    observes every step; its matrix of a step is ``last``."""

    wants_task_gradients = True

    def __init__(self, inner, reference, steps):
        self.inner, self.reference, self.steps = inner, reference, set(steps)
        self.pairs = []
        self.want = None

    def on_train_start(self, group, model, optimizer):
        self.inner.on_train_start(group, model, optimizer)

    def before_step(self, ctx):
        self.buffers = {k: b.clone() for k, b in ctx.model.named_buffers()}
        self.want = self.reference(ctx) if ctx.step in self.steps else None
        self.inner.before_step(ctx)

    def after_step(self, ctx):
        self.inner.after_step(ctx)
        if ctx.step in self.steps:
            self.pairs.append((ctx.step, self.inner.last, self.want))
        for k, b in ctx.model.named_buffers():  # the lookahead leaves running statistics alone
            assert torch.equal(b, self.buffers[k]), k


# ----------------------------------------------------------------------------------------------- registration


@pytest.mark.parametrize("name", SIGNALS)
def test_registered_with_parameters_and_docstring(name):
    cls = registry.components("signal")[name]
    assert issubclass(cls, TrainingSignal) and cls.name == name and cls.during_training
    assert "every" in cls.defaults and set(cls.test_parameters) <= set(cls.defaults)
    doc = (cls.__doc__ or "") + (__import__(cls.__module__, fromlist=["x"]).__doc__ or "")
    assert "Diagonal" in doc or "diagonal" in doc


@pytest.mark.parametrize("name", SIGNALS)
def test_non_trainable_problem_is_unsupported(name):
    problem = registry.create("dataset", "taskonomy").load("smoke")
    with pytest.raises(Unsupported):
        registry.create("signal", name).compute(problem, seed=0)


# ------------------------------------------------------------------------------------- the trainer's gradients


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_batched_task_gradients_equal_the_loop(layout, batch_norm):
    problem = tiny_problem(layout, "adam", batch_norm=batch_norm)
    seen = []
    fast = "segments" if layout == "per_task" and not batch_norm else "two_stage"

    class Check(Callback):
        wants_task_gradients = True

        def before_step(self, ctx):
            loop = ctx._trainer
            loops = loop.task_gradient_stack(ctx.losses, None, method="loop")
            for parts, method in ((ctx._parts, fast), (None, "batched")):
                got = loop.task_gradient_stack(ctx.losses, parts, method="batched")
                assert got.method == method
                for k, g in loops.shared.items():
                    torch.testing.assert_close(got.shared[k], g, rtol=1e-10, atol=1e-12)
                for k, g in loops.heads.items():
                    torch.testing.assert_close(got.heads[k], g, rtol=1e-10, atol=1e-12)
            per_task = loop.per_task_gradients(ctx.losses, ctx._parts)
            for i, t in enumerate(ctx.group):
                assert set(per_task[t]) == set(ctx.shared_parameters()) | set(ctx.task_parameters(t))
                for k in ctx.shared_parameters():
                    torch.testing.assert_close(per_task[t][k], loops.shared[k][i])
            seen.append(ctx.step)

    problem.train(TASKS3, seed=0, callbacks=[Check()])
    assert len(seen) == 6


@pytest.mark.parametrize("sharing", ["all", "none", "a_and_b"])
def test_forward_parts_gives_each_task_its_own_cotangent(sharing):
    """``forward_parts`` equals ``forward``, and the summed loss's gradient at ``head_inputs[t]`` is task t's own
    cotangent, whether all tasks read one input, each its own, or two of three share one."""
    model = tiny_factory(batch_norm=False)(TASKS3)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 5, generator=gen, dtype=DT) for _ in range(3)]
    inputs = {"all": dict.fromkeys(TASKS3, xs[0]), "none": dict(zip(TASKS3, xs)),
              "a_and_b": {"a": xs[0], "b": xs[0], "c": xs[2]}}[sharing]
    out, parts = model.forward_parts(inputs)
    for t, o in model(inputs).items():
        torch.testing.assert_close(out[t], o)
    losses = {t: (out[t] ** 2).mean() * (i + 1) for i, t in enumerate(TASKS3)}
    got = torch.autograd.grad(sum(losses.values()), [parts.head_inputs[t] for t in TASKS3], retain_graph=True)
    for t, g in zip(TASKS3, got):
        view = parts.head_inputs[t]
        want, = torch.autograd.grad(losses[t], view, retain_graph=True)
        torch.testing.assert_close(g, want)
        a, b = parts.rows[t]
        torch.testing.assert_close(view, parts.z[a:b])


class KeepModel(Callback):
    """Keeps the trained model as ``models[key]``; ``ask``: asks for the per-task gradients at every step (the
    trainer then updates with their sum); ``wants``: announces that it will."""

    def __init__(self, models: dict, key, ask: bool, wants: bool = True) -> None:
        self.models, self.key, self.ask = models, key, ask
        self.wants_task_gradients = wants

    def on_train_start(self, group, model, optimizer):
        self.models[self.key] = model

    def before_step(self, ctx):
        if self.ask:
            ctx.task_gradients()


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("wants", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_training_with_task_gradients_matches_plain_training(layout, optimizer, wants, batch_norm):
    """The update from the summed per-task gradients equals the plain backward's (no extra pass, same weights)."""
    problem = tiny_problem(layout, optimizer, epochs=3, batch_norm=batch_norm)
    models = {}
    plain = problem.train(TASKS3, seed=3, callbacks=[KeepModel(models, False, ask=False, wants=wants)])
    asked = problem.train(TASKS3, seed=3, callbacks=[KeepModel(models, True, ask=True, wants=wants)])
    for (k, a), (_, b) in zip(models[True].state_dict().items(), models[False].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=k)
    assert asked.val_loss == pytest.approx(plain.val_loss, rel=1e-9)


class _ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number from the gradient: batching (vmap) cannot run it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float(grad.abs().sum().item() >= 0)


class _ItemLayer(nn.Module):
    def forward(self, x):
        return _ItemInBackward.apply(x)


def test_task_gradients_fall_back_to_the_loop_where_batching_fails():
    base = tiny_problem("per_task", "sgd")

    def factory(group):
        model = tiny_factory()(group)
        model.encoder = nn.Sequential(model.encoder[0], _ItemLayer(), *model.encoder[1:])
        return model

    problem = TrainedProblem(base.tasks, "synthetic", {"name": "tiny-item-grad"}, base.task_data, factory,
                             base.config)
    compare = Compare(EtapCallback(TASKS3), reference_etap, steps=[0, 3])
    problem.train(TASKS3, seed=0, callbacks=[compare])
    for _, got, want in compare.pairs:
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    info = compare.inner.info()
    assert info["task_gradients"] == "loop" and "item" in info["task_gradients_fallback"].lower()


# ------------------------------------------------------------------------------------------ virtual optimiser


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterov", "sgd_dampening", "adam", "adamw", "adam_amsgrad",
                                  "sgd_maximize"])
def test_virtual_step_equals_a_real_optimizer_step(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(DT)
    params = dict(model.named_parameters())
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3),
        "sgd_maximize": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, maximize=True),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    }[kind]
    optimizer = make(model.parameters())

    class Ctx:  # what the virtual step reads from a StepContext
        def __init__(self, opt):
            self.optimizer = opt

        def optimizer_state(self, p):
            return self.optimizer.state.get(p, {})

    flat = la.FlatParams(params)
    x = torch.randn(6, 4, dtype=DT)
    for step in range(4):  # step 0: empty state; later: momentum buffers / moments in use
        grads = torch.randn(3, flat.size, dtype=DT)
        ahead = la.virtual_parameters(Ctx(optimizer), flat, grads)
        update = la.virtual_update(Ctx(optimizer), flat, grads)
        for row in range(3):
            twin = copy.deepcopy(model)
            opt = make(twin.parameters())
            opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            for p, g in zip(twin.parameters(), flat.unflatten(grads[row: row + 1]).values()):
                p.grad = g[0].clone()
            opt.step()
            after = _flat(p.detach() for p in twin.parameters())
            torch.testing.assert_close(ahead[row], after, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(update[row], flat.values() - after, rtol=1e-9, atol=1e-14)
        # advance the real optimiser with some gradient, as a training would
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()


def test_unsupported_optimizer():
    model = nn.Linear(2, 1)
    opt = torch.optim.RMSprop(model.parameters())

    class Ctx:
        optimizer = opt

        def optimizer_state(self, p):
            return {}

    with pytest.raises(Unsupported, match="RMSprop"):
        la.virtual_parameters(Ctx(), la.FlatParams(dict(model.named_parameters())), torch.zeros(1, 3))


# --------------------------------------------------------------------------------------- batched lookahead


class _Item(nn.Module):
    """Data-dependent Python control flow: ``.item()`` cannot run under vmap."""

    def forward(self, x):
        return x * 2.0 if float(x.sum().item()) < 1e9 else x


def _perturbed_sets(ctx, sets: int) -> dict[str, torch.Tensor]:
    """``sets`` random parameter sets near the step's shared parameters (seeded by the step)."""
    gen = torch.Generator().manual_seed(ctx.step)
    return {k: p.detach() + 0.1 * torch.randn(sets, *p.shape, generator=gen, dtype=DT)
            for k, p in ctx.shared_parameters().items()}


@pytest.mark.parametrize("batched_rows", [8192, 20, 1], ids=["one_call", "chunks", "set_by_set"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_batched_lookahead_equals_the_loop_and_leaves_buffers(layout, batch_norm, batched_rows, monkeypatch):
    """``batched_rows``: the row-wise encoder runs all sets in one call, in chunks of a few sets (4 sets of 4 to 8
    rows), or set by set."""
    monkeypatch.setattr(la, "BATCHED_ROWS", batched_rows)
    problem = tiny_problem(layout, "sgd", batch_norm=batch_norm)
    checked = []

    class Check(Callback):
        def before_step(self, ctx):
            replaced = _perturbed_sets(ctx, 4)
            fixed = {k: p.detach() + 0.5 for k, p in ctx.task_parameters("b").items()}
            buffers = {k: b.clone() for k, b in ctx.model.named_buffers()}
            look = la.Lookahead()
            got = look.losses(ctx, replaced, fixed)
            assert look.fallback is None and got.shape == (4, 3)
            want = la.lookahead_losses_loop(ctx, replaced, fixed)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            assert (look.stacked is None) == batch_norm and look.stack_fallback is None
            members = torch.tensor([[2, 0], [1, 1], [0, 2], [1, 0]])
            own = look.member_losses(ctx, replaced, fixed, members)
            if batch_norm or (layout == "per_task" and ctx.step % 3 == 2):  # no stacking; step 2: 8, 4, 8 rows
                assert own is None
            else:
                torch.testing.assert_close(own, want.gather(1, members), rtol=1e-10, atol=1e-12)
            for k, b in ctx.model.named_buffers():
                assert torch.equal(b, buffers[k]), k
            checked.append(ctx.step)

    problem.train(TASKS3, seed=0, callbacks=[Check()])
    assert len(checked) == 6


@pytest.mark.parametrize("loss", ["mse", "l1", "bce", "cross_entropy"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_stacked_heads_take_every_loss_per_sample(layout, loss):
    """The stacked Linear heads compute each loss as the mean of its per-sample form; equal to the loop."""
    classes = 3 if loss == "cross_entropy" else 1
    data = tiny_data(layout)

    def relabel(split):
        def target(y):
            if loss == "cross_entropy":
                return torch.bucketize(y, torch.tensor([-0.3, 0.3], dtype=DT)).to(DT)
            return (y > 0).to(DT) if loss == "bce" else y
        return Split(split.inputs, {t: target(y) for t, y in split.targets.items()})

    data = TaskData(relabel(data.train), relabel(data.val), relabel(data.test))
    tasks = [Task(t, kind="regression" if loss in ("mse", "l1") else "classification", metric="mse" if loss in
                  ("mse", "l1") else "error", higher_is_better=False, loss=loss) for t in TASKS3]

    def factory(group):
        encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT)
        return MTLModel(encoder, {t: nn.Linear(4, classes).to(DT) for t in group})

    problem = TrainedProblem(tasks, "synthetic", {"name": f"tiny-{layout}-{loss}"}, data, factory,
                             TrainConfig(epochs=1, batch_size=8, patience=None, **OPTIMIZERS["adam"]))
    checked = []

    class Check(Callback):
        def before_step(self, ctx):
            replaced = _perturbed_sets(ctx, 4)
            look = la.Lookahead()
            got = look.losses(ctx, replaced)
            assert look.stacked is not None and look.stack_fallback is None
            torch.testing.assert_close(got, la.lookahead_losses_loop(ctx, replaced), rtol=1e-10, atol=1e-12)
            checked.append(ctx.step)

    problem.train(TASKS3, seed=0, callbacks=[Check()])
    assert checked


def test_row_wise_layers_only_for_sequential_row_wise_encoders():
    from bench.trainer import row_wise_layers

    linear = nn.Linear(3, 3)
    layers = row_wise_layers(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Tanh(), linear), nn.ReLU()))
    assert [(p, type(m)) for p, m in layers] == [("0", nn.Linear), ("1.0", nn.Tanh), ("1.1", nn.Linear),
                                                  ("2", nn.ReLU)]

    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x).mean(0, keepdim=True).expand_as(x)  # mixes rows

    assert row_wise_layers(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))) is None  # batch statistics
    assert row_wise_layers(nn.Sequential(MyLinear(3, 3))) is None  # a subclass may redefine forward
    assert row_wise_layers(nn.Sequential(linear, nn.ReLU(), linear)) is None  # one module used twice
    assert row_wise_layers(nn.Linear(2, 3)) is None  # not a Sequential


def test_lookahead_falls_back_to_the_loop_where_vmap_cannot_run():
    base = tiny_problem("shared", "adam")

    def factory(group):
        model = tiny_factory(batch_norm=False)(group)
        model.encoder = nn.Sequential(*model.encoder, _Item())
        return model

    problem = TrainedProblem(base.tasks, "synthetic", {"name": "tiny-item"}, base.task_data, factory, base.config)
    compare = Compare(TagCallback(TASKS3), reference_tag, steps=[1, 3])
    problem.train(TASKS3, seed=0, callbacks=[compare])
    for _, got, want in compare.pairs:
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    info = compare.inner.info()
    assert info["lookahead"] == "loop" and "item" in info["lookahead_fallback"].lower()


# ---------------------------------------------------------------------- each signal against its slow reference


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_signal_equals_slow_reference(name, optimizer, layout, batch_norm):
    """Batch norm in the encoder: the general paths (two-stage gradients, the whole model vmapped, heads one by
    one). A row-wise encoder without buffers: per-task inputs take the segment gradients, the lookahead stacks the
    heads, and transfer gain encodes only a set's members (step 2 has tasks of 8, 4 and 8 rows: padded segments,
    and a batch that does not stack, evaluated the general way)."""
    problem = tiny_problem(layout, optimizer, batch_norm=batch_norm)
    compare = Compare(CALLBACKS[name](TASKS3), REFERENCES[name], steps=[0, 2, 5])
    problem.train(TASKS3, seed=1, callbacks=[compare])
    assert [s for s, _, _ in compare.pairs] == [0, 2, 5]
    for step, got, want in compare.pairs:
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9, err_msg=f"step {step}")
        assert np.all(np.isfinite(got))
    info = compare.inner.info()
    assert info["task_gradients"] == ("segments" if layout == "per_task" and not batch_norm else "two_stage")
    if name in ("tag", "transfer_gain"):
        assert info["lookahead"] == "vmap"
        assert info["lookahead_heads"] == ("one by one" if batch_norm else "stacked")
    if name == "transfer_gain" and layout == "per_task" and not batch_norm:
        assert info["extra_forward_batches"] < info["extra_forward"]  # sets restricted to their members
    elif name == "transfer_gain":  # every set encodes the whole batch
        assert info["extra_forward_batches"] == info["extra_forward"]


def test_compute_reorders_to_the_problem_and_counts_passes():
    problem = tiny_problem("shared", "sgd")
    n, steps = 3, 6
    for name, forward in (("tag", n), ("cs", 0), ("etap", 0), ("transfer_gain", n * (n + 3) // 2),
                          ("transfer_gain[diagonal=zero]", n * (n + 1) // 2)):
        affinity = registry.create("signal", name).compute(problem, seed=0)
        assert affinity.tasks == TASKS3 and affinity.matrix.shape == (3, 3)
        assert affinity.info["steps"] == steps
        assert affinity.info["extra_backward"] == (n - 1) * steps
        assert affinity.info["extra_forward"] == forward * steps
    assert np.allclose(np.diag(registry.create("signal", "cs").compute(problem, 0).matrix), 1.0)
    assert np.allclose(np.diag(registry.create("signal", "transfer_gain[diagonal=zero]").compute(problem, 0).matrix), 0)
    measured = np.diag(registry.create("signal", "transfer_gain").compute(problem, 0).matrix)
    assert np.all(np.isfinite(measured)) and np.all(measured != 0)  # the doubled step (SGD: twice the step)


# --------------------------------------------------------------------------------------------------- ETAP


@pytest.mark.parametrize("update, momentum, weight_decay", [("optimizer", 0.9, 1e-2), ("gradient", 0.0, 0.0)])
def test_etap_is_the_first_order_expansion_of_tag(update, momentum, weight_decay):
    """For a small learning rate TAG's lookahead (1 - L(theta - U)/L)/lr -> g . U / (L lr), ETAP's score: through
    the optimiser's own step (SGD with momentum and weight decay) for ``update=optimizer``; for the default
    ``update=gradient`` (``U = lr g``) when the training is plain gradient descent."""
    problem = tiny_problem("shared", "sgd")
    problem.config = dataclasses.replace(problem.config, lr=1e-6, momentum=momentum, weight_decay=weight_decay)
    both = []

    class Both(Callback):
        wants_task_gradients = True

        def __init__(self):
            self.tag, self.etap = TagCallback(TASKS3), EtapCallback(TASKS3, update=update)

        def on_train_start(self, group, model, optimizer):
            self.tag.on_train_start(group, model, optimizer)
            self.etap.on_train_start(group, model, optimizer)

        def before_step(self, ctx):
            both.append((self.tag.step_matrix(ctx), self.etap.step_matrix(ctx)))

    problem.train(TASKS3, seed=0, callbacks=[Both()])
    for tag, etap in both:
        np.testing.assert_allclose(tag, etap, rtol=1e-4, atol=1e-6 * np.abs(etap).max())


def test_etap_gradient_form_does_not_depend_on_the_optimiser():
    """``update=gradient`` reads only the gradients and the losses: from the same start (step 0: same weights,
    same batch) SGD and Adam trainings give the same matrix; ``update=optimizer`` does not (Adam's step is not
    ``lr g``)."""
    first = {}
    for optimizer in ("sgd", "adam"):
        for update in ("gradient", "optimizer"):
            compare = Compare(EtapCallback(TASKS3, update=update), lambda ctx: None, steps=[0])
            tiny_problem("shared", optimizer).train(TASKS3, seed=2, callbacks=[compare])
            first[optimizer, update] = compare.pairs[0][1]
    np.testing.assert_allclose(first["sgd", "gradient"], first["adam", "gradient"], rtol=1e-12)
    assert not np.allclose(first["sgd", "optimizer"], first["adam", "optimizer"], rtol=1e-3)


def test_etap_rejects_an_unknown_update():
    with pytest.raises(UsageError, match="update must be one of gradient, optimizer, got 'adam'"):
        registry.create("signal", "etap[update=adam]").compute(tiny_problem("shared", "sgd"), seed=0)


def test_etap_asks_for_no_extra_forward():
    problem = tiny_problem("per_task", "adam")
    calls = {"n": 0}

    def factory(group):
        model = tiny_factory()(group)
        model.encoder.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
        return model

    problem = TrainedProblem(problem.tasks, "synthetic", {"name": "count"}, problem.task_data, factory,
                             problem.config)
    problem.train(TASKS3, seed=0)
    plain = calls["n"]
    calls["n"] = 0
    affinity = registry.create("signal", "etap").compute(problem, seed=0)
    assert calls["n"] == plain  # the training's own forwards and evaluations only
    assert affinity.info["extra_forward"] == 0
    assert affinity.info["extra_backward"] == 2 * affinity.info["steps"]


# ------------------------------------------------------------------------------------ transfer gain options


class Recording(TransferGainCallback):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.observed, self.matrices, self.subsets = [], [], []

    def subset(self, n):
        members = super().subset(n)
        self.subsets.append(tuple(members))
        return members

    def step_matrix(self, ctx):
        self.observed.append(ctx.step)
        out = super().step_matrix(ctx)
        if out is not None:
            self.matrices.append(out)
        return out


def _sampled_problem():
    problem = registry.create("dataset", "synthetic[clusters=[2,2,1],shared_inputs=true]").load("smoke")
    problem.config = dataclasses.replace(problem.config, epochs=20, patience=None)
    return problem


@pytest.mark.parametrize("diagonal", ["doubled", "zero"])
def test_sampling_is_deterministic_and_averages_over_observing_steps(diagonal):
    problem = _sampled_problem()
    names = tuple(sorted(problem.task_names))
    runs = []
    for seed in (4, 4, 5):
        cb = Recording(names, sample=True, seed=seed, diagonal=diagonal)
        problem.train(problem.task_names, seed=0, callbacks=[cb])
        runs.append(cb)
    first, again, other = runs
    assert first.subsets == again.subsets and first.subsets != other.subsets
    np.testing.assert_array_equal(first.matrix(0.0), again.matrix(0.0))
    sizes = [len(s) for s in first.subsets]
    assert set(sizes) == set(range(1, len(names) + 1))  # T ~ Unif{1..n}
    smallest, per_task_sets = (1, 3) if diagonal == "doubled" else (2, 1)  # T = 1 observes a diagonal or nothing
    assert first.steps == sum(s >= smallest for s in sizes) == len(first.matrices)
    assert first.extra_backward == (len(names) - 1) * first.steps
    assert first.extra_forward == sum(s * (s + per_task_sets) // 2 for s in sizes if s >= smallest)
    stack = np.array(first.matrices)
    counts = (~np.isnan(stack)).sum(0)
    np.testing.assert_array_equal(first.count, counts)
    for s, m in zip([s for s in first.subsets if len(s) >= smallest], first.matrices):  # only the subset's pairs
        inside = np.zeros_like(m, dtype=bool)
        inside[np.ix_(s, s)] = True
        assert np.array_equal(~np.isnan(m), inside)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(first.matrix(0.0), np.where(counts > 0, np.nanmean(stack, 0), 0.0))


def test_sampled_step_matches_the_reference_on_its_subset():
    problem = tiny_problem("per_task", "adam", epochs=3)
    cb = TransferGainCallback(TASKS3, sample=True, seed=2)
    subsets = []

    def reference(ctx):
        state = copy.deepcopy(cb.gen.bit_generator.state)
        members = cb.subset(3)
        cb.gen.bit_generator.state = state  # the callback draws the same subset next
        subsets.append(tuple(members))
        return reference_transfer_gain(ctx, members)  # T = 1: that task's diagonal

    compare = Compare(cb, reference, steps=range(9))
    problem.train(TASKS3, seed=0, callbacks=[compare])
    assert any(len(s) >= 2 for s in subsets) and any(len(s) == 1 for s in subsets)
    for _, got, want in compare.pairs:
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", SIGNALS)
def test_every_observes_one_step_in_every(name):
    problem = tiny_problem("shared", "sgd", epochs=3)  # 9 steps: 0..8
    seen = []
    cls = CALLBACKS[name]

    class Watch(cls):
        def step_matrix(self, ctx):
            seen.append(ctx.step)
            return super().step_matrix(ctx)

    cb = Watch(TASKS3, every=4)
    problem.train(TASKS3, seed=0, callbacks=[cb])
    assert seen == [0, 4, 8] and cb.steps == 3
    assert cb.extra_backward == 2 * 3


# ------------------------------------------------------------------------------------------ planted clusters


def _cluster_margin(matrix: np.ndarray, tasks, planted) -> float:
    sym = (matrix + matrix.T) / 2
    label = {t: c for c, group in enumerate(planted) for t in group}
    within, cross = [], []
    for i, j in itertools.combinations(range(len(tasks)), 2):
        (within if label[tasks[i]] == label[tasks[j]] else cross).append(sym[i, j])
    return min(within) - max(cross)


@pytest.fixture(scope="module")
def clustered():
    """Two clusters of three tasks, each cluster one direction of a 4-d input; low noise, shared inputs, a
    one-unit bottleneck, plain SGD: tasks of one cluster pull the bottleneck the same way, the other cluster's
    pull is orthogonal to it, so within-cluster gradient alignment is positive and cross-cluster alignment is not
    (plain SGD keeps the momentum/Adam history, common to all sources, out of the lookahead)."""
    dataset = registry.create("dataset", "synthetic[clusters=[3,3],noise=0.1,shared_inputs=true,dim=4]")
    settings = {"n_train": 256, "n_val": 64, "n_test": 64,
                "train": {"epochs": 30, "batch_size": 64, "lr": 0.02, "optimizer": "sgd", "momentum": 0.0,
                          "patience": None}}
    return dataset.build(settings, "smoke", None)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["tag", "cs", "etap", "transfer_gain", "transfer_gain[sample=true]"])
def test_within_cluster_pairs_rank_above_cross_cluster_pairs(clustered, name, seed):
    affinity = registry.create("signal", name).compute(clustered, seed=seed)
    margin = _cluster_margin(affinity.matrix, affinity.tasks, clustered.planted_groups)
    assert margin > 0, (name, seed, affinity.matrix)


def _dropout_factory(batch_norm: bool):
    def factory(group):
        layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh(), nn.Dropout(0.3),
                                                                                     nn.Linear(8, 4)]
        return MTLModel(nn.Sequential(*layers).to(DT), {t: nn.Linear(4, 1).to(DT) for t in group})

    return factory


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
@pytest.mark.parametrize("observer", ["tag", "transfer_gain", "transfer_gain[sample=true]", "tag (naive loop)"])
def test_observing_a_training_with_dropout_leaves_its_trajectory(observer, layout, batch_norm):
    """A lookahead through dropout draws its masks from the process's random stream and puts the stream back, so
    the observed training draws the same masks as a plain training and ends with the same weights."""
    from bench.signal_perf import NaiveTagCallback

    config = TrainConfig(epochs=3, batch_size=8, patience=None, **OPTIMIZERS["adam"])
    problem = TrainedProblem(list(_tasks(TASKS3).values()), "synthetic", {"name": f"dropout-{layout}-{batch_norm}"},
                             tiny_data(layout), _dropout_factory(batch_norm), config)
    makers = {"tag": lambda: TagCallback(TASKS3), "transfer_gain": lambda: TransferGainCallback(TASKS3, seed=1),
              "transfer_gain[sample=true]": lambda: TransferGainCallback(TASKS3, sample=True, seed=1),
              "tag (naive loop)": lambda: NaiveTagCallback(TASKS3)}
    models = {}
    # both ask for the per-task gradients: the same update arithmetic (their sum) in both trainings
    problem.train(TASKS3, seed=3, callbacks=[KeepModel(models, "plain", ask=True)])
    observer_cb = makers[observer]()
    problem.train(TASKS3, seed=3, callbacks=[KeepModel(models, "observed", ask=True), observer_cb])
    assert observer_cb.steps > 0
    for (k, a), (_, b) in zip(models["observed"].state_dict().items(), models["plain"].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=k)


def _dropout_problem(layout: str, batch_norm: bool) -> TrainedProblem:
    config = TrainConfig(epochs=2, batch_size=8, patience=None, **OPTIMIZERS["sgd"])
    return TrainedProblem(list(_tasks(TASKS3).values()), "synthetic", {"name": f"dropout-{layout}-{batch_norm}"},
                          tiny_data(layout), _dropout_factory(batch_norm), config)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_a_lookahead_through_dropout_is_batched_with_one_mask_for_every_set(layout, batch_norm):
    """Through dropout the vmap runs (no fallback to the loop), every set sees the loop's masks: two identical sets
    give identical losses, and every set equals the loop."""
    checked = []

    class Check(Callback):
        def before_step(self, ctx):
            replaced = {k: torch.cat([v, v[:1]]) for k, v in _perturbed_sets(ctx, 3).items()}  # set 3 repeats 0
            look = la.Lookahead()
            got = look.losses(ctx, replaced)
            assert look.fallback is None and look.stacked is None
            assert torch.equal(got[3], got[0])
            torch.testing.assert_close(got, la.lookahead_losses_loop(ctx, replaced), rtol=1e-10, atol=1e-12)
            checked.append(ctx.step)

    _dropout_problem(layout, batch_norm).train(TASKS3, seed=0, callbacks=[Check()])
    assert len(checked) == 6


@pytest.mark.parametrize("batch_norm", [True, False], ids=["batch_norm", "row_wise"])
@pytest.mark.parametrize("layout", ["shared", "per_task"])
def test_tag_through_dropout_takes_both_losses_under_the_same_masks(layout, batch_norm):
    """With dropout, ``L_i(theta)`` and ``L_i(theta'_j)`` are drawn under the same masks: equal to a slow reference
    that evaluates copies of the model (``theta`` and a real optimiser step from each task's gradient) each from
    the same random state. With the step's own forward as the denominator the two differ by the mask noise."""
    rows = []

    class Reference(Callback):
        def before_step(self, ctx):
            def losses(model):
                with torch.random.fork_rng():
                    return _losses(model, ctx)

            grads = ctx.task_gradients()
            before = losses(copy.deepcopy(ctx.model))
            out = np.zeros((3, 3))
            for j, source in enumerate(ctx.group):
                encoder = [grads[source][f"encoder.{k}"] for k, _ in ctx.model.encoder.named_parameters()]
                out[:, j] = (1 - losses(_stepped(ctx, encoder)) / before) / ctx.lr
            rows.append(out)

    class Observed(TagCallback):
        def after_step(self, ctx):
            torch.testing.assert_close(self.last, rows[-1], rtol=1e-7, atol=1e-9)

    cb = Observed(TASKS3)
    _dropout_problem(layout, batch_norm).train(TASKS3, seed=0, callbacks=[Reference(), cb])
    assert cb.steps == 6 and cb.random and cb.extra_forward == 6 * 4


@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20])
def test_cosines_of_tiny_and_huge_float32_gradients(scale):
    """The cosine does not depend on the gradients' scale, down to float32 gradients of order 1e-20 (whose norms'
    product underflows) and up to 1e20 (whose squares overflow); a zero row has cosine 0."""
    from bench.signals.cs import cosine_matrix

    rows = torch.tensor([[3.0, 4.0, 0.0], [4.0, 3.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    want = torch.tensor([[1.0, 0.96, 0.0, 0.0], [0.96, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(cosine_matrix(rows * scale), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stops, epochs", [(True, 4), (True, 2), (False, 4)],
                         ids=["early_stop", "stop_on_the_last_epoch", "all_epochs"])
@pytest.mark.parametrize("make", [lambda: TagCallback(TASKS3), lambda: EtapCallback(TASKS3),
                                  lambda: CosineCallback(TASKS3)], ids=["tag", "etap", "cs"])
def test_the_epochs_early_stopping_waited_through_are_dropped(make, stops, epochs):
    """TAG's accounting: when early stopping ends the training (here after epoch 1, no epoch after the first
    improving by ``min_delta``; with a budget of 2 epochs the stop falls on the last one), the steps after the best
    epoch leave the average; a training that runs all its epochs keeps every step."""
    config = TrainConfig(epochs=epochs, batch_size=8, patience=1 if stops else None,
                         min_delta=1e9 if stops else 0.0, **OPTIMIZERS["sgd"])
    problem = TrainedProblem(list(_tasks(TASKS3).values()), "synthetic", {"name": "early"}, tiny_data("shared"),
                             tiny_factory(False), config)
    seen = []

    class Keep(Callback):
        def after_step(self, ctx):
            seen.append((ctx.epoch, cb.last.copy()))

    cb = make()
    result = problem.train(TASKS3, seed=0, callbacks=[cb, Keep()])
    kept = [m for e, m in seen if e <= result.best_epoch or not stops]
    assert (result.epochs_run, result.best_epoch) == ((2, 0) if stops else (4, result.best_epoch))
    assert len(kept) < len(seen) if stops else len(kept) == len(seen)
    np.testing.assert_allclose(cb.matrix(), np.mean(kept, axis=0), rtol=1e-12, atol=1e-14)
    assert cb.steps == len(kept) and cb.info()["dropped_epochs"] == (1 if stops else 0)


def test_a_loss_of_zero_is_a_clear_error_not_an_unobserved_pair():
    """Eq. 3 divides by ``L_j(phi_j)``: a loss of exactly 0 (0/0 would read as "not observed") is named."""

    class ZeroLoss(TransferGainCallback):
        def member_losses(self, ctx, shared, members, first, second):
            alone, *rest = super().member_losses(ctx, shared, members, first, second)
            return (np.where(members == 1, 0.0, alone), *rest)

    problem = tiny_problem("shared", "sgd", batch_norm=False)
    with pytest.raises(UsageError, match=r"at step 0 .*\{'b': 0.0\}.*must be positive"):
        problem.train(TASKS3, seed=0, callbacks=[ZeroLoss(TASKS3)])

    class ZeroTag(TagCallback):  # TAG divides by the loss before the lookahead: named at the step, not at the end
        @staticmethod
        def step_losses(ctx):
            return torch.tensor([0.0 if (t == "c" and ctx.step == 3) else float(ctx.losses[t]) for t in ctx.group])

    with pytest.raises(UsageError, match=r"tag: at step 3 .*\{'c': 0.0\}.*must be positive"):
        problem.train(TASKS3, seed=0, callbacks=[ZeroTag(TASKS3)])
