"""Published foundation-model (FM) configurations, as plain dataclasses (no torch needed).

Each :class:`FMConfig` fixes the shape of an architecture-equivalent encoder: the transformer
(layers, width, heads, FFN), the tokenizer, and the embedding parts (gene encoder, expression
encoder, positional encoding, pooling, output head). Weights are random: inference time does not
depend on the weights' values, so timing a random-weight encoder of the published shape gives the
real inference time.

What is timed is the encoder: tokens -> transformer -> pooled cell embedding. The published
inference code of some models also runs output heads that a cell embedding does not need:
TranscriptFormer's ``inference()`` computes its count head and, in the released checkpoints, its
gene-id head over all 2,048 tokens; Geneformer's ``EmbExtractor`` loads ``BertForMaskedLM``, whose
MLM decoder (d x vocabulary per token) runs too. By FLOP count at full length (an audit's
estimate from :func:`gpulin.fm.models.forward_flops` and the heads' shapes) that adds about 16% /
59% / 34% (TranscriptFormer Sapiens / Exemplar / Metazoa) and 70% / 10% / 5% (Geneformer V1 /
V2-104M / V2-316M). gpulin leaves them out, so its FM throughputs are upper bounds of the
published pipelines' and the linear-vs-FM ratios in ``benchmarks/`` lower bounds.

Genes are not filtered to a model's vocabulary (the published tokenizers drop genes outside it;
here every expressed column is a token, mapped to an id by position): with a matrix of many
more features than the vocabulary (e.g. 36k 10x features against Geneformer's 25k genes) cells
get more tokens than the real model would see; cut such a matrix to a gene list of the model's
size first for like-for-like timing. The benchmarks use the 20k-gene synthetic atlas.

Parameter counts (:func:`gpulin.fm.count_parameters`) include every module of the published
checkpoint, also the output heads that the embedding skips (these heads are allocated only when
counting, on the ``meta`` device):

========================  ===========================================================  ==========
model                     counted modules                                              published
========================  ===========================================================  ==========
geneformer-v1-10m         BERT embeddings (gene, position 2048, token type, LN),        ~10M
                          6 post-LN blocks, MLM head (dense + LN + bias; decoder tied)
geneformer-v2-104m        same with 12 x 768, positions 4096                           ~104M
geneformer-v2-316m        same with 18 x 1152, positions 4096                          ~316M
scgpt-human               gene Embedding + LN, continuous value encoder, 12 blocks,     (~51M)
                          expression decoder and MVC decoder
transcriptformer-*        frozen ESM-2 table (frozen), gene MLP 2560->2048->2048,       368M + 61M
                          12 pre-LN blocks without biases, gene-id head MLP            (Sapiens)
                          2048->h->vocab, count head MLP 4096->1024->1 + per-gene bias
uce-33                    frozen ESM-2 table (frozen), encoder 5120->1280,              ~650M
                          33 post-LN blocks, embedding decoder MLP, binary decoder
                          and gene-embedding layer (training heads)
========================  ===========================================================  ==========

The TranscriptFormer gene-id head hidden width is 2048 for Sapiens and Exemplar and 512 for
Metazoa: with those widths the counts reproduce the published 368M / 542M / 444M trainable
parameters (within 1%), and the frozen tables are exactly vocab x 2560 (61M / 282M / 633M).

Genes of an AnnData are mapped to vocabulary ids by position modulo the gene vocabulary (see
:func:`gpulin.fm.tokenizers.gene_token_ids`); with random weights gene identity does not affect
timing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

TokenizerName = Literal["geneformer", "scgpt", "transcriptformer", "uce", "expressed"]
GeneEncoderName = Literal["learned", "frozen_mlp", "frozen_linear"]
ExpressionEncoderName = Literal["none", "raw", "continuous", "hard_bin", "log_bin", "soft_bin"]


@dataclass(frozen=True)
class FMConfig:
    """Architecture of one FM-shaped encoder.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"geneformer-v1-10m"``.
    n_layers, d_model, n_heads, d_ffn : int
        Transformer depth, width, attention heads and feed-forward width.
    max_tokens : int
        Longest input sequence (including special tokens).
    vocab_size : int
        Rows of the gene token table (special tokens included).
    n_special : int
        Number of reserved special-token ids at the start of the vocabulary; gene ids follow.
    tokenizer : str
        Which tokenizer of :mod:`gpulin.fm.tokenizers` produces the input.
    gene_encoder : {"learned", "frozen_mlp", "frozen_linear"}
        ``learned``: trainable ``nn.Embedding``; ``frozen_mlp``: frozen external table through a
        2-layer MLP (Linear-ReLU-LayerNorm-Linear); ``frozen_linear``: frozen table through
        Linear-GELU-LayerNorm (UCE).
    gene_table_dim : int
        Width of the frozen external table (ESM-2: 2560 for the 3B model, 5120 for 15B).
    gene_mlp_hidden : int
        Hidden width of the ``frozen_mlp`` gene MLP (0: ``d_model``).
    gene_layernorm : bool
        LayerNorm after a learned gene embedding (scGPT).
    expression_encoder : str
        ``none`` (rank order or no value input), ``raw`` (MLP on log1p value), ``continuous``
        (scGPT MLP on the binned value), ``hard_bin``, ``log_bin``, ``soft_bin``.
    n_value_bins : int
        Value bins including the zero bin for per-cell quantile binning (scGPT and ``hard_bin``:
        51 = zero + 50 quantile bins, the lookup table has that many rows); number of bin
        embeddings for ``soft_bin`` (20).
    positional : {"none", "learned", "sinusoidal"}
        Positional encoding added to the token embedding.
    token_type : bool
        BERT token-type embedding (2 rows; type 0 is added).
    embed_layernorm : bool
        LayerNorm over the summed embeddings (BERT).
    embed_scale : bool
        Multiply the embedding by sqrt(d_model) before the positional encoding (UCE).
    norm_first : bool
        Pre-LN (True) or post-LN (False) blocks.
    normed_residual : bool
        With ``norm_first``: TranscriptFormer's block, whose LayerNorms replace the residual
        stream (``x = norm1(x); x = attn(x) + x; x = norm2(x); x = ffn(x) + x``) instead of
        feeding the branches only (``x + attn(norm1(x))``).
    layer_norm_eps : float
        Epsilon of every LayerNorm (BERT / Geneformer: 1e-12; PyTorch's default 1e-5).
    activation : {"gelu", "relu"}
        FFN activation.
    attn_bias, ffn_bias : bool
        Biases in the attention and feed-forward projections.
    final_norm : bool
        LayerNorm after the last block (pre-LN models).
    attention : {"bidirectional", "count_causal"}
        ``count_causal``: causal attention with log1p(count of the key) added to the logits
        (TranscriptFormer).
    pad_to_max : bool
        Pad every cell to ``max_tokens`` (TranscriptFormer) instead of the batch maximum.
    pooling : {"mean", "mean_context", "cls"}
        Cell embedding from the mean over non-padding tokens, from the sum over them divided by
        the whole context length (TranscriptFormer's ``mean_embeddings(include_masked=True)``
        over cells padded to 2048), or from the first token.
    output_head : {"none", "uce_decoder"}
        MLP applied to the pooled vector (UCE's decoder, output L2-normalised).
    output_dim : int
        Width of ``output_head`` (0: ``d_model``).
    training_heads : str
        Heads of the published checkpoint counted by ``count_parameters`` but never run for
        embedding: ``none``, ``bert_mlm``, ``scgpt``, ``transcriptformer``, ``uce``.
    gene_head_hidden : int
        TranscriptFormer gene-id head hidden width.
    n_sample : int
        UCE: genes sampled per cell (with replacement); ``expressed``: max genes kept.
    n_chromosomes : int
        UCE: number of (synthetic) chromosomes.
    cls_eos : bool
        Geneformer V2: prepend <cls> and append <eos>.
    rank_order : bool
        ``expressed`` tokenizer: order genes by normalised expression (rank encoding).
    published_params : dict or None
        Published counts, ``{"trainable": int, "frozen": int}`` (frozen may be absent).
    notes : str
        Free text shown in tables.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_ffn: int
    max_tokens: int
    vocab_size: int
    n_special: int
    tokenizer: TokenizerName
    gene_encoder: GeneEncoderName = "learned"
    gene_table_dim: int = 0
    gene_mlp_hidden: int = 0
    gene_layernorm: bool = False
    expression_encoder: ExpressionEncoderName = "none"
    n_value_bins: int = 51
    positional: Literal["none", "learned", "sinusoidal"] = "none"
    token_type: bool = False
    embed_layernorm: bool = False
    embed_scale: bool = False
    norm_first: bool = False
    normed_residual: bool = False
    layer_norm_eps: float = 1e-5
    activation: Literal["gelu", "relu"] = "gelu"
    attn_bias: bool = True
    ffn_bias: bool = True
    final_norm: bool = False
    attention: Literal["bidirectional", "count_causal"] = "bidirectional"
    pad_to_max: bool = False
    pooling: Literal["mean", "mean_context", "cls"] = "mean"
    output_head: Literal["none", "uce_decoder"] = "none"
    output_dim: int = 0
    training_heads: Literal["none", "bert_mlm", "scgpt", "transcriptformer", "uce"] = "none"
    gene_head_hidden: int = 0
    n_sample: int = 0
    n_chromosomes: int = 24
    cls_eos: bool = False
    rank_order: bool = False
    published_params: dict[str, int] | None = field(default=None, compare=False)
    notes: str = ""

    @property
    def embedding_dim(self) -> int:
        """Width of the cell embedding returned by :func:`gpulin.fm.embed`."""
        if self.output_head != "none":
            return self.output_dim or self.d_model
        return self.d_model

    def replace(self, **changes: Any) -> FMConfig:
        """A copy with some fields changed (e.g. a reduced-layer variant for tests).

        Parameters
        ----------
        **changes
            Field values to override.

        Returns
        -------
        FMConfig
        """
        return dataclasses.replace(self, **changes)


def _geneformer(name: str, n_layers: int, d: int, heads: int, ffn: int, tokens: int, vocab: int,
                v2: bool, published: int) -> FMConfig:
    return FMConfig(
        name=name, n_layers=n_layers, d_model=d, n_heads=heads, d_ffn=ffn, max_tokens=tokens,
        vocab_size=vocab, n_special=4 if v2 else 2, tokenizer="geneformer", gene_encoder="learned",
        expression_encoder="none", positional="learned", token_type=True, embed_layernorm=True,
        norm_first=False, activation="relu", layer_norm_eps=1e-12, pooling="cls" if v2 else "mean",
        training_heads="bert_mlm", cls_eos=v2, published_params={"trainable": published},
        notes="rank-value encoding, padded to the batch maximum"
        + ("; <cls> ... <eos>, CLS pooling" if v2 else "; mean pooling"),
    )


def _transcriptformer(name: str, vocab: int, head_hidden: int, trainable: int, frozen: int) -> FMConfig:
    return FMConfig(
        name=name, n_layers=12, d_model=2048, n_heads=16, d_ffn=2048, max_tokens=2048,
        vocab_size=vocab, n_special=4, tokenizer="transcriptformer", gene_encoder="frozen_mlp",
        gene_table_dim=2560, gene_mlp_hidden=2048, expression_encoder="none", positional="none",
        norm_first=True, normed_residual=True, activation="gelu", attn_bias=False, ffn_bias=False,
        final_norm=False, attention="count_causal", pad_to_max=True, pooling="mean_context",
        training_heads="transcriptformer", gene_head_hidden=head_hidden,
        published_params={"trainable": trainable, "frozen": frozen},
        notes="frozen ESM-2 (2560-d) + 2-layer MLP; causal, log1p(count) added to attention "
        "logits; every cell padded to 2048; mean pooling",
    )


_REGISTRY: dict[str, FMConfig] = {}


def _register(cfg: FMConfig) -> None:
    _REGISTRY[cfg.name] = cfg


_register(_geneformer("geneformer-v1-10m", 6, 256, 4, 512, 2048, 25_426, False, 10_000_000))
_register(_geneformer("geneformer-v2-104m", 12, 768, 12, 3072, 4096, 20_275, True, 104_000_000))
_register(_geneformer("geneformer-v2-316m", 18, 1152, 18, 4608, 4096, 20_275, True, 316_000_000))
_register(FMConfig(
    name="scgpt-human", n_layers=12, d_model=512, n_heads=8, d_ffn=512, max_tokens=1200,
    vocab_size=60_697, n_special=3, tokenizer="scgpt", gene_encoder="learned", gene_layernorm=True,
    expression_encoder="continuous", n_value_bins=51, positional="none", norm_first=False,
    activation="relu", pooling="cls", training_heads="scgpt",
    notes="51 per-cell value bins, continuous value encoder, <cls> first, up to 1200 tokens",
))
_register(_transcriptformer("transcriptformer-sapiens", 23_829, 2048, 368_000_000, 61_000_000))
_register(_transcriptformer("transcriptformer-exemplar", 110_290, 2048, 542_000_000, 282_000_000))
_register(_transcriptformer("transcriptformer-metazoa", 247_388, 512, 444_000_000, 633_000_000))
_register(FMConfig(
    name="uce-33", n_layers=33, d_model=1280, n_heads=20, d_ffn=5120, max_tokens=1536,
    vocab_size=145_469, n_special=3 + 24, tokenizer="uce", gene_encoder="frozen_linear",
    gene_table_dim=5120, expression_encoder="none", positional="sinusoidal", embed_scale=True,
    norm_first=False, activation="relu", pooling="cls", output_head="uce_decoder",
    output_dim=1280, training_heads="uce", n_sample=1024, n_chromosomes=24,
    published_params={"trainable": 650_000_000},
    notes="1024 genes sampled by log1p expression with replacement, chromosome-ordered, <cls>; "
    "frozen ESM-2 (5120-d) projected to 1280; padded to the batch maximum",
))

#: Encoding-benchmark variants (pipeline.md section 7): 12 x 512, 8 heads, FFN 1024, up to 1024
#: expressed genes, no positional encoding (except rank order), mean pooling. The gene vocabulary
#: is the human ESM-2 gene set of TranscriptFormer-Sapiens (23,829 rows).
ENCODING_GENE_ENCODERS = ("learned", "esm2")
ENCODING_EXPRESSION_ENCODERS = ("raw", "hard", "log", "soft", "rank")
_EXPR = {"raw": "raw", "hard": "hard_bin", "log": "log_bin", "soft": "soft_bin", "rank": "none"}

for _g in ENCODING_GENE_ENCODERS:
    for _e in ENCODING_EXPRESSION_ENCODERS:
        _register(FMConfig(
            name=f"encoding-{_g}-{_e}", n_layers=12, d_model=512, n_heads=8, d_ffn=1024,
            max_tokens=1024, vocab_size=23_829, n_special=2, tokenizer="expressed",
            gene_encoder="learned" if _g == "learned" else "frozen_mlp",
            gene_table_dim=0 if _g == "learned" else 2560, gene_mlp_hidden=512,
            expression_encoder=_EXPR[_e],  # type: ignore[arg-type]
            n_value_bins=20 if _e == "soft" else 51,
            positional="learned" if _e == "rank" else "none", norm_first=True, final_norm=True,
            activation="gelu", pooling="mean", rank_order=_e == "rank", n_sample=1024,
            notes=f"encoding benchmark: {_g} gene encoder + {_e} expression encoder",
        ))

#: The published FM encoders timed by the benchmarks (the encoding variants are extra).
PUBLISHED_MODELS: tuple[str, ...] = (
    "geneformer-v1-10m", "geneformer-v2-104m", "geneformer-v2-316m", "scgpt-human",
    "transcriptformer-sapiens", "transcriptformer-exemplar", "transcriptformer-metazoa", "uce-33",
)


def list_models(include_encoding_variants: bool = True) -> list[str]:
    """Names of the registered configurations.

    Parameters
    ----------
    include_encoding_variants : bool
        Also list the ``encoding-<gene>-<expression>`` variants of section 7.

    Returns
    -------
    list of str
    """
    if include_encoding_variants:
        return list(_REGISTRY)
    return list(PUBLISHED_MODELS)


def get_config(name: str | FMConfig) -> FMConfig:
    """Look up a configuration by name (a config passes through).

    Parameters
    ----------
    name : str or FMConfig

    Returns
    -------
    FMConfig

    Raises
    ------
    KeyError
        Unknown name; the message lists the known ones.
    """
    if isinstance(name, FMConfig):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown FM config {name!r}; known: {', '.join(_REGISTRY)}") from None
