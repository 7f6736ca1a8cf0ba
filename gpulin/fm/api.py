"""Public entry points: :func:`embed` (AnnData -> cell embeddings) and :func:`count_parameters`.

PyTorch is imported inside the functions, so ``import gpulin.fm`` works without it.

What :func:`embed` times when a benchmark wraps it: tokenization (from the AnnData's CSR counts),
host-to-device copies, the forward passes and the copy of the embeddings back to the host. Model
construction is not part of it: the random-weight model is built once and cached
(:func:`load_model`), as a loaded checkpoint would be. Cells are processed longest first so that
padding to the batch maximum wastes little; the result is returned in the input order. On CUDA
the forward pass runs under bf16 autocast, tokenization runs in a few threads ahead of the GPU,
and padded lengths are rounded up to a multiple of 16; on CPU everything is float32.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .configs import FMConfig, get_config
from .tokenizers import TokenBatch, counts_matrix, expected_lengths, expressed_per_cell, gene_nonzero_medians, tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models import FMEncoder

#: CPU batch size when none is given (models wider than 512: 2).
CPU_DEFAULT_BATCH = 4
#: Largest batch tried by the CUDA batch-size probe.
CUDA_MAX_BATCH = 1024
#: On CUDA, padded sequence lengths are rounded up to a multiple of this (tensor-core and
#: attention-kernel alignment; the extra positions are masked padding).
CUDA_SEQ_ALIGN = 16

_MODEL_CACHE: dict[tuple, Any] = {}
_BATCH_CACHE: dict[tuple, int] = {}


@dataclass
class EmbedStats:
    """What one :func:`embed_with_stats` call computed.

    Attributes
    ----------
    model, device : str
    n_cells, batch_size, n_batches : int
    tokens : int
        Real (non-padding) tokens over all cells.
    padded_tokens : int
        Tokens actually processed (batch x padded length, summed over batches).
    flops : float
        Analytical forward FLOPs over all batches (:func:`gpulin.fm.models.forward_flops`).
    """

    model: str
    device: str
    n_cells: int
    batch_size: int
    n_batches: int
    tokens: int
    padded_tokens: int
    flops: float


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when PyTorch sees a GPU, else CPU; ``"cuda"`` without one raises.

    Raises
    ------
    gpulin._backend.GPUUnavailableError
        ``device="cuda"`` but ``torch.cuda.is_available()`` is False.
    """
    import torch

    from .._backend import GPUUnavailableError

    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"Unknown device {device!r}; expected 'cpu', 'cuda' (or 'cuda:N'), 'auto', "
                         "or another PyTorch device type.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailableError(
            "device='cuda' was requested but PyTorch sees no CUDA device (torch "
            f"{torch.__version__}); install a CUDA build of torch or use device='cpu'."
        )
    return dev


def load_model(model: str | FMConfig = "geneformer-v1-10m", device: str = "auto", seed: int = 0) -> FMEncoder:
    """Random-weight encoder for ``model`` on ``device``, cached (one model kept at a time).

    Parameters
    ----------
    model : str or FMConfig
        Registry name (:func:`gpulin.fm.list_models`) or configuration.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    seed : int
        Weight seed.

    Returns
    -------
    FMEncoder
    """
    from .models import build_model

    cfg = get_config(model)
    dev = resolve_device(device)
    key = (cfg, str(dev), int(seed))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # free the previous model before allocating the next
        if dev.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        _MODEL_CACHE[key] = build_model(cfg, device=dev, seed=seed)
    return _MODEL_CACHE[key]


def clear_cache() -> None:
    """Drop the cached model and batch sizes (frees the model's memory)."""
    _MODEL_CACHE.clear()
    _BATCH_CACHE.clear()


def _to_torch(tb: TokenBatch, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    import torch

    ids = torch.from_numpy(tb.ids).to(dev, non_blocking=True)
    lengths = torch.from_numpy(tb.lengths).to(dev, non_blocking=True)
    values = None if tb.values is None else torch.from_numpy(tb.values).to(dev, non_blocking=True)
    return ids, lengths, values


def _tokenizer_threads(dev: torch.device) -> int:
    """Threads tokenizing ahead of the forward passes (NumPy sorts release the GIL)."""
    if dev.type != "cuda":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _prefetch(fn: Callable[[int], TokenBatch], n_items: int, threads: int) -> Iterator[TokenBatch]:
    """``fn(0), fn(1), ...`` in order, computed by ``threads`` workers at most ``2 * threads`` ahead."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque(pool.submit(fn, i) for i in range(min(n_items, 2 * threads)))
        nxt = len(pending)
        while pending:
            result = pending.popleft().result()
            if nxt < n_items:
                pending.append(pool.submit(fn, nxt))
                nxt += 1
            yield result


def cpu_batch_size(cfg: FMConfig) -> int:
    """The batch size :func:`embed` uses on the CPU when none is given: :data:`CPU_DEFAULT_BATCH`,
    or 2 for models wider than 512."""
    return CPU_DEFAULT_BATCH if cfg.d_model <= 512 else 2


def _pad_seq(tb: TokenBatch, multiple: int, max_len: int | None = None) -> TokenBatch:
    """Pad the sequence length to a multiple of ``multiple`` (padding ids 0, masked), unless that
    would pass ``max_len`` (a learned position table's length)."""
    extra = -tb.seq_len % multiple
    if extra == 0 or (max_len is not None and tb.seq_len + extra > max_len):
        return tb
    ids = np.pad(tb.ids, ((0, 0), (0, extra)))
    values = None if tb.values is None else np.pad(tb.values, ((0, 0), (0, extra)))
    return TokenBatch(ids=ids, lengths=tb.lengths, values=values)


def _probe_batch_size(net: FMEncoder, dev: torch.device, make_tokens, n_cells: int, hidden_layer: int | None) -> int:
    """Largest power of two (<= CUDA_MAX_BATCH) whose forward pass on the longest cells fits."""
    import torch

    cap = min(CUDA_MAX_BATCH, 1 << max(0, int(n_cells - 1).bit_length()))
    best, b = 0, 1
    while b <= cap:
        try:
            out = net(*_to_torch(make_tokens(b), dev), hidden_layer=hidden_layer)
            torch.cuda.synchronize(dev)
            del out
            best, b = b, 2 * b
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or cuBLAS/cuDNN allocation failures
            if not isinstance(exc, torch.cuda.OutOfMemoryError) and not any(
                    s in str(exc) for s in ("out of memory", "ALLOC_FAILED")):
                raise
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise MemoryError(f"{net.cfg.name}: one cell does not fit on {dev}.")
    return best


def embed_with_stats(
    adata: Any,
    model: str | FMConfig | FMEncoder = "geneformer-v1-10m",
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    layer: str | None = None,
    *,
    hidden_layer: int | None = None,
    gene_medians: np.ndarray | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """:func:`embed` that also returns what was computed (tokens, batches, FLOPs).

    Parameters and return value as :func:`embed`, plus an :class:`EmbedStats`.
    """
    import torch

    from .._validation import check_int
    from .models import FMEncoder, forward_flops

    check_int("batch_size", batch_size, 1, allow_none=True)
    check_int("seed", seed, 0)
    if isinstance(model, FMEncoder):
        net, cfg = model, model.cfg
        dev = next(net.parameters()).device
    else:
        cfg = get_config(model)
        dev = resolve_device(device)
        net = load_model(cfg, str(dev), seed)
    if hidden_layer is not None:
        check_int("hidden_layer", hidden_layer, -cfg.n_layers)
        if hidden_layer >= cfg.n_layers:
            raise ValueError(f"hidden_layer={hidden_layer} is out of range for {cfg.name}'s {cfg.n_layers} layers "
                             f"(0..{cfg.n_layers - 1}, or negative from the last).")
    X = counts_matrix(adata, layer)  # checked once here; the batches are its rows (check=False)
    n = X.shape[0]
    n_empty = int(np.count_nonzero(expressed_per_cell(X) == 0))
    if n_empty:
        from .._warnings import warn_user
        from ..transforms import EmptyCellsWarning

        warn_user(f"{n_empty} of {n} cells have no counts: the {cfg.name} encoder sees no gene of theirs, so they "
                  "all get the same embedding. Consider removing them (scanpy.pp.filter_cells(adata, min_counts=1)).",
                  EmptyCellsWarning)
    if gene_medians is None and (cfg.tokenizer == "geneformer" or cfg.rank_order):
        gene_medians = gene_nonzero_medians(X, check=False)
    order = np.argsort(-expected_lengths(cfg, X, check=False), kind="stable")

    align = CUDA_SEQ_ALIGN if dev.type == "cuda" else 1

    def tokens_of(idx: np.ndarray, gen: np.random.Generator) -> TokenBatch:
        # aligned for the tensor cores, but never past a learned position table's length
        return _pad_seq(tokenize(cfg, X[idx], gene_medians=gene_medians, rng=gen, check=False), align, cfg.max_tokens)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        if batch_size is None:
            if dev.type == "cuda":
                key = (cfg, str(dev), int(expected_lengths(cfg, X[order[:1]], check=False)[0]), min(n, CUDA_MAX_BATCH), hidden_layer)
                if key not in _BATCH_CACHE:
                    probe_rng = np.random.default_rng([seed, 1 << 30])
                    _BATCH_CACHE[key] = _probe_batch_size(
                        net, dev, lambda b: tokens_of(np.resize(order[: min(b, n)], b), probe_rng), n, hidden_layer)
                batch_size = _BATCH_CACHE[key]
            else:
                batch_size = cpu_batch_size(cfg)
        starts = range(0, n, batch_size)

        def batch_tokens(i: int) -> TokenBatch:
            # one generator per batch: the sampling does not depend on thread timing
            return tokens_of(order[starts[i]: starts[i] + batch_size], np.random.default_rng([seed, i]))

        outs, flops, tokens, padded = [], 0.0, 0, 0
        for tb in _prefetch(batch_tokens, len(starts), _tokenizer_threads(dev)):
            outs.append(net(*_to_torch(tb, dev), hidden_layer=hidden_layer))
            flops += forward_flops(cfg, tb.n_cells, tb.seq_len)
            tokens += int(tb.lengths.sum())
            padded += tb.n_cells * tb.seq_len
        emb_sorted = torch.cat(outs).float().cpu().numpy()
    emb = np.empty_like(emb_sorted)
    emb[order] = emb_sorted
    stats = EmbedStats(cfg.name, str(dev), n, int(batch_size), len(outs), tokens, padded, flops)
    return emb, stats


def embed(
    adata: Any,
    model: str | FMConfig | FMEncoder = "geneformer-v1-10m",
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
    layer: str | None = None,
    *,
    hidden_layer: int | None = None,
    gene_medians: np.ndarray | None = None,
) -> np.ndarray:
    """Cell embeddings from an FM-shaped encoder with random weights (tokenization included).

    Inference time does not depend on the weights' values, so this gives the real time of the
    published architecture; the embeddings themselves carry no biology.

    Parameters
    ----------
    adata : AnnData or sparse matrix
        Raw counts, cells x genes (CSR; float or integer).
    model : str or FMConfig or FMEncoder
        Registry name (:func:`gpulin.fm.list_models`), a configuration, or a built encoder
        (which runs where its weights are; ``device`` and ``seed`` then only affect sampling).
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: CUDA when available.
    batch_size : int, optional
        Cells per forward pass. Default: on CUDA the largest power of two (up to 1024) whose
        forward pass on the longest cells fits in memory (probed once per model and input
        length, catching out-of-memory errors); on CPU 4 (2 for models wider than 512).
    seed : int
        Seed of the random weights and of the tokenizers' sampling (scGPT subset, UCE). The
        sampling draws one generator per batch (cells sorted by length), so a sampled cell's
        tokens depend on the batch it falls in: the same call gives the same result, another
        ``batch_size`` or cell order other samples (the time does not change).
    layer : str, optional
        AnnData layer with the raw counts (default ``X``), as in :func:`gpulin.embed`.
    hidden_layer : int, optional
        Pool the output of this transformer block instead of the last (e.g. -2).
    gene_medians : ndarray, optional
        Geneformer per-gene nonzero medians (a fixed dictionary in Geneformer); computed from
        ``adata`` when omitted.

    Returns
    -------
    ndarray of float32, shape (n_cells, d)
        ``d`` is ``get_config(model).embedding_dim``.
    """
    return embed_with_stats(
        adata, model, device, batch_size, seed, layer, hidden_layer=hidden_layer, gene_medians=gene_medians,
    )[0]


def count_parameters(model_name: str | FMConfig) -> dict[str, int]:
    """Trainable and frozen parameter counts of a published configuration, without allocating.

    Built on PyTorch's ``meta`` device; includes the checkpoint's training-only heads (see
    :mod:`gpulin.fm.configs` for what is counted).

    Parameters
    ----------
    model_name : str or FMConfig

    Returns
    -------
    dict
        ``{"trainable": int, "frozen": int}``.
    """
    from .models import count_parameters as _count

    return _count(model_name)
