"""Autoformer (Wu et al., "Autoformer: Decomposition Transformers with Auto-Correlation for Long-Term Series
Forecasting", NeurIPS'21), written for hard parameter sharing: a shared embedding + encoder and one decoder per task.

The blocks follow the paper (Sections 3.1-3.2) and the behaviour of its reference code (``thuml/Autoformer``:
``models/Autoformer.py``, ``layers/AutoCorrelation.py``, ``layers/Autoformer_EncDec.py``, ``layers/Embed.py``) as
summarised in ``shared/reference/implementations.md`` section 7.2; nothing is copied from that code.

- :func:`moving_average` / :class:`SeriesDecomp`: trend = moving average (window ``moving_avg``, stride 1) of the
  series padded by repeating its first and last values, seasonal = series - trend.
- :func:`period_correlation`: ``R(tau) = sum_t Q[(t + tau) mod L] K[t]`` for every delay at once, by FFT
  (``irfft(rfft(Q) * conj(rfft(K)))``), per batch row, head and channel.
- :func:`select_delays` / :func:`aggregate_delays`: the ``top_k = int(factor * ln L)`` delays of the correlation
  averaged over heads and channels, softmax over their correlations, output ``sum_i w_i * roll(V, -tau_i)``. In
  training the delays are the top-k of the **batch-mean** correlation (the same delays for every sample; the weights
  stay per sample); in evaluation every sample picks its own top-k (the reference's ``time_delay_agg_training`` /
  ``time_delay_agg_inference``).
- :class:`AutoCorrelation`: keys and values truncated to the query length ``L``, or zero-padded to it when shorter.
- :class:`AutoCorrelationLayer`: Q/K/V projections to ``n_heads`` heads of ``d_model // n_heads``, output projection.
- :class:`EncoderLayer`: ``x + dropout(AC(x))`` -> decomposition (seasonal kept) -> position-wise feed-forward
  (two bias-free maps ``d_model -> d_ff -> d_model``, activation, dropout) -> decomposition of ``x + y``.
  :class:`Encoder` ends with :class:`MyLayerNorm` (LayerNorm minus its mean over time: ``my_Layernorm``).
- :class:`DecoderLayer`: self-AC -> decomposition -> cross-AC on the encoder output -> decomposition ->
  feed-forward -> decomposition; the three trend parts are summed and projected to ``c_out`` channels by a
  bias-free circular ``Conv1d`` of width 3; :class:`Decoder` accumulates these into the running trend and ends with
  ``MyLayerNorm`` and ``Linear(d_model -> c_out)``.
- :class:`DataEmbeddingWoPos`: circular ``Conv1d(c_in -> d_model, k=3, no bias, Kaiming-normal fan-in leaky-relu
  init)`` value embedding + bias-free linear time-feature embedding, then dropout; no positional embedding.
- Decoder initialisation (:func:`decoder_init`): seasonal input = the seasonal part of the last ``label_len``
  encoder steps followed by ``pred_len`` zeros; trend input = the trend part of the last ``label_len`` steps followed
  by ``pred_len`` copies of the mean of the encoder input; prediction = seasonal + trend over the last ``pred_len``.

**The MTL split** (:class:`SharedAutoformerEncoder`, :class:`AutoformerDecoderHead`). The transfer-gain paper (App.
C.2) "adapt[s] the Autoformer model to maintain a majority of its components common across tasks while assigning a
unique decoder to each task". Shared (the ``encoder`` module of :class:`bench.trainer.MTLModel`): the encoder's
value + time-feature embedding and all encoder layers with their final ``MyLayerNorm``, plus the parameter-free
decomposition that forms the decoder initialisation. Per task (a head): a complete Autoformer decoder, i.e. its own
decoder embedding, decoder layers (self- and cross-Auto-Correlation, feed-forward, trend projections), final norm
and output projection, with ``c_out`` = the task's channel(s). The source is silent on what a task's decoder reads:
here every head embeds the seasonal initialisation of **all** input series (``dec_in = n_series``, as the
multivariate Autoformer does; the papers feed all series as inputs) and accumulates the trend of its own
channel(s) only (the trend path has ``c_out`` channels, so it can only carry the predicted ones).

**Packed input** (one tensor shared by every task, the trainer's shared-inputs layout): shape
``(B, seq_len + pred_len, n_series + n_marks)``; ``[:, :seq_len, :n_series]`` holds the encoder window,
``[:, :, n_series:]`` the time features of all ``seq_len + pred_len`` steps (the decoder reads those of the last
``label_len + pred_len`` steps), and ``[:, seq_len:, :n_series]`` is zero and **never read** (Autoformer's decoder
input is built from the encoder window only; the reference passes future values in ``x_dec`` but does not read
them). See :func:`pack_inputs` / :func:`unpack_inputs`.

**Encoder output** (what every head receives): one flat tensor per sample, the concatenation of the encoder output
``(seq_len, d_model)``, the seasonal and trend initialisations ``(label_len + pred_len, n_series)`` each and the
decoder time features ``(label_len + pred_len, n_marks)``, each flattened row-major (:func:`flatten_encoding` /
:func:`split_encoding`). A single tensor, rather than a tuple, lets the trainer give every head its own view of it
and push all tasks' cotangents through the encoder in one batched backward pass (per-task gradients for TAG-style
signals); the decoder-initialisation part depends on the input only, so it carries no gradient to the parameters.

Choices where the sources are silent or where this code departs from the reference, on purpose:

- the position-wise feed-forward uses bias-free ``nn.Linear`` maps instead of width-1 ``Conv1d`` (the same function
  and the same default initialisation distribution, without two transposes);
- the reference's ``nn.Dropout`` inside ``AutoCorrelation`` is never applied there, so there is none here;
- ``irfft`` is called with ``n = L`` (correct for odd lengths too);
- for an even ``moving_avg`` the padding is ``(k-1)//2`` in front and the rest at the end, so the trend keeps the
  series length (the reference pads ``(k-1)//2`` on both sides and then loses one step; the papers use 25);
- ``top_k`` is at least 1 and at most ``L`` (the reference would ask ``topk`` for 0 delays when ``L = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class AutoformerConfig:
    """Sizes of an Autoformer. The defaults are the paper settings of the task-grouping papers' ETTm1 experiment
    (reference ``run.py`` defaults with the ETTm1 script's ``factor 3`` and ``pred_len 24``)."""

    n_series: int = 7  # enc_in = dec_in: series in the input window
    n_marks: int = 5  # time features per step (freq 't': minute, hour, weekday, day of month, day of year)
    seq_len: int = 96
    label_len: int = 48
    pred_len: int = 24
    d_model: int = 512
    n_heads: int = 8
    e_layers: int = 2
    d_layers: int = 1
    d_ff: int = 2048
    moving_avg: int = 25
    factor: float = 3.0
    dropout: float = 0.05
    activation: str = "gelu"

    def __post_init__(self) -> None:
        positive = ("n_series", "seq_len", "pred_len", "d_model", "n_heads", "e_layers", "d_layers", "d_ff",
                    "moving_avg")
        bad = [f"{k}={getattr(self, k)!r}" for k in positive if not (isinstance(getattr(self, k), int)
                                                                      and getattr(self, k) >= 1)]
        if bad:
            raise UsageError(f"Autoformer sizes must be positive integers: {', '.join(bad)}")
        if not (isinstance(self.n_marks, int) and self.n_marks >= 0):
            raise UsageError(f"n_marks must be a non-negative integer, got {self.n_marks!r}")
        if not (isinstance(self.label_len, int) and 0 <= self.label_len <= self.seq_len):
            raise UsageError(f"label_len must be an integer in [0, seq_len={self.seq_len}], got {self.label_len!r}")
        if self.d_model % self.n_heads:
            raise UsageError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.factor <= 0:
            raise UsageError(f"factor must be positive, got {self.factor!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def dec_len(self) -> int:
        """Length of the decoder input: ``label_len + pred_len``."""
        return self.label_len + self.pred_len

    @property
    def packed_shape(self) -> tuple[int, int]:
        """Per-sample shape of the packed input (see the module docstring)."""
        return (self.seq_len + self.pred_len, self.n_series + self.n_marks)

    @property
    def encoding_size(self) -> int:
        """Per-sample length of the flat encoder output (see the module docstring)."""
        return self.seq_len * self.d_model + self.dec_len * (2 * self.n_series + self.n_marks)


# ----------------------------------------------------------------------------------------- series decomposition


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The trend of ``x`` (``(B, L, C)``): a stride-1 moving average over time of the series padded by repeating its
    first value ``(k-1)//2`` times in front and its last value for the rest at the end (same length ``L``)."""
    if kernel_size <= 1:
        return x
    front = (kernel_size - 1) // 2
    back = kernel_size - 1 - front
    padded = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)


class SeriesDecomp(nn.Module):
    """``x -> (seasonal, trend)`` with ``trend = moving_average(x)`` and ``seasonal = x - trend`` (paper eq. 1)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trend = moving_average(x, self.kernel_size)
        return x - trend, trend


# ---------------------------------------------------------------------------------------------- auto-correlation


def period_correlation(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Circular cross-correlation along the last axis: ``R[..., tau] = sum_t Q[..., (t + tau) mod L] K[..., t]``,
    computed for all delays by FFT (Wiener-Khinchin, paper eq. 8)."""
    length = queries.shape[-1]
    spectrum = torch.fft.rfft(queries, dim=-1) * torch.conj(torch.fft.rfft(keys, dim=-1))
    return torch.fft.irfft(spectrum, n=length, dim=-1)


def n_delays(length: int, factor: float) -> int:
    """``top_k = int(factor * ln L)`` (paper: ``k = floor(c * log L)``), kept in ``[1, L]``."""
    return min(length, max(1, int(factor * math.log(length)))) if length > 0 else 0


def select_delays(corr: torch.Tensor, top_k: int, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The delays and their softmax weights, both ``(B, top_k)``, from ``corr`` ``(B, H, E, L)``.

    The score of a delay is its correlation averaged over heads and channels. ``shared`` (training): the top-k of the
    batch-mean score, the same for every sample (``delays[b] == delays[0]``), weighted by each sample's own scores
    at those delays. Otherwise (inference): each sample's own top-k.
    """
    score = corr.mean(dim=(1, 2))
    if shared:
        delays = score.mean(dim=0).topk(top_k).indices.unsqueeze(0).expand(score.shape[0], -1)
        weights = score.gather(1, delays)
    else:
        weights, delays = score.topk(top_k, dim=-1)
    return delays, torch.softmax(weights, dim=-1)


def aggregate_delays(values: torch.Tensor, delays: torch.Tensor, weights: torch.Tensor,
                     shared: bool) -> torch.Tensor:
    """Time-delay aggregation ``out[b] = sum_i weights[b, i] * roll(values[b], -delays[b, i], -1)``.

    ``values`` is ``(B, H, D, L)``; ``shared`` says the delays are the same for every row (training), which allows
    one ``index_select`` per delay instead of a per-sample ``gather``.
    """
    length = values.shape[-1]
    positions = torch.arange(length, device=values.device)
    out = None
    for i in range(delays.shape[1]):
        if shared:
            pattern = values.index_select(-1, (positions + delays[0, i]) % length)
        else:
            index = (positions.unsqueeze(0) + delays[:, i : i + 1]) % length
            pattern = values.gather(-1, index[:, None, None, :].expand_as(values))
        term = pattern * weights[:, i].view(-1, 1, 1, 1)
        out = term if out is None else out + term
    return out if out is not None else torch.zeros_like(values)


class AutoCorrelation(nn.Module):
    """The Auto-Correlation mechanism (paper Section 3.2): period-based dependencies by FFT, then time-delay
    aggregation. Batch-mean delays in training mode, per-sample delays in evaluation mode."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``queries`` ``(B, L, H, E)``, ``keys`` ``(B, S, H, E)``, ``values`` ``(B, S, H, D)`` -> ``(B, L, H, D)``."""
        length, source = queries.shape[1], keys.shape[1]
        if length > source:  # zero-pad keys and values to the query length
            keys = F.pad(keys, (0, 0, 0, 0, 0, length - source))
            values = F.pad(values, (0, 0, 0, 0, 0, length - source))
        else:
            keys, values = keys[:, :length], values[:, :length]
        corr = period_correlation(queries.permute(0, 2, 3, 1), keys.permute(0, 2, 3, 1))
        shared = self.training
        delays, weights = select_delays(corr, n_delays(length, self.factor), shared)
        out = aggregate_delays(values.permute(0, 2, 3, 1), delays, weights, shared)
        return out.permute(0, 3, 1, 2)


class AutoCorrelationLayer(nn.Module):
    """Multi-head wrapper: linear Q/K/V projections to ``n_heads`` heads of ``d_model // n_heads``, the
    Auto-Correlation per head, and a linear output projection."""

    def __init__(self, d_model: int, n_heads: int, factor: float) -> None:
        super().__init__()
        width = (d_model // n_heads) * n_heads
        self.n_heads = n_heads
        self.correlation = AutoCorrelation(factor)
        self.query_projection = nn.Linear(d_model, width)
        self.key_projection = nn.Linear(d_model, width)
        self.value_projection = nn.Linear(d_model, width)
        self.out_projection = nn.Linear(width, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        batch, length, _ = queries.shape
        source, heads = keys.shape[1], self.n_heads
        q = self.query_projection(queries).view(batch, length, heads, -1)
        k = self.key_projection(keys).view(batch, source, heads, -1)
        v = self.value_projection(values).view(batch, source, heads, -1)
        return self.out_projection(self.correlation(q, k, v).reshape(batch, length, -1))


# ------------------------------------------------------------------------------------------ encoder and decoder


class MyLayerNorm(nn.Module):
    """LayerNorm over features, minus its mean over time (the reference's ``my_Layernorm``, designed for the
    seasonal part)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.norm(x)
        return x_hat - x_hat.mean(dim=1, keepdim=True)


class FeedForward(nn.Module):
    """``dropout(W2 dropout(act(W1 x)))`` with bias-free ``W1: d_model -> d_ff`` and ``W2: d_ff -> d_model``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.dropout(self.activation(self.up(x)))))


class EncoderLayer(nn.Module):
    """Auto-Correlation and feed-forward blocks, each followed by a series decomposition that keeps the seasonal
    part (paper eq. 3)."""

    def __init__(self, config: AutoformerConfig) -> None:
        super().__init__()
        self.attention = AutoCorrelationLayer(config.d_model, config.n_heads, config.factor)
        self.feed_forward = FeedForward(config.d_model, config.d_ff, config.dropout, config.activation)
        self.decomp1 = SeriesDecomp(config.moving_avg)
        self.decomp2 = SeriesDecomp(config.moving_avg)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.decomp1(x + self.dropout(self.attention(x, x, x)))
        x, _ = self.decomp2(x + self.feed_forward(x))
        return x


class Encoder(nn.Module):
    """``e_layers`` encoder layers and a final :class:`MyLayerNorm`."""

    def __init__(self, config: AutoformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.e_layers))
        self.norm = MyLayerNorm(config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Self-AC, cross-AC and feed-forward blocks, each followed by a decomposition; returns the seasonal part and
    the projected sum of the three trend parts (paper eq. 4)."""

    def __init__(self, config: AutoformerConfig, c_out: int) -> None:
        super().__init__()
        self.self_attention = AutoCorrelationLayer(config.d_model, config.n_heads, config.factor)
        self.cross_attention = AutoCorrelationLayer(config.d_model, config.n_heads, config.factor)
        self.feed_forward = FeedForward(config.d_model, config.d_ff, config.dropout, config.activation)
        self.decomp1 = SeriesDecomp(config.moving_avg)
        self.decomp2 = SeriesDecomp(config.moving_avg)
        self.decomp3 = SeriesDecomp(config.moving_avg)
        self.dropout = nn.Dropout(config.dropout)
        self.trend_projection = nn.Conv1d(config.d_model, c_out, kernel_size=3, padding=1, padding_mode="circular",
                                          bias=False)

    def forward(self, x: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, trend1 = self.decomp1(x + self.dropout(self.self_attention(x, x, x)))
        x, trend2 = self.decomp2(x + self.dropout(self.cross_attention(x, cross, cross)))
        x, trend3 = self.decomp3(x + self.feed_forward(x))
        trend = self.trend_projection((trend1 + trend2 + trend3).transpose(1, 2)).transpose(1, 2)
        return x, trend


class Decoder(nn.Module):
    """``d_layers`` decoder layers accumulating the trend, then :class:`MyLayerNorm` and ``Linear(d_model, c_out)``
    on the seasonal part."""

    def __init__(self, config: AutoformerConfig, c_out: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config, c_out) for _ in range(config.d_layers))
        self.norm = MyLayerNorm(config.d_model)
        self.projection = nn.Linear(config.d_model, c_out)

    def forward(self, x: torch.Tensor, cross: torch.Tensor, trend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x, residual_trend = layer(x, cross)
            trend = trend + residual_trend
        return self.projection(self.norm(x)), trend


# ---------------------------------------------------------------------------------------------------- embedding


class TokenEmbedding(nn.Module):
    """Value embedding: circular ``Conv1d(c_in -> d_model, k=3)`` without bias, Kaiming-normal (fan-in, leaky
    ReLU) initialisation."""

    def __init__(self, c_in: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class DataEmbeddingWoPos(nn.Module):
    """``dropout(TokenEmbedding(x) + Linear(x_mark))`` (``embed='timeF'``, no positional embedding)."""

    def __init__(self, c_in: int, n_marks: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.value_embedding = TokenEmbedding(c_in, d_model)
        self.temporal_embedding = nn.Linear(n_marks, d_model, bias=False) if n_marks else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor) -> torch.Tensor:
        out = self.value_embedding(x)
        if self.temporal_embedding is not None:
            out = out + self.temporal_embedding(x_mark)
        return self.dropout(out)


# ------------------------------------------------------------------------------------- packing and the MTL split


def pack_inputs(x_enc: torch.Tensor, marks: torch.Tensor, pred_len: int) -> torch.Tensor:
    """The packed input ``(B, seq_len + pred_len, C + M)`` from the encoder window ``(B, seq_len, C)`` and the time
    features of all ``seq_len + pred_len`` steps ``(B, seq_len + pred_len, M)``; future values are zero."""
    batch, seq_len, _ = x_enc.shape
    if marks.shape[:2] != (batch, seq_len + pred_len):
        raise UsageError(f"marks must have shape (B, seq_len + pred_len, M) = ({batch}, {seq_len + pred_len}, M), "
                         f"got {tuple(marks.shape)}")
    values = torch.cat([x_enc, x_enc.new_zeros(batch, pred_len, x_enc.shape[2])], dim=1)
    return torch.cat([values, marks.to(x_enc.dtype)], dim=2)


def unpack_inputs(packed: torch.Tensor, config: AutoformerConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_enc, x_mark_enc, x_mark_dec)`` from a packed input; the future value rows are not touched."""
    if tuple(packed.shape[1:]) != config.packed_shape:
        raise UsageError(f"packed input must have per-sample shape {config.packed_shape} "
                         f"(seq_len + pred_len, n_series + n_marks), got {tuple(packed.shape[1:])}")
    seq_len, n = config.seq_len, config.n_series
    return packed[:, :seq_len, :n], packed[:, :seq_len, n:], packed[:, seq_len - config.label_len :, n:]


class EncoderOutput(NamedTuple):
    """What a decoder needs: the encoder output and the decoder's inputs (see the module docstring)."""

    enc_out: torch.Tensor  # (B, seq_len, d_model)
    seasonal_init: torch.Tensor  # (B, label_len + pred_len, n_series)
    trend_init: torch.Tensor  # (B, label_len + pred_len, n_series)
    dec_marks: torch.Tensor  # (B, label_len + pred_len, n_marks)


def flatten_encoding(parts: EncoderOutput) -> torch.Tensor:
    """The flat per-sample encoding ``(B, config.encoding_size)`` (row-major parts, in :class:`EncoderOutput`
    order)."""
    batch = parts.enc_out.shape[0]
    return torch.cat([p.reshape(batch, -1) for p in parts], dim=1)


def split_encoding(z: torch.Tensor, config: AutoformerConfig) -> EncoderOutput:
    """The inverse of :func:`flatten_encoding` (views of ``z``)."""
    if z.ndim != 2 or z.shape[1] != config.encoding_size:
        raise UsageError(f"encoding must have shape (B, {config.encoding_size}), got {tuple(z.shape)}")
    batch, d = z.shape[0], config.dec_len
    shapes = [(config.seq_len, config.d_model), (d, config.n_series), (d, config.n_series), (d, config.n_marks)]
    sizes = [a * b for a, b in shapes]
    return EncoderOutput(*(p.reshape(batch, *s) for p, s in zip(z.split(sizes, dim=1), shapes)))


def decoder_init(x_enc: torch.Tensor, decomp: SeriesDecomp, label_len: int,
                 pred_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Autoformer's decoder inputs ``(seasonal_init, trend_init)``, each ``(B, label_len + pred_len, C)``."""
    batch, seq_len, channels = x_enc.shape
    seasonal, trend = decomp(x_enc)
    start = seq_len - label_len  # not ``-label_len``: that would take the whole window when label_len == 0
    mean = x_enc.mean(dim=1, keepdim=True).expand(batch, pred_len, channels)
    seasonal_init = torch.cat([seasonal[:, start:], x_enc.new_zeros(batch, pred_len, channels)], dim=1)
    trend_init = torch.cat([trend[:, start:], mean], dim=1)
    return seasonal_init, trend_init


class SharedAutoformerEncoder(nn.Module):
    """The shared part: packed input -> flat encoding (encoder output + decoder initialisation + decoder marks).

    Parameters: the encoder embedding (:class:`DataEmbeddingWoPos` over ``n_series`` values and ``n_marks`` time
    features) and the :class:`Encoder`. The decomposition of the decoder initialisation has no parameters.
    """

    def __init__(self, config: AutoformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decomp = SeriesDecomp(config.moving_avg)
        self.embedding = DataEmbeddingWoPos(config.n_series, config.n_marks, config.d_model, config.dropout)
        self.encoder = Encoder(config)

    def encode(self, x_enc: torch.Tensor, x_mark_enc: torch.Tensor, x_mark_dec: torch.Tensor) -> EncoderOutput:
        c = self.config
        seasonal_init, trend_init = decoder_init(x_enc, self.decomp, c.label_len, c.pred_len)
        enc_out = self.encoder(self.embedding(x_enc, x_mark_enc))
        return EncoderOutput(enc_out, seasonal_init, trend_init, x_mark_dec)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return flatten_encoding(self.encode(*unpack_inputs(packed, self.config)))


class AutoformerDecoderHead(nn.Module):
    """One task's decoder: flat encoding -> forecast of its channel(s) over the ``pred_len`` future steps.

    ``channels``: an int (a univariate task: output ``(B, pred_len)``) or a sequence of channel indices (output
    ``(B, pred_len, len(channels))``). The decoder embeds the seasonal initialisation of all ``n_series`` series and
    accumulates the trend of ``channels`` only. Heads for different channels have identical structure; only the
    non-parameter ``channels`` attribute differs.
    """

    def __init__(self, config: AutoformerConfig, channels: int | Sequence[int]) -> None:
        super().__init__()
        self.univariate = isinstance(channels, int)
        chosen = [channels] if self.univariate else [int(c) for c in channels]
        if not chosen or any(not 0 <= c < config.n_series for c in chosen):
            raise UsageError(f"channels must be indices in [0, {config.n_series}), got {channels!r}")
        self.config = config
        self.channels = tuple(chosen)
        self.embedding = DataEmbeddingWoPos(config.n_series, config.n_marks, config.d_model, config.dropout)
        self.decoder = Decoder(config, len(chosen))

    def decode(self, parts: EncoderOutput) -> torch.Tensor:
        """``(B, pred_len, len(channels))`` from the encoder's parts."""
        if len(self.channels) == 1:
            c = self.channels[0]
            trend_init = parts.trend_init[..., c : c + 1]
        else:
            trend_init = parts.trend_init[..., list(self.channels)]
        x = self.embedding(parts.seasonal_init, parts.dec_marks)
        seasonal, trend = self.decoder(x, parts.enc_out, trend_init)
        return (seasonal + trend)[:, -self.config.pred_len :]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decode(split_encoding(z, self.config))
        return out[..., 0] if self.univariate else out


class Autoformer(nn.Module):
    """The whole (single-task, multivariate) Autoformer from the same parts: the shared encoder and one decoder for
    all ``n_series`` channels. ``forward(x_enc, x_mark_enc, x_mark_dec) -> (B, pred_len, n_series)``."""

    def __init__(self, config: AutoformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SharedAutoformerEncoder(config)
        self.head = AutoformerDecoderHead(config, list(range(config.n_series)))

    def forward(self, x_enc: torch.Tensor, x_mark_enc: torch.Tensor, x_mark_dec: torch.Tensor) -> torch.Tensor:
        return self.head.decode(self.encoder.encode(x_enc, x_mark_enc, x_mark_dec))


__all__ = [
    "AutoCorrelation",
    "AutoCorrelationLayer",
    "Autoformer",
    "AutoformerConfig",
    "AutoformerDecoderHead",
    "DataEmbeddingWoPos",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "EncoderOutput",
    "MyLayerNorm",
    "SeriesDecomp",
    "SharedAutoformerEncoder",
    "aggregate_delays",
    "decoder_init",
    "flatten_encoding",
    "moving_average",
    "n_delays",
    "pack_inputs",
    "period_correlation",
    "select_delays",
    "split_encoding",
    "unpack_inputs",
]
