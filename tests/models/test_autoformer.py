"""Autoformer blocks (bench/models/autoformer.py) against independent slow references on tiny tensors.

References: an explicit loop moving average with edge replication, a direct loop over delays for the correlation,
explicit ``torch.roll`` sums for the time-delay aggregation, and the training (batch-mean) / inference (per-sample)
delay selection written out with Python loops. Then shapes, packing, determinism and gradient flow of the MTL split.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.errors import UsageError
from bench.models.autoformer import (
    AutoCorrelation,
    Autoformer,
    AutoformerConfig,
    AutoformerDecoderHead,
    MyLayerNorm,
    SeriesDecomp,
    SharedAutoformerEncoder,
    aggregate_delays,
    decoder_init,
    flatten_encoding,
    moving_average,
    n_delays,
    pack_inputs,
    period_correlation,
    select_delays,
    split_encoding,
    unpack_inputs,
)
from bench.trainer import MTLModel

TINY = AutoformerConfig(n_series=3, n_marks=2, seq_len=12, label_len=6, pred_len=4, d_model=8, n_heads=2,
                        e_layers=2, d_layers=1, d_ff=16, moving_avg=5, factor=1.0, dropout=0.1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _packed(config: AutoformerConfig, batch: int, seed: int = 0) -> torch.Tensor:
    gen = _gen(seed)
    x_enc = torch.randn(batch, config.seq_len, config.n_series, generator=gen)
    marks = torch.rand(batch, config.seq_len + config.pred_len, config.n_marks, generator=gen) - 0.5
    return pack_inputs(x_enc, marks, config.pred_len)


# ------------------------------------------------------------------------------------------ slow references


def loop_moving_average(x: torch.Tensor, k: int) -> torch.Tensor:
    length = x.shape[1]
    front = (k - 1) // 2
    out = torch.empty_like(x)
    for t in range(length):
        rows = [min(max(j, 0), length - 1) for j in range(t - front, t - front + k)]
        out[:, t] = x[:, rows].mean(dim=1)
    return out


def loop_correlation(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    length = q.shape[-1]
    out = torch.zeros_like(q)
    for tau in range(length):
        for t in range(length):
            out[..., tau] += q[..., (t + tau) % length] * k[..., t]
    return out


def roll_aggregation(values: torch.Tensor, delays: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(values)
    for b in range(values.shape[0]):
        for i in range(delays.shape[1]):
            out[b] += weights[b, i] * torch.roll(values[b], -int(delays[b, i]), dims=-1)
    return out


def reference_autocorrelation(q, k, v, factor: float, training: bool) -> torch.Tensor:
    """The whole mechanism with loops: (B, L, H, E) inputs, keys/values truncated or zero-padded to L."""
    batch, length = q.shape[:2]
    source = k.shape[1]
    if length > source:
        k = torch.cat([k, torch.zeros(batch, length - source, *k.shape[2:], dtype=k.dtype)], dim=1)
        v = torch.cat([v, torch.zeros(batch, length - source, *v.shape[2:], dtype=v.dtype)], dim=1)
    k, v = k[:, :length], v[:, :length]
    corr = loop_correlation(q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1))
    score = corr.mean(dim=(1, 2))  # (B, L)
    top_k = int(factor * math.log(length))
    values = v.permute(0, 2, 3, 1)
    out = torch.zeros_like(values)
    batch_mean = score.mean(dim=0)
    shared = sorted(range(length), key=lambda d: -float(batch_mean[d]))[:top_k]
    for b in range(batch):
        chosen = shared if training else sorted(range(length), key=lambda d: -float(score[b, d]))[:top_k]
        w = torch.softmax(torch.stack([score[b, d] for d in chosen]), dim=0)
        for i, d in enumerate(chosen):
            out[b] += w[i] * torch.roll(values[b], -d, dims=-1)
    return out.permute(0, 3, 1, 2)


# -------------------------------------------------------------------------------------------------- the blocks


@pytest.mark.parametrize("k", [1, 3, 4, 5, 25])
def test_series_decomp_matches_loop_moving_average(k):
    x = torch.randn(2, 11, 3, generator=_gen(k), dtype=torch.float64)
    trend = moving_average(x, k)
    torch.testing.assert_close(trend, loop_moving_average(x, k))
    seasonal, trend2 = SeriesDecomp(k)(x)
    torch.testing.assert_close(seasonal + trend2, x)
    torch.testing.assert_close(trend2, trend)


@pytest.mark.parametrize("length", [7, 8])
def test_period_correlation_matches_direct_loop(length):
    gen = _gen(length)
    q = torch.randn(2, 3, 4, length, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, 4, length, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(period_correlation(q, k), loop_correlation(q, k))


@pytest.mark.parametrize("shared", [True, False])
def test_time_delay_aggregation_matches_roll_sums(shared):
    gen = _gen(3)
    values = torch.randn(3, 2, 4, 9, generator=gen, dtype=torch.float64)
    delays = torch.randint(0, 9, (1 if shared else 3, 4), generator=gen).expand(3, -1)
    weights = torch.softmax(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(aggregate_delays(values, delays, weights, shared),
                               roll_aggregation(values, delays, weights))


def test_n_delays():
    assert n_delays(96, 3) == int(3 * math.log(96)) == 13
    assert n_delays(72, 3) == 12
    assert n_delays(1, 3) == 1 and n_delays(3, 100) == 3


def test_training_and_inference_delay_selection():
    # two samples whose correlation peaks at different delays: batch-mean vs per-sample choice differs
    length = 10
    corr = torch.zeros(2, 2, 3, length, dtype=torch.float64)
    corr[0, ..., 2], corr[0, ..., 7] = 5.0, 1.0
    corr[1, ..., 4], corr[1, ..., 7] = 4.0, 1.5
    delays, weights = select_delays(corr, 2, shared=True)
    # batch mean: delay 2 -> 2.5, delay 4 -> 2.0, delay 7 -> 1.25: the top 2 are {2, 4} for both samples
    assert delays.tolist() == [[2, 4], [2, 4]]
    score = corr.mean(dim=(1, 2))
    torch.testing.assert_close(weights, torch.softmax(score[:, [2, 4]], dim=-1))
    delays, weights = select_delays(corr, 2, shared=False)
    assert delays.tolist() == [[2, 7], [4, 7]]
    torch.testing.assert_close(weights[0], torch.softmax(score[0, [2, 7]], dim=-1))
    torch.testing.assert_close(weights[1], torch.softmax(score[1, [4, 7]], dim=-1))
    # one sample: both rules agree
    d_train, w_train = select_delays(corr[:1], 2, shared=True)
    d_eval, w_eval = select_delays(corr[:1], 2, shared=False)
    assert d_train.tolist() == d_eval.tolist()
    torch.testing.assert_close(w_train, w_eval)


@pytest.mark.parametrize("source", [6, 9, 12])  # S < L (zero-pad), S == L, S > L (truncate)
@pytest.mark.parametrize("training", [True, False])
def test_autocorrelation_matches_reference(source, training):
    gen = _gen(source)
    q = torch.randn(3, 9, 2, 4, generator=gen, dtype=torch.float64)
    k = torch.randn(3, source, 2, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(3, source, 2, 4, generator=gen, dtype=torch.float64)
    module = AutoCorrelation(factor=2.0).train(training)
    torch.testing.assert_close(module(q, k, v), reference_autocorrelation(q, k, v, 2.0, training))


def test_autocorrelation_modes_differ_on_a_batch_and_agree_on_one_sample():
    gen = _gen(5)
    q, k, v = (torch.randn(4, 16, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    module = AutoCorrelation(factor=1.0)
    train_out, eval_out = module.train()(q, k, v), module.eval()(q, k, v)
    assert not torch.allclose(train_out, eval_out)
    torch.testing.assert_close(module.train()(q[:1], k[:1], v[:1]), module.eval()(q[:1], k[:1], v[:1]))


def test_my_layernorm_has_zero_time_mean():
    x = torch.randn(2, 7, 8, generator=_gen(1))
    out = MyLayerNorm(8)(x)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(2, 8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_len", [0, 6])
def test_decoder_init(label_len):
    x = torch.randn(2, 12, 3, generator=_gen(2), dtype=torch.float64)
    decomp = SeriesDecomp(5)
    seasonal_init, trend_init = decoder_init(x, decomp, label_len, 4)
    seasonal, trend = decomp(x)
    assert seasonal_init.shape == trend_init.shape == (2, label_len + 4, 3)
    torch.testing.assert_close(seasonal_init[:, :label_len], seasonal[:, 12 - label_len :])
    torch.testing.assert_close(trend_init[:, :label_len], trend[:, 12 - label_len :])
    assert (seasonal_init[:, label_len:] == 0).all()
    torch.testing.assert_close(trend_init[:, label_len:], x.mean(dim=1, keepdim=True).expand(2, 4, 3))


# ----------------------------------------------------------------------------------- packing and the MTL split


def test_pack_unpack_and_encoding_round_trip():
    gen = _gen(4)
    x_enc = torch.randn(2, TINY.seq_len, TINY.n_series, generator=gen)
    marks = torch.randn(2, TINY.seq_len + TINY.pred_len, TINY.n_marks, generator=gen)
    packed = pack_inputs(x_enc, marks, TINY.pred_len)
    assert packed.shape == (2, *TINY.packed_shape)
    assert (packed[:, TINY.seq_len :, : TINY.n_series] == 0).all()
    xe, me, md = unpack_inputs(packed, TINY)
    torch.testing.assert_close(xe, x_enc)
    torch.testing.assert_close(me, marks[:, : TINY.seq_len])
    torch.testing.assert_close(md, marks[:, TINY.seq_len - TINY.label_len :])
    encoder = SharedAutoformerEncoder(TINY).eval()
    parts = encoder.encode(xe, me, md)
    z = flatten_encoding(parts)
    assert z.shape == (2, TINY.encoding_size)
    for a, b in zip(split_encoding(z, TINY), parts):
        torch.testing.assert_close(a, b)
    with pytest.raises(UsageError, match="per-sample shape"):
        unpack_inputs(packed[:, :-1], TINY)


def test_output_shapes():
    packed = _packed(TINY, 5)
    encoder = SharedAutoformerEncoder(TINY)
    z = encoder(packed)
    assert z.shape == (5, TINY.encoding_size)
    assert AutoformerDecoderHead(TINY, 1)(z).shape == (5, TINY.pred_len)
    assert AutoformerDecoderHead(TINY, [0, 2])(z).shape == (5, TINY.pred_len, 2)
    x_enc, m_enc, m_dec = unpack_inputs(packed, TINY)
    assert Autoformer(TINY)(x_enc, m_enc, m_dec).shape == (5, TINY.pred_len, TINY.n_series)
    # the paper sizes, on a batch of one (shape only)
    paper = AutoformerConfig()
    full = Autoformer(paper).eval()
    with torch.no_grad():
        out = full(*unpack_inputs(_packed(paper, 1), paper))
    assert out.shape == (1, 24, 7)


def test_heads_have_identical_structure():
    shapes = [[(n, tuple(p.shape)) for n, p in AutoformerDecoderHead(TINY, c).named_parameters()]
              for c in range(TINY.n_series)]
    assert all(s == shapes[0] for s in shapes)
    with pytest.raises(UsageError, match="channels"):
        AutoformerDecoderHead(TINY, TINY.n_series)


def test_future_values_are_never_read():
    packed = _packed(TINY, 4)
    model = Autoformer(TINY).eval()
    encoder, head = model.encoder, model.head
    changed = packed.clone()
    changed[:, TINY.seq_len :, : TINY.n_series] = torch.randn(4, TINY.pred_len, TINY.n_series, generator=_gen(9))
    with torch.no_grad():
        torch.testing.assert_close(head(encoder(changed)), head(encoder(packed)), rtol=0, atol=0)
        past = packed.clone()
        past[:, 0, 0] += 1.0
        assert not torch.allclose(head(encoder(past)), head(encoder(packed)))


def _mtl(seed: int, config: AutoformerConfig = TINY) -> MTLModel:
    torch.manual_seed(seed)
    return MTLModel(SharedAutoformerEncoder(config),
                    {f"t{c}": AutoformerDecoderHead(config, c) for c in range(config.n_series)})


def test_deterministic_under_a_seed():
    packed = _packed(TINY, 4)
    a, b = _mtl(7), _mtl(7)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    inputs = dict.fromkeys(a.heads, packed)
    torch.manual_seed(1)
    out_a = a(inputs)  # training mode: dropout draws from the global generator
    torch.manual_seed(1)
    out_b = b(inputs)
    for t in out_a:
        assert torch.equal(out_a[t], out_b[t])
    c = _mtl(8)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_gradients_reach_the_shared_encoder_from_every_head():
    model = _mtl(0)
    packed = _packed(TINY, 4)
    out = model(dict.fromkeys(model.heads, packed))
    shared = model.shared_parameters()
    for t, y in out.items():
        grads = torch.autograd.grad(y.square().mean(), list(shared.values()), retain_graph=True, allow_unused=True)
        missing = [n for n, g in zip(shared, grads) if g is None or not g.abs().sum() > 0]
        assert not missing, (t, missing)
        others = [p for u in model.heads if u != t for p in model.heads[u].parameters()]
        other_grads = torch.autograd.grad(y.sum(), others, retain_graph=True, allow_unused=True)
        assert all(g is None or not g.any() for g in other_grads)


def test_forward_parts_gives_per_task_views():
    """The encoder output is a single tensor, so the trainer can take per-task views (fast per-task gradients)."""
    model = _mtl(0)
    packed = _packed(TINY, 3)
    inputs = dict.fromkeys(model.heads, packed)
    _, parts = model.forward_parts(inputs)
    assert parts is not None and parts.z.shape == (3, TINY.encoding_size)
    model.eval()
    with torch.no_grad():
        plain = model(inputs)
        again, _ = model.forward_parts(inputs)
    for t in plain:
        torch.testing.assert_close(plain[t], again[t])


def test_config_validation():
    with pytest.raises(UsageError, match="divisible"):
        AutoformerConfig(d_model=10, n_heads=3)
    with pytest.raises(UsageError, match="label_len"):
        AutoformerConfig(seq_len=8, label_len=9)
    with pytest.raises(UsageError, match="activation"):
        AutoformerConfig(activation="tanh")
    with pytest.raises(UsageError, match="positive"):
        AutoformerConfig(d_ff=0)
