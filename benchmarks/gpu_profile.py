"""Where the time of a GPU ``gpulin.embed`` goes: per-primitive timings of the implicit PCA.

Wraps the operator's products, the CSR slicing and densification, and the orthonormalizations
with device synchronizations, runs ``embed(method="sctop", n_components=50)`` on the synthetic
atlas (counts already on the device), and prints seconds per primitive, for dense row tiles
(GEMM) and for cuSPARSE products. Also times the raw kernels on one block. Needs a CUDA GPU.

    python benchmarks/gpu_profile.py --n-cells 200000 --out profile.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--raw-only", action="store_true", help="skip the embed runs; time the primitives only")
    args = ap.parse_args()

    import gpulin

    if not gpulin.cuda_available():
        raise SystemExit("gpu_profile.py profiles the CUDA kernels: it needs CuPy and a usable CUDA GPU.")
    import cupy as cp
    import cupyx.scipy.sparse as cusp

    import gpulin.implicit as imp
    import gpulin.pca as pca_mod
    from gpulin.datasets import synthetic_atlas

    sync = cp.cuda.Device().synchronize
    acc: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            sync()
            t = time.perf_counter()
            r = fn(*a, **kw)
            sync()
            acc[name].append(time.perf_counter() - t)
            return r
        return wrapper

    t = time.perf_counter()
    adata = synthetic_atlas(n_cells=args.n_cells, n_genes=args.n_genes, seed=0)
    print(f"atlas {adata.shape} nnz {adata.X.nnz:,} in {time.perf_counter() - t:.1f} s", flush=True)
    adata.X = cusp.csr_matrix(adata.X)
    result = {"n_cells": args.n_cells, "n_genes": args.n_genes, "nnz": int(adata.X.nnz), "runs": {}}

    patches = [
        (imp.StandardizedOperator, "matmat"), (imp.StandardizedOperator, "rmatmat"),
        (imp.StandardizedOperator, "matmat_rmatmat"), (imp, "csr_rows_to_dense"),
        (pca_mod, "orthonormalize"), (pca_mod, "_gram64"), (pca_mod, "_qr"), (pca_mod, "_gram32"),
        (pca_mod, "_ritz_vectors"), (pca_mod, "_block_krylov"),
    ]
    originals = [(obj, name, getattr(obj, name)) for obj, name in patches]
    for label, density in () if args.raw_only else (("dense_tiles", 0.01), ("cusparse", 1.1)):
        imp.TILE_DENSITY = density
        for i in range(3):
            acc.clear()
            for obj, name, fn in originals:
                setattr(obj, name, timed(name, fn))
            sync()
            t = time.perf_counter()
            gpulin.embed(adata, device="cuda", method="sctop", n_components=50)
            sync()
            total = time.perf_counter() - t
            for obj, name, fn in originals:
                setattr(obj, name, fn)
        result["runs"][label] = {"total": total, "timings": adata.uns["X_gpulin"]["timings"],
                                 "primitives": {k: {"n": len(v), "s": sum(v)} for k, v in acc.items()}}
        print(label, json.dumps(result["runs"][label], default=float), flush=True)
        # untimed (no per-primitive syncs)
        ts = []
        for i in range(3):
            sync()
            t = time.perf_counter()
            gpulin.embed(adata, device="cuda", method="sctop", n_components=50)
            sync()
            ts.append(time.perf_counter() - t)
        result["runs"][label]["untimed"] = ts
        print(label, "untimed", ts, adata.uns["X_gpulin"]["timings"], flush=True)

    # raw kernels on the first ~tile of rows
    X = adata.X
    rows = min(X.shape[0], (1 << 30) // (4 * X.shape[1]))
    W = cp.random.standard_normal((X.shape[1], 60), dtype=cp.float32)
    U = cp.random.standard_normal((X.shape[0], 60), dtype=cp.float32)

    def bench(fn, reps=5):
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t) / reps

    from gpulin._gpu_kernels import csr_rows_to_dense

    blk = X[:rows]
    dense = blk.toarray()
    raw = {
        "tile_rows": rows,
        "slice": bench(lambda: X[:rows]),
        "cupyx_toarray": bench(lambda: blk.toarray()),
        "scatter_kernel": bench(lambda: csr_rows_to_dense(X, 0, rows)),
        "gemm_AW": bench(lambda: dense @ W),
        "gemm_AtU": bench(lambda: dense.T @ U[:rows]),
        "spmm_AW_tile": bench(lambda: blk @ W),
        "spmm_AtU_tile": bench(lambda: blk.T @ U[:rows]),
        "spmm_AW_full": bench(lambda: X @ W),
        "spmm_AtU_full": bench(lambda: X.T @ U),
        "sctop_transform": bench(lambda: gpulin.transforms.transform_implicit(X, "sctop", device="cuda"), 3),
        "csr_T_full": bench(lambda: X.T.tocsr()),
    }
    # pieces of the generic scTOP block on the first transform block (GPU path of _sctop_block)
    from gpulin._validation import check_counts
    from gpulin.implicit import _row_ids
    from gpulin.transforms import _block_view, _sctop_block, plan_row_blocks
    from gpulin._backend import get_backend

    be = get_backend("cuda")
    indptr_h = cp.asnumpy(X.indptr).astype(np.int64)
    bounds = plan_row_blocks(indptr_h, X.shape[1], be, None)
    b0 = _block_view(X, indptr_h, int(bounds[0]), int(bounds[1]), be)
    row = _row_ids(b0, cp)
    w64 = b0.data.astype(cp.float64)
    comp = (row << 31) | (b0.data + 1).view(cp.int32).astype(cp.int64)
    ones_col = cp.zeros(int(b0.nnz), dtype=cp.int32)
    seg = cusp.csr_matrix((w64, ones_col, b0.indptr), shape=(b0.shape[0], 1))
    one = cp.ones(1, dtype=cp.float64)
    raw["transform_parts"] = {
        "n_blocks": len(bounds) - 1, "block0_nnz": int(b0.nnz),
        "check_counts": bench(lambda: check_counts(X, be), 3),
        "sctop_block0": bench(lambda: _sctop_block(b0, X.shape[1], be), 3),
        "row_ids": bench(lambda: _row_ids(b0, cp), 3),
        "bincount_f64": bench(lambda: cp.bincount(row, weights=w64, minlength=b0.shape[0]), 3),
        "segsum_spmv": bench(lambda: seg @ one, 3),
        "argsort_i64": bench(lambda: cp.argsort(comp), 3),
        "cumsum_f64": bench(lambda: cp.cumsum(w64), 3),
    }
    result["raw"] = raw
    print("raw", json.dumps(raw), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
