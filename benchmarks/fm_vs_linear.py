"""Foundation-model inference vs linear embedding: cells/s on the same cells and the same device.

Linear: ``gpulin.embed(adata, method=..., device=..., n_components=50)`` for ``sctop`` and
``lognorm``, from the AnnData's raw counts to the embedding, on ``--n-cells`` cells of
``gpulin.datasets.synthetic_atlas``.

FM: ``gpulin.fm.embed(adata, model=...)`` for every published FM encoder (Geneformer V1-10M,
V2-104M, V2-316M, scGPT whole-human, TranscriptFormer Sapiens/Exemplar/Metazoa, UCE-33),
tokenization included. The FM encoders have random weights: inference time does not depend on
the weights' values. ``fm.embed`` sorts the cells by token length and pads each batch to its
longest cell, so an FM's cells/s is measured on whole batches of that batching of all cells,
taken at evenly spaced positions (:func:`representative_batches`; the subset's size ``m`` and the
batch size are recorded per model): on a GPU a few hundred to a few thousand cells, on a CPU as
many as fit in a time budget (one or a few cells for the large models).

Every timing is taken after a warm-up call (on CUDA the warm-up also probes the batch size; on
CPU the FM warm-up runs the first transformer block only) and is the median of several runs,
with ``torch.cuda.synchronize`` before reading the clock on GPU. On GPU the script also measures
the bf16 matmul rate (a large ``torch.matmul``) and reports each FM forward pass's achieved
TFLOP/s from an analytical FLOP count (``2 * matmul params per token * tokens + 4 * layers *
tokens**2 * d`` per cell, over the padded batches actually run).

Usage::

    python benchmarks/fm_vs_linear.py --device cpu --quick      # a few minutes on 2 cores
    python benchmarks/fm_vs_linear.py --device cuda              # on a CUDA machine

Writes ``--out`` (default ``benchmarks/results/fm_vs_linear_<device>.json``) and a PNG next to it
(cells/s per model on a log axis).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import cpu_model, environment  # noqa: E402

import gpulin  # noqa: E402
import gpulin.fm as fm  # noqa: E402
import gpulin.fm.tokenizers  # noqa: E402

NOTE = "FM encoders use random weights; inference time does not depend on weight values"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """One device for both sides: CUDA only when PyTorch and gpulin (CuPy) both see it."""
    import torch

    torch_cuda = torch.cuda.is_available()
    linear_cuda = gpulin.cuda_available()
    if device == "auto":
        if torch_cuda != linear_cuda:
            log(f"warning: torch CUDA={torch_cuda}, gpulin CUDA={linear_cuda}; using the CPU for both")
        return "cuda" if (torch_cuda and linear_cuda) else "cpu"
    if device == "cuda" and not (torch_cuda and linear_cuda):
        raise SystemExit(f"--device cuda needs a GPU that PyTorch and CuPy both see (torch CUDA={torch_cuda}, "
                         f"gpulin CUDA={linear_cuda}); use --device cpu.")
    return device


def device_description(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions() -> dict[str, str]:
    """The run's provenance (:func:`_provenance.environment`), with PyTorch's CUDA and GPU."""
    import torch

    out = environment()
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def synchronize(device: str) -> None:
    if device != "cuda":
        return
    import torch

    torch.cuda.synchronize()
    try:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    except Exception:
        pass


def timed_runs(fn: Callable[[], Any], runs: int, device: str) -> list[float]:
    """Wall-clock seconds of ``runs`` calls of ``fn`` (synchronised before each clock read)."""
    out = []
    for _ in range(runs):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def matmul_tflops(device: str) -> dict[str, Any]:
    """Achieved rate of a large matmul: bf16 8192^3 on CUDA, float32 2048^3 on CPU."""
    import torch

    if device == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 2048, torch.float32, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    secs = timed_runs(lambda: [torch.matmul(a, b) for _ in range(reps)], 3, device)
    t = statistics.median(secs) / reps
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2 * n**3 / t / 1e12}


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def measure_linear(adata, method: str, device: str, runs: int) -> dict[str, Any]:
    n = adata.n_obs
    # warm-up on all cells: a subset left some Numba specializations (and caches) to the timed
    # runs, 5x off from a cold cache at 2k cells
    gpulin.embed(adata, method=method, device=device, n_components=50)
    secs = timed_runs(lambda: gpulin.embed(adata, method=method, device=device, n_components=50), runs, device)
    med = statistics.median(secs)
    return {"cells_per_s": n / med, "n_cells": n, "runs": runs, "seconds": secs, "median_s": med}


def fm_plan(name: str, device: str, quick: bool, rate_flops: float, n_cells: int, mean_tokens: float) -> tuple[int, int]:
    """(cells in the subset, timed runs) for one FM.

    GPU: 512-2048 cells (fewer in quick mode), 5 runs (3 quick). CPU: as many cells (1-64) as fit
    in a per-run budget at the measured matmul rate, 3 runs (2 quick), 1 run for the models that
    take longer than the budget per cell.
    """
    cfg = fm.get_config(name)
    if device == "cuda":
        m = 2048 if cfg.d_model <= 512 else 512
        return min(n_cells, m // 4 if quick else m), 3 if quick else 5
    T = cfg.max_tokens if cfg.pad_to_max else min(cfg.max_tokens, mean_tokens)
    from gpulin.fm.models import forward_flops

    sec_per_cell = forward_flops(cfg, 1, int(T)) / (0.6 * rate_flops)  # CPU reaches ~60 % of matmul
    budget = 8.0 if quick else 30.0
    m = int(np.clip(budget // sec_per_cell, 1, 64))
    runs = 1 if sec_per_cell > budget else (2 if quick else 3)
    return min(n_cells, m), runs


def representative_batches(adata, name: str, m: int, batch_size: int) -> np.ndarray:
    """The cells of whole batches of ``fm.embed``'s batching of *all* cells, at evenly spaced
    positions: ``k = max(1, round(m / batch_size))`` of the ``ceil(n / batch_size)`` batches.

    ``fm.embed`` sorts cells by token length (longest first) and pads each batch to its longest
    cell, so a batch of the full data holds cells of nearly equal length. Timing such batches
    (the subset is batched the same way: its sorted order is the union of the chosen batches)
    measures the full run's cost per cell, padding included, without running every cell. A subset
    spread over all lengths and run as one batch would instead pad every cell to the longest one
    (the committed GPU run did, at e9fde9d: Geneformer V1 padded 1,065 real tokens per cell to 2,048).
    """
    lengths = fm.tokenizers.expected_lengths(fm.get_config(name), adata)
    order = np.argsort(-lengths, kind="stable")  # as fm.embed
    n = len(order)
    n_batches = -(-n // batch_size)
    k = min(n_batches, max(1, int(round(m / batch_size))))
    picks = (np.unique(np.round(np.linspace(0, n_batches - 1, k + 2)[1:-1]).astype(int)) if k < n_batches
             else np.arange(n_batches))
    return np.sort(np.concatenate([order[b * batch_size: (b + 1) * batch_size] for b in picks]))


def fm_batch_size(adata, name: str, device: str, m: int, gene_medians: np.ndarray) -> int:
    """The batch size ``fm.embed`` uses on the whole data: CUDA, the largest that fits its longest
    cells (the probe, run on them; it also warms the model up); CPU, its default (at most ``m``)."""
    if device != "cuda":
        from gpulin.fm.api import cpu_batch_size

        return max(1, min(m, cpu_batch_size(fm.get_config(name))))
    from gpulin.fm.api import CUDA_MAX_BATCH

    lengths = fm.tokenizers.expected_lengths(fm.get_config(name), adata)
    longest = np.sort(np.argsort(-lengths, kind="stable")[: min(adata.n_obs, CUDA_MAX_BATCH)])
    return fm.embed_with_stats(adata[longest].copy(), name, device=device, gene_medians=gene_medians)[1].batch_size


def measure_fm(adata, name: str, device: str, m: int, runs: int, gene_medians: np.ndarray) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    fm.load_model(name, device=device, seed=0)
    build_s = time.perf_counter() - t0
    batch_size = fm_batch_size(adata, name, device, m, gene_medians)
    sub = adata[representative_batches(adata, name, m, batch_size)].copy()
    m = sub.n_obs
    # warm-up: CUDA runs the whole subset; CPU the first block only
    if device == "cuda":
        fm.embed(sub, name, device=device, gene_medians=gene_medians, batch_size=batch_size)
    else:
        fm.embed(sub[:1].copy(), name, device=device, gene_medians=gene_medians, hidden_layer=0)
    stats: list[fm.EmbedStats] = []

    def run() -> None:
        stats.append(fm.embed_with_stats(sub, name, device=device, gene_medians=gene_medians,
                                         batch_size=batch_size)[1])

    secs = timed_runs(run, runs, device)
    med = statistics.median(secs)
    st = stats[-1]
    counts = fm.count_parameters(name)
    out = {
        "cells_per_s": m / med,
        "n_cells": m,
        "runs": runs,
        "seconds": secs,
        "median_s": med,
        "batch_size": st.batch_size,
        "n_batches": st.n_batches,
        "tokens_per_cell": st.tokens / m,
        "padded_tokens_per_cell": st.padded_tokens / m,
        "gflop_per_cell": st.flops / m / 1e9,
        "achieved_tflops": st.flops / med / 1e12,
        "params_trainable": counts["trainable"],
        "params_frozen": counts["frozen"],
        "model_build_s": build_s,
    }
    if device == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"gpulin {k}" for k in result["linear"]] + list(result["fm"])
    vals = list(result["linear"].values()) + list(result["fm"].values())
    colors = ["#1f77b4"] * len(result["linear"]) + ["#d62728"] * len(result["fm"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]
    ax.barh(y, vals, color=colors)
    ax.set_xscale("log")
    ax.set_yticks(y, names)
    sctop = result["linear"]["sctop"]
    ratios = [""] * len(result["linear"]) + [f"  (sctop {sctop / v:,.0f}x)" for v in result["fm"].values()]
    for yi, v, r in zip(y, vals, ratios):
        ax.text(v, yi, f" {v:,.3g}{r}", va="center", fontsize=8)
    ax.set_xlabel("cells / s (log scale)")
    ax.set_xlim(min(vals) / 3, max(vals) * 300)
    ax.set_title(f"{result['device']}\nlinear: {result['n_cells']:,} cells; FM: subsets of the same cells; "
                 "random FM weights", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--quick", action="store_true", help="CI-sized run (fewer cells and runs)")
    p.add_argument("--n-cells", type=int, default=None,
                   help="cells for the linear embedding (default CPU 5k quick / 20k; GPU 20k quick / 200k)")
    p.add_argument("--n-genes", type=int, default=20_000)
    p.add_argument("--models", default=",".join(fm.PUBLISHED_MODELS), help="comma-separated FM names")
    p.add_argument("--out", type=Path, default=None, help="JSON path (PNG written next to it)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device == "cuda"
    n_cells = args.n_cells or ((20_000 if args.quick else 200_000) if gpu else (5_000 if args.quick else 20_000))
    out = args.out or HERE / "results" / f"fm_vs_linear_{device}.json"
    models = [m for m in args.models.split(",") if m]
    load0 = os.getloadavg()
    log(f"device {device_description(device)}; {n_cells:,} cells x {args.n_genes:,} genes; models {models}")

    from gpulin.datasets import synthetic_atlas

    t0 = time.perf_counter()
    adata = synthetic_atlas(n_cells, args.n_genes, n_types=12, seed=args.seed)
    nnz = np.diff(adata.X.indptr)
    log(f"synthetic atlas in {time.perf_counter() - t0:.1f}s; nonzeros per cell: median {np.median(nnz):.0f}")

    matmul = matmul_tflops(device)
    log(f"matmul {matmul['dtype']} {matmul['tflops']:.3f} TFLOP/s")

    lin_runs = 3 if args.quick else 5
    linear = {}
    for method in ("sctop", "lognorm"):
        linear[method] = measure_linear(adata, method, device, lin_runs)
        log(f"linear {method}: {linear[method]['cells_per_s']:,.0f} cells/s")
    if device == "cuda":
        import cupy as cp

        cp.get_default_memory_pool().free_all_blocks()  # leave the GPU to the FMs' batch search

    # Geneformer's gene medians are a fixed dictionary in Geneformer (not recomputed per call):
    # computed once, outside the timings, from up to 20k cells
    gene_medians = fm.gene_nonzero_medians(adata[: min(n_cells, 20_000)])
    try:
        from tqdm import tqdm

        it = tqdm(models, desc="FM encoders", file=sys.stderr)
    except ImportError:
        it = models
    mean_tokens = float(np.mean(nnz))
    fm_details = {}
    for name in it:
        m, runs = fm_plan(name, device, args.quick, matmul["tflops"] * 1e12, n_cells, mean_tokens)
        fm_details[name] = measure_fm(adata, name, device, m, runs, gene_medians)
        fm.clear_cache()  # free this model before building the next
        d = fm_details[name]
        log(f"{name}: {d['cells_per_s']:.4g} cells/s on {m} cells x {runs} runs "
            f"({d['achieved_tflops']:.3f} TFLOP/s, batch {d['batch_size']})")

    sctop = linear["sctop"]["cells_per_s"]
    result = {
        "device": device_description(device),
        "versions": versions(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/fm_vs_linear.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "n_cells": n_cells,
        "n_genes": args.n_genes,
        "nonzeros_per_cell_mean": float(np.mean(nnz)),
        "linear": {k: v["cells_per_s"] for k, v in linear.items()},
        "fm": {k: v["cells_per_s"] for k, v in fm_details.items()},
        "ratio": {k: sctop / v["cells_per_s"] for k, v in fm_details.items()},
        "note": NOTE,
        "fm_subset_note": "FM cells/s measured on fm_details[*].n_cells cells of the same AnnData, taken at "
        "evenly spaced quantiles of the model's token length (an FM's cost per cell depends only on the "
        "cell's sequence length). Linear cells/s on all n_cells. Medians of `runs` timed calls after a warm-up.",
        "matmul": matmul,
        "linear_details": linear,
        "fm_details": fm_details,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    for k, r in result["ratio"].items():
        log(f"  sctop / {k}: {r:,.0f}x")
    return result


if __name__ == "__main__":
    main()
