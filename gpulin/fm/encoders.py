"""Composable token-embedding parts: gene encoders, expression encoders, positional encodings.

A token embedding is ``gene_encoder(ids) + expression_encoder(values)`` (+ positional encoding),
so an encoder is configured by its (gene, expression) choice, as in the 2025 encoding benchmark
(pipeline.md section 7):

gene encoders
    :class:`LearnedGeneEncoder` (trainable ``nn.Embedding``, optional LayerNorm) and
    :class:`FrozenTableGeneEncoder` (frozen external table, e.g. ESM-2 protein embeddings, through
    a 2-layer MLP, or through Linear-GELU-LayerNorm as in UCE).
expression encoders
    :class:`RawValueEncoder` (MLP of log1p value; ``continuous`` variant for scGPT's binned
    values), :class:`HardBinEncoder` (lookup of per-cell quantile bins),
    :class:`LogBinEncoder` (lookup of ``min(floor(log2(x + 1)), 10)``),
    :class:`SoftBinEncoder` (softmax over 20 bin embeddings from a 2-layer MLP of the value), and
    rank order (no expression encoder: the Geneformer order carries the expression and a learned
    positional embedding is added).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configs import FMConfig


# --------------------------------------------------------------------------------------------
# gene encoders
# --------------------------------------------------------------------------------------------
class LearnedGeneEncoder(nn.Module):
    """Trainable gene embedding table.

    Parameters
    ----------
    vocab_size, d_model : int
        Table shape.
    layernorm : bool
        LayerNorm after the lookup (scGPT's ``GeneEncoder``).
    """

    def __init__(self, vocab_size: int, d_model: int, layernorm: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.norm = nn.LayerNorm(d_model) if layernorm else nn.Identity()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(ids))


class FrozenTableGeneEncoder(nn.Module):
    """Frozen external gene table (e.g. ESM-2) projected to the model width.

    Parameters
    ----------
    vocab_size, table_dim : int
        Shape of the frozen table (a parameter with ``requires_grad=False``).
    d_model : int
        Output width.
    style : {"mlp", "linear"}
        ``mlp``: Linear(table_dim, hidden) - ReLU - LayerNorm - Linear(hidden, d_model)
        (TranscriptFormer's ``PretrainedEmbeddings``); ``linear``: Linear(table_dim, d_model) -
        GELU - LayerNorm (UCE's encoder).
    hidden : int
        MLP hidden width (0: ``d_model``).
    """

    def __init__(self, vocab_size: int, table_dim: int, d_model: int, style: str = "mlp", hidden: int = 0) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(vocab_size, table_dim), requires_grad=False)
        if style == "mlp":
            h = hidden or d_model
            self.proj = nn.Sequential(nn.Linear(table_dim, h), nn.ReLU(), nn.LayerNorm(h), nn.Linear(h, d_model))
        elif style == "linear":
            self.proj = nn.Sequential(nn.Linear(table_dim, d_model), nn.GELU(), nn.LayerNorm(d_model))
        else:
            raise ValueError(f"Unknown frozen-table style {style!r}.")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(F.embedding(ids, self.table))


# --------------------------------------------------------------------------------------------
# expression encoders
# --------------------------------------------------------------------------------------------
class RawValueEncoder(nn.Module):
    """MLP of a scalar value: Linear(1, d) - ReLU - Linear(d, d) - LayerNorm.

    Parameters
    ----------
    d_model : int
        Output width.
    log1p : bool
        Encode ``log1p(value)`` (raw-count encoder); False encodes the value itself clamped at
        ``max_value`` (scGPT's ``ContinuousValueEncoder`` on value bins).
    max_value : float
        Clamp for the continuous variant.
    """

    def __init__(self, d_model: int, log1p: bool = True, max_value: float = 512.0) -> None:
        super().__init__()
        self.log1p = log1p
        self.max_value = max_value
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(values.clamp(min=0)) if self.log1p else values.clamp(max=self.max_value)
        x = F.relu(self.linear1(x.unsqueeze(-1).to(self.linear1.weight.dtype)))
        return self.norm(self.linear2(x))


class HardBinEncoder(nn.Module):
    """Lookup of a precomputed bin index (per-cell quantile bins from the tokenizer; 0 = zero).

    Parameters
    ----------
    n_bins : int
        Rows of the lookup table (bins including the zero bin, e.g. 51).
    d_model : int
        Output width.
    """

    def __init__(self, n_bins: int, d_model: int) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.embedding = nn.Embedding(n_bins, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.embedding(values.long().clamp(0, self.n_bins - 1))


class LogBinEncoder(nn.Module):
    """Lookup of ``min(floor(log2(count + 1)), max_bin)`` (11 rows for ``max_bin=10``)."""

    def __init__(self, d_model: int, max_bin: int = 10) -> None:
        super().__init__()
        self.max_bin = max_bin
        self.embedding = nn.Embedding(max_bin + 1, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        idx = torch.floor(torch.log2(values.float().clamp(min=0) + 1)).long().clamp(0, self.max_bin)
        return self.embedding(idx)


class SoftBinEncoder(nn.Module):
    """Soft binning: softmax weights over ``n_bins`` bin embeddings from a 2-layer MLP of log1p(x).

    ``w = softmax(Linear(h, n_bins)(LeakyReLU(Linear(1, h)(log1p x))))``, output ``w @ E`` with
    ``E`` the ``n_bins x d_model`` bin embeddings.
    """

    def __init__(self, d_model: int, n_bins: int = 20, hidden: int = 0) -> None:
        super().__init__()
        h = hidden or n_bins
        self.linear1 = nn.Linear(1, h)
        self.linear2 = nn.Linear(h, n_bins)
        self.bins = nn.Embedding(n_bins, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(values.clamp(min=0)).unsqueeze(-1).to(self.linear1.weight.dtype)
        w = torch.softmax(self.linear2(F.leaky_relu(self.linear1(x))), dim=-1)
        return w @ self.bins.weight.to(w.dtype)


# --------------------------------------------------------------------------------------------
# positional encodings
# --------------------------------------------------------------------------------------------
class LearnedPositional(nn.Module):
    """Learned absolute positions (BERT / Geneformer, rank-order encoders)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.embedding.weight[:seq_len]


class SinusoidalPositional(nn.Module):
    """Fixed sinusoidal positions (UCE); a non-persistent buffer filled by :meth:`reset_buffers`."""

    pe: torch.Tensor  # (max_len, d_model), registered as a buffer

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len, self.d_model = max_len, d_model
        self.register_buffer("pe", torch.empty(max_len, d_model), persistent=False)

    def reset_buffers(self) -> None:
        pos = torch.arange(self.max_len, dtype=torch.float32, device=self.pe.device)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32, device=self.pe.device)
                        * (-math.log(10000.0) / self.d_model))
        self.pe[:, 0::2] = torch.sin(pos * div)
        self.pe[:, 1::2] = torch.cos(pos * div)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.pe[:seq_len]


# --------------------------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------------------------
def make_gene_encoder(cfg: FMConfig) -> nn.Module:
    """Gene encoder of ``cfg`` (``learned``, ``frozen_mlp`` or ``frozen_linear``)."""
    if cfg.gene_encoder == "learned":
        return LearnedGeneEncoder(cfg.vocab_size, cfg.d_model, layernorm=cfg.gene_layernorm)
    if cfg.gene_encoder in ("frozen_mlp", "frozen_linear"):
        return FrozenTableGeneEncoder(
            cfg.vocab_size, cfg.gene_table_dim, cfg.d_model,
            style="mlp" if cfg.gene_encoder == "frozen_mlp" else "linear", hidden=cfg.gene_mlp_hidden,
        )
    raise ValueError(f"Unknown gene encoder {cfg.gene_encoder!r}.")


def make_expression_encoder(cfg: FMConfig) -> nn.Module | None:
    """Expression encoder of ``cfg``; None for ``none`` (rank order or no value input)."""
    kind = cfg.expression_encoder
    if kind == "none":
        return None
    if kind == "raw":
        return RawValueEncoder(cfg.d_model, log1p=True)
    if kind == "continuous":
        return RawValueEncoder(cfg.d_model, log1p=False)
    if kind == "hard_bin":
        return HardBinEncoder(cfg.n_value_bins, cfg.d_model)
    if kind == "log_bin":
        return LogBinEncoder(cfg.d_model)
    if kind == "soft_bin":
        return SoftBinEncoder(cfg.d_model, n_bins=cfg.n_value_bins)
    raise ValueError(f"Unknown expression encoder {kind!r}.")


def make_positional(cfg: FMConfig) -> nn.Module | None:
    """Positional encoding of ``cfg``; None for ``none``."""
    if cfg.positional == "learned":
        return LearnedPositional(cfg.max_tokens, cfg.d_model)
    if cfg.positional == "sinusoidal":
        return SinusoidalPositional(cfg.max_tokens, cfg.d_model)
    return None
