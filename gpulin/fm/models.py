"""Transformer encoders of FM shape built from an :class:`~gpulin.fm.configs.FMConfig`.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`. Padding is a boolean key
mask (omitted when a batch has no padding, so the fused flash kernel can run); TranscriptFormer's
count-biased causal attention passes an additive float mask ``causal + log1p(count of the key)``
with padding keys at ``-inf``. Weights are random (seeded), which gives the real inference time.

Models are built on the ``meta`` device and materialised with :meth:`torch.nn.Module.to_empty`,
so :func:`count_parameters` never allocates and building a large model skips PyTorch's slow
default initialisation.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .configs import FMConfig, get_config
from .encoders import (
    FrozenTableGeneEncoder,
    SinusoidalPositional,
    make_expression_encoder,
    make_gene_encoder,
    make_positional,
)

_START_ID = 1  # TranscriptFormer [START]


def _compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype matmuls run in on ``device`` (the autocast dtype when autocast is on)."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4: CUDA-only autocast queries
        if device.type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return torch.float32


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and SDPA."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(o.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Transformer block (attention + FFN), pre- or post-LayerNorm."""

    def __init__(self, cfg: FMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm_first = cfg.norm_first
        self.normed_residual = cfg.normed_residual
        self.attn = SelfAttention(d, cfg.n_heads, bias=cfg.attn_bias)
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.linear1 = nn.Linear(d, cfg.d_ffn, bias=cfg.ffn_bias)
        self.linear2 = nn.Linear(cfg.d_ffn, d, bias=cfg.ffn_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.act(self.linear1(x)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_first and self.normed_residual:  # TranscriptFormer: the norms replace the stream
            x = self.norm1(x)
            x = self.attn(x, attn_mask) + x
            x = self.norm2(x)
            return self._ffn(x) + x
        if self.norm_first:
            x = x + self.attn(self.norm1(x), attn_mask)
            return x + self._ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x, attn_mask))
        return self.norm2(x + self._ffn(x))


def _full_block(n_in: int, n_out: int) -> nn.Sequential:
    """UCE's ``full_block``: Linear - LayerNorm - GELU."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU())


def _training_heads(cfg: FMConfig) -> nn.Module | None:
    """Heads of the published checkpoint that embedding never runs (built only for counting)."""
    d, V = cfg.d_model, cfg.vocab_size
    if cfg.training_heads == "bert_mlm":
        # BertForMaskedLM: transform (dense + LayerNorm) and decoder bias; decoder weight tied
        heads = nn.Module()
        heads.dense = nn.Linear(d, d)
        heads.norm = nn.LayerNorm(d)
        heads.decoder_bias = nn.Parameter(torch.empty(V))
        return heads
    if cfg.training_heads == "scgpt":
        heads = nn.Module()
        heads.expr_decoder = nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1))
        heads.mvc_query = nn.Linear(d, d)
        heads.mvc_w = nn.Linear(d, d, bias=False)
        return heads
    if cfg.training_heads == "transcriptformer":
        heads = nn.Module()
        h = cfg.gene_head_hidden or d
        heads.gene_id = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.LayerNorm(h), nn.Linear(h, V))
        heads.count = nn.Sequential(nn.Linear(2 * d, d // 2), nn.ReLU(), nn.LayerNorm(d // 2), nn.Linear(d // 2, 1))
        heads.count_gene_bias = nn.Embedding(V, 1)
        return heads
    if cfg.training_heads == "uce":
        out = cfg.output_dim or d
        heads = nn.Module()
        heads.binary_decoder = nn.Sequential(
            _full_block(out + out, 2048), _full_block(2048, 512), _full_block(512, 128), nn.Linear(128, 1))
        heads.gene_embedding_layer = nn.Sequential(nn.Linear(cfg.gene_table_dim, out), nn.GELU(), nn.LayerNorm(out))
        return heads
    return None


class FMEncoder(nn.Module):
    """An FM-shaped cell encoder.

    Parameters
    ----------
    cfg : FMConfig
        Architecture.
    training_heads : bool
        Also build the published checkpoint's training-only heads (only for parameter counting).

    Notes
    -----
    ``forward(ids, lengths, values)`` returns the cell embeddings, shape
    ``(batch, cfg.embedding_dim)``.
    """

    def __init__(self, cfg: FMConfig, training_heads: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.gene_encoder = make_gene_encoder(cfg)
        self.expression_encoder = make_expression_encoder(cfg)
        self.positional = make_positional(cfg)
        self.token_type = nn.Embedding(2, d) if cfg.token_type else None
        self.embed_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.embed_layernorm else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.final_norm else None
        self.output_head: nn.Sequential | None
        if cfg.output_head == "uce_decoder":
            out = cfg.output_dim or d
            self.output_head = nn.Sequential(
                _full_block(d, 1024), _full_block(1024, out), _full_block(out, out), nn.Linear(out, out))
        else:
            self.output_head = None
        self.training_heads = _training_heads(cfg) if training_heads else None

    # ---- embedding -----------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings ``(B, T, d_model)`` before the first block."""
        cfg = self.cfg
        x = self.gene_encoder(ids)
        if self.expression_encoder is not None:
            if values is None:
                raise ValueError(f"{cfg.name} needs token values.")
            x = x + self.expression_encoder(values)
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        if isinstance(self.positional, nn.Module) and not isinstance(self.positional, SinusoidalPositional):
            x = x + self.positional(ids.shape[1])
        if cfg.embed_scale:
            x = x * math.sqrt(cfg.d_model)
        if isinstance(self.positional, SinusoidalPositional):
            x = x + self.positional(ids.shape[1])
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return x

    def _masks(self, ids: torch.Tensor, lengths: torch.Tensor, counts: torch.Tensor | None):
        """Attention mask for SDPA and the boolean mask of positions to pool over."""
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device)
        valid = pos[None, :] < lengths.clamp(min=1)[:, None]  # (B, T); key 0 always visible
        if self.cfg.attention == "count_causal":
            assert counts is not None, "count-biased attention needs the counts"
            causal = pos[None, :] <= pos[:, None]  # (T_q, T_k)
            bias = torch.log1p(counts.float())  # (B, T) per key
            allowed = causal[None, :, :] & valid[:, None, :]
            mask = bias.to(_compute_dtype(ids.device))[:, None, :].expand(B, T, T)
            return mask.masked_fill(~allowed, float("-inf"))[:, None], valid
        if bool(valid.all()):
            return None, valid
        return valid[:, None, None, :], valid

    def forward(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        values: torch.Tensor | None = None,
        hidden_layer: int | None = None,
    ) -> torch.Tensor:
        """Cell embeddings.

        Parameters
        ----------
        ids : LongTensor (B, T)
            Token ids, 0 = padding.
        lengths : LongTensor (B,)
            Real tokens per cell.
        values : Tensor (B, T), optional
            Token values (expression encoders; TranscriptFormer counts).
        hidden_layer : int, optional
            Pool the output of this block (Python indexing over the blocks, e.g. -2 for the
            second to last; only the blocks up to it run). Default: the last block (and the
            final LayerNorm when the model has one).

        Returns
        -------
        Tensor (B, embedding_dim)
        """
        cfg = self.cfg
        counts = None
        if cfg.attention == "count_causal":
            # TranscriptFormer: input is right-shifted behind [START] (count 1); lengths grow by 1,
            # so a cell filling the whole context loses its last gene (the time is the same: every
            # cell is padded to the full context)
            assert values is not None, "TranscriptFormer's tokens carry counts"
            ids = torch.cat([torch.full_like(ids[:, :1], _START_ID), ids[:, :-1]], dim=1)
            counts = torch.cat([torch.ones_like(values[:, :1]), values[:, :-1]], dim=1)
            lengths = (lengths + 1).clamp(max=ids.shape[1])
            x = self.embed_tokens(ids, None)
        else:
            x = self.embed_tokens(ids, values)
        attn_mask, valid = self._masks(ids, lengths, counts)
        n_run = len(self.blocks) if hidden_layer is None else range(len(self.blocks))[hidden_layer] + 1
        for block in self.blocks[:n_run]:
            x = block(x, attn_mask)
        if self.final_norm is not None and n_run == len(self.blocks):
            x = self.final_norm(x)
        if self.output_head is not None and cfg.pooling == "cls":
            # as the published UCE code: the decoder runs on every token and the CLS row is kept
            return F.normalize(self.output_head(x)[:, 0].float(), dim=-1)
        if cfg.pooling == "cls":
            pooled = x[:, 0]
        else:
            w = valid.to(x.dtype)[..., None]
            # mean_context: TranscriptFormer's mean_embeddings(include_masked=True), the sum over
            # the cell's tokens divided by the context length (every cell padded to it)
            pooled = (x * w).sum(1) / (x.shape[1] if cfg.pooling == "mean_context" else w.sum(1))
        if self.output_head is not None:
            pooled = F.normalize(self.output_head(pooled).float(), dim=-1)
        return pooled


# ---- building -----------------------------------------------------------------------------
@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random initialisation from a seeded generator on the model's device.

    Linear and embedding weights ~ N(0, 0.02), frozen external tables ~ N(0, 1), biases 0,
    LayerNorm (1, 0); fixed buffers (sinusoidal positions) are recomputed.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.02, generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(0.0, 0.02, generator=gen)
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.fill_(0.0)
        elif isinstance(m, FrozenTableGeneEncoder):
            m.table.normal_(0.0, 1.0, generator=gen)
        elif isinstance(m, SinusoidalPositional):
            m.reset_buffers()
        for name, p in m.named_parameters(recurse=False):
            if name == "decoder_bias":
                p.zero_()
    return model


def build_model(
    cfg: FMConfig | str,
    device: str | torch.device = "cpu",
    seed: int = 0,
    training_heads: bool = False,
) -> FMEncoder:
    """Build a random-weight encoder in eval mode.

    Parameters
    ----------
    cfg : FMConfig or str
        Configuration or registry name.
    device : str or torch.device
        Where to allocate (``"meta"`` allocates nothing).
    seed : int
        Seed of the weight initialisation.
    training_heads : bool
        Also build the training-only heads of the published checkpoint.

    Returns
    -------
    FMEncoder
    """
    cfg = get_config(cfg)
    with torch.device("meta"):
        model = FMEncoder(cfg, training_heads=training_heads)
    if torch.device(device).type != "meta":
        model = model.to_empty(device=device)
        init_weights(model, seed)
    return model.eval()


@functools.lru_cache(maxsize=64)
def _counts(cfg: FMConfig) -> tuple[int, int]:
    model = build_model(cfg, device="meta", training_heads=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def count_parameters(model_name: str | FMConfig) -> dict[str, int]:
    """Trainable and frozen parameters of the published checkpoint's modules, without allocating.

    The model (with its training-only heads) is built on the ``meta`` device; see
    :mod:`gpulin.fm.configs` for what is counted per model.

    Parameters
    ----------
    model_name : str or FMConfig

    Returns
    -------
    dict
        ``{"trainable": int, "frozen": int}``; frozen = external embedding tables (ESM-2).
    """
    trainable, frozen = _counts(get_config(model_name))
    return {"trainable": trainable, "frozen": frozen}


@functools.lru_cache(maxsize=64)
def matmul_params_per_token(cfg: FMConfig) -> int:
    """Weights of the per-token matrix multiplications (gene/value MLPs, the blocks, and an output
    head that runs on every token, as UCE's decoder does)."""
    model = build_model(cfg, device="meta")
    total = 0
    head_per_token = cfg.pooling == "cls"
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (head_per_token or not name.startswith("output_head")):
            total += m.weight.numel()
    bins = getattr(model.expression_encoder, "bins", None)
    if isinstance(bins, nn.Embedding):
        total += bins.weight.numel()
    return total


def forward_flops(cfg: FMConfig | str, batch_size: int, seq_len: int) -> float:
    """Analytical FLOPs of one forward pass over a padded batch.

    ``batch * (2 * P * T + 4 * L * T**2 * d)`` with ``P`` the per-token matmul weights
    (:func:`matmul_params_per_token`): projections/FFN and the two attention products
    (QK^T and AV). The attention term counts the full T x T square, as SDPA computes it with a
    dense mask.
    """
    cfg = get_config(cfg)
    P = matmul_params_per_token(cfg)
    T = seq_len
    return float(batch_size) * (2.0 * P * T + 4.0 * cfg.n_layers * T * T * cfg.d_model)
