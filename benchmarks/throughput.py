"""Throughput sweep: cells/s and per-stage time of ``gpulin.embed`` vs cell count, with peers.

On CPU (default sizes 10k-100k cells x 20k genes): gpulin ``sctop`` and ``lognorm`` (50
components), scanpy (normalize_total + log1p + pca) and, where its dense float64 matrices fit in
the available memory, the authors' reference (``sctop.process`` + ``StandardScaler`` +
scikit-learn ``PCA(50)``, one run in a subprocess: it takes minutes) in the same run. On CUDA (100k-3M):
gpulin with the counts on the device, ``torch.pca_lowrank`` on a sparse CUDA tensor of the
log-normalized matrix, ``cupyx.scipy.sparse.linalg.svds``, and rapids-singlecell when importable.
The scaling exponent of time vs nonzeros is fitted per tool (least squares on log-log).

Usage::

    python benchmarks/throughput.py --device cpu [--quick] [--sizes 10000 20000 50000]
    python benchmarks/throughput.py --device cuda --sizes 100000 300000 1000000 3000000

Writes ``benchmarks/results/throughput_<device>.json`` and a log-log PNG of cells/s vs cells.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _memory import PeakMemory  # noqa: E402
from embed_cpu import _csr_bytes  # noqa: E402
from _provenance import git_commit, write_json  # noqa: E402


def _measured(fn, sync, repeats, n_cells, csr_bytes, gpu=False, **extra):
    """Median seconds of ``repeats`` runs after a warm-up, cells/s and the peak memory of them all
    (host RSS above the level before, and the CuPy pool's high-water mark on a GPU), also as
    multiples of the CSR input's size."""
    with PeakMemory(gpu=gpu) as mem:
        s = _timed(fn, sync, repeats)
    out = {"seconds": s, "cells_per_s": n_cells / s, **extra, "peak_host_bytes": mem.host_bytes,
           "peak_host_over_csr": mem.host_bytes / csr_bytes}
    if mem.gpu_bytes is not None:
        out.update(peak_gpu_bytes=mem.gpu_bytes, peak_gpu_over_csr=mem.gpu_bytes / csr_bytes)
    return out


def _timed(fn, sync, repeats):
    times = []
    for i in range(repeats + 1):  # first call is a warm-up
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import gpulin
    from gpulin.datasets import synthetic_atlas

    sizes = args.sizes or ([5_000, 10_000] if args.quick else
                           [10_000, 20_000, 50_000, 100_000] if args.device == "cpu" else
                           [100_000, 300_000, 1_000_000])
    backend = gpulin.get_backend(args.device)
    sync = backend.synchronize
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    rows = []
    for n in tqdm(sizes, desc="cells"):
        adata = synthetic_atlas(n_cells=n, n_genes=args.n_genes, seed=0)
        nnz = int(adata.X.nnz)
        csr_bytes = _csr_bytes(adata.X)
        if backend.is_gpu and nnz < 2**31:  # CuPy <= 14.2 narrows a larger indptr to int32
            import cupyx.scipy.sparse as cusp

            adata.X = cusp.csr_matrix(adata.X)
        entry = {"n_cells": n, "nnz": nnz, "tools": {}}
        for method in ("sctop", "lognorm"):
            stages = {}

            def run(method=method):
                gpulin.embed(adata, device=args.device, method=method, n_components=50, scale=method == "sctop")
                stages.update(adata.uns["X_gpulin"]["timings"])

            entry["tools"][f"gpulin_{method}"] = _measured(run, sync, args.repeats, n, csr_bytes, backend.is_gpu)
            entry["tools"][f"gpulin_{method}"]["stages"] = dict(stages)
        if not args.skip_peers and not backend.is_gpu:
            try:
                import anndata as ad
                import scanpy as sc

                def run_scanpy():
                    b = ad.AnnData(adata.X.copy())
                    sc.pp.normalize_total(b, target_sum=1e4)
                    sc.pp.log1p(b)
                    sc.pp.pca(b, n_comps=50, random_state=0)

                entry["tools"]["scanpy"] = _measured(run_scanpy, sync, args.repeats, n, csr_bytes)
            except ImportError:
                pass
        if not args.skip_peers and not backend.is_gpu:
            entry["tools"]["reference"] = _reference_peer(adata, args.n_genes)
        if not args.skip_peers and backend.is_gpu:
            entry["tools"].update(_gpu_peers(adata, sync, args.repeats, csr_bytes))
        rows.append(entry)
        print(json.dumps({t: round(v["cells_per_s"]) if np.isfinite(v["cells_per_s"]) else v.get("error")
                          for t, v in entry["tools"].items()}), flush=True)
        if backend.is_gpu:
            import cupy as cp

            cp.get_default_memory_pool().free_all_blocks()
    fits = {}
    for tool in rows[0]["tools"]:
        pts = [(r["nnz"], r["tools"][tool]["seconds"]) for r in rows
               if tool in r["tools"] and np.isfinite(r["tools"][tool]["seconds"])]
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            fits[tool] = float(np.polyfit(x, y, 1)[0])
    out = {"benchmark": "throughput.py", "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": args.device,
           "machine": platform.platform(), "gpulin_commit": git_commit(), "rows": rows, "time_vs_nnz_exponent": fits}
    path = Path(args.out or HERE / "results" / f"throughput_{args.device}{'_quick' if args.quick else ''}.json")
    write_json(path, out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for tool in rows[0]["tools"]:
            pts = [(r["n_cells"], r["tools"][tool]["cells_per_s"]) for r in rows if tool in r["tools"]]
            ax.plot(*zip(*pts), marker="o", label=f"{tool} (t ~ nnz^{fits.get(tool, float('nan')):.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel("cells / s")
        ax.set_title(f"embedding throughput, {args.n_genes:,} genes ({args.device})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print(f"wrote {path}; exponents {fits}")


#: The dense reference holds about this many float64 copies of the cells x genes matrix at its peak
#: (measured: 14.4 GB of RSS growth at 20k x 20k, ``results/embed_cpu.json``).
REFERENCE_DENSE_COPIES = 4.5


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _reference_peer(adata, n_genes: int) -> dict:
    """The authors' dense pipeline (``embed_cpu.job_reference``, 50 components) in a subprocess,
    or a note when its dense matrices would not fit in 80% of the available memory."""
    import tempfile

    from embed_cpu import job_reference, run_child

    n = adata.n_obs
    need = n * n_genes * 8 * REFERENCE_DENSE_COPIES
    if need > 0.8 * _mem_available_bytes():
        return {"error": f"skipped: the dense reference needs ~{need / 1e9:.0f} GB", "seconds": float("nan"),
                "cells_per_s": float("nan")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas.h5ad"
        adata.write_h5ad(path)
        r = run_child(job_reference, str(path), 50)
    return {"seconds": r["seconds"], "cells_per_s": n / r["seconds"], "stages": r["stages"],
            "note": "one run (sctop.process + StandardScaler + PCA(50, randomized))"}


def _gpu_peers(adata, sync, repeats, csr_bytes) -> dict:
    """torch.pca_lowrank on a sparse CUDA tensor, cupyx svds, rapids-singlecell (if present)."""
    import cupy as cp

    import gpulin

    out = {}
    n = adata.n_obs
    L = gpulin.lognorm_transform(adata.X, device="cuda")
    if len(L.blocks) == 1:
        X = L.blocks[0]
    elif sum(b.nnz for b in L.blocks) < 2**31:
        # lognorm keeps the pattern of the counts: one CSR from the blocks' values and X's pattern
        import cupyx.scipy.sparse as cusp

        Xc = cusp.csr_matrix(adata.X) if not isinstance(adata.X, cusp.csr_matrix) else adata.X
        X = cusp.csr_matrix((cp.concatenate([b.data for b in L.blocks]), Xc.indices, Xc.indptr), shape=Xc.shape)
    else:
        note = "skipped: 2^31 nonzeros or more do not fit one cupyx CSR"
        return {t: {"error": note, "seconds": float("nan"), "cells_per_s": float("nan")}
                for t in ("torch_pca_lowrank", "cupyx_svds")}
    try:
        import torch

        t = torch.sparse_csr_tensor(torch.as_tensor(X.indptr.astype(cp.int64), device="cuda"),
                                    torch.as_tensor(X.indices.astype(cp.int64), device="cuda"),
                                    torch.as_tensor(X.data, device="cuda"), size=X.shape).to_sparse_coo()
        # (pca_lowrank takes its sparse path for COO only; CSR would fail in its dense mean)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        s = _timed(lambda: torch.pca_lowrank(t, q=50, center=True), torch.cuda.synchronize, repeats)
        peak = int(torch.cuda.max_memory_allocated() - base)  # torch's own allocator, above its input
        out["torch_pca_lowrank"] = {"seconds": s, "cells_per_s": n / s, "note": "lognorm given; PCA only",
                                    "peak_gpu_bytes": peak, "peak_gpu_over_csr": peak / csr_bytes}
    except Exception as exc:  # pragma: no cover - depends on the GPU stack
        out["torch_pca_lowrank"] = {"error": str(exc)[:200], "seconds": float("nan"), "cells_per_s": float("nan")}
    try:
        from cupyx.scipy.sparse.linalg import svds

        out["cupyx_svds"] = _measured(lambda: svds(X, k=50), sync, repeats, n, csr_bytes, gpu=True,
                                      note="lognorm given; uncentred")
    except Exception as exc:  # pragma: no cover
        out["cupyx_svds"] = {"error": str(exc)[:200], "seconds": float("nan"), "cells_per_s": float("nan")}
    try:
        import anndata as ad
        import rapids_singlecell as rsc

        def run():
            b = ad.AnnData(adata.X.copy())
            rsc.pp.normalize_total(b, target_sum=1e4)
            rsc.pp.log1p(b)
            rsc.pp.pca(b, n_comps=50)

        out["rapids_singlecell"] = _measured(run, sync, repeats, n, csr_bytes, gpu=True)
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    main()
