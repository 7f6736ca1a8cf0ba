"""Foundation-model (FM) reference encoders for timing against the linear baselines.

Architecture-equivalent PyTorch encoders of published single-cell FMs (Geneformer V1-10M,
V2-104M, V2-316M, scGPT whole-human, TranscriptFormer Sapiens/Exemplar/Metazoa, UCE-33) and the
encoding-benchmark variants, with the tokenizers that turn an AnnData into their inputs.
Weights are random (seeded): inference time does not depend on the weights' values, so these
encoders give the published models' real inference time, not their embeddings' quality.

Needs the optional extra ``fm`` (PyTorch): ``pip install 'gpulin[fm]'``. Importing this package
does not import PyTorch; :func:`embed`, :func:`count_parameters` and :func:`load_model` do.

Examples
--------
>>> import gpulin.fm
>>> Z = gpulin.fm.embed(adata, model="geneformer-v1-10m", device="auto")  # doctest: +SKIP
>>> gpulin.fm.count_parameters("transcriptformer-sapiens")  # doctest: +SKIP
{'trainable': 368781867, 'frozen': 61002240}
"""

from .api import EmbedStats, clear_cache, count_parameters, embed, embed_with_stats, load_model, resolve_device
from .configs import PUBLISHED_MODELS, FMConfig, get_config, list_models
from .tokenizers import (
    TokenBatch,
    gene_nonzero_medians,
    gene_token_ids,
    tokenize,
    tokenize_expressed,
    tokenize_geneformer,
    tokenize_scgpt,
    tokenize_transcriptformer,
    tokenize_uce,
)

__all__ = [
    "PUBLISHED_MODELS",
    "EmbedStats",
    "FMConfig",
    "TokenBatch",
    "clear_cache",
    "count_parameters",
    "embed",
    "embed_with_stats",
    "gene_nonzero_medians",
    "gene_token_ids",
    "get_config",
    "list_models",
    "load_model",
    "resolve_device",
    "tokenize",
    "tokenize_expressed",
    "tokenize_geneformer",
    "tokenize_scgpt",
    "tokenize_transcriptformer",
    "tokenize_uce",
]
