"""How close gpulin's randomized PCA and the authors' scikit-learn PCA come to an exact PCA.

On the matrix of the CPU embedding benchmark (``embed_cpu.py``: synthetic atlas, scTOP transform,
per-gene standardization, 220 components) this computes the exact top eigenpairs of ``A^T A``
(float64 Gram matrix over gene tiles, LAPACK ``syevr`` for the wanted pairs), then for the authors'
pipeline (``StandardScaler`` + ``sklearn.decomposition.PCA(220, svd_solver="randomized",
random_state=0)``) and for gpulin's block Krylov PCA at several settings (the default first):

* the share of the optimal variance captured: ``||A V^T||_F^2 / sum_j sigma_j^2`` over the k
  returned components V (1 is optimal);
* per-component relative error of the singular values and ``1 - |cos|`` between each returned
  component and the exact one (first 20 components);
* gpulin's seconds (one run each; ``embed_cpu.py`` has the timing protocol).

The exact step needs about 10 GB and ~10 minutes at 20,000 x 20,000 on two cores.

    python benchmarks/pca_accuracy.py                  # 20,000 x 20,000, as embed_cpu.py
    python benchmarks/pca_accuracy.py --quick          # 4,000 x 4,000, under a minute

Writes ``benchmarks/results/pca_accuracy_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import git_commit, write_json  # noqa: E402

from embed_cpu import versions  # noqa: E402

#: gpulin settings compared: the default first, then the former default (3 iterations, 20%
#: oversampling) and neighbours.
SETTINGS = [
    {"label": "gpulin default", "n_iter": None, "n_oversamples": None},
    {"label": "gpulin n_iter=3, 20% oversampling", "n_iter": 3, "n_oversamples": "k//5"},
    {"label": "gpulin n_iter=3, 100 oversamples", "n_iter": 3, "n_oversamples": 100},
    {"label": "gpulin n_iter=4, 20% oversampling", "n_iter": 4, "n_oversamples": "k//5"},
    {"label": "gpulin n_iter=5, 10 oversamples", "n_iter": 5, "n_oversamples": 10},
]


def exact_top(Z: np.ndarray, k: int, tile: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` singular values (descending) and right singular vectors (k x G) of a dense float64 ``Z``.

    The Gram matrix is built tile of genes by tile of genes (a GEMM with distinct operands): one
    20,000 x 20,000 ``Z.T @ Z`` (SYRK) crashed inside the bundled OpenBLAS on this machine.
    """
    G = Z.shape[1]
    C = np.empty((G, G))
    for g0 in range(0, G, tile):
        C[g0 : g0 + tile] = np.ascontiguousarray(Z[:, g0 : g0 + tile]).T @ Z
    w, V = scipy.linalg.eigh(C, subset_by_index=[G - k, G - 1], overwrite_a=True, check_finite=False, driver="evr")
    return np.sqrt(np.maximum(w[::-1], 0.0)), V[:, ::-1].T


def compare(Z: np.ndarray, sv: np.ndarray, V: np.ndarray, comps: np.ndarray, svals: np.ndarray, n_show: int = 20) -> dict:
    comps = comps / np.linalg.norm(comps, axis=1, keepdims=True)
    k = comps.shape[0]
    captured = float(np.sum((Z @ comps.T) ** 2) / np.sum(sv[:k] ** 2))
    cos = np.abs(np.sum(V[:k] * comps, axis=1))
    return {
        "variance_captured_of_optimal": captured,
        "sv_rel_error_first": (np.abs(svals[:n_show] - sv[:n_show]) / sv[:n_show]).tolist(),
        "one_minus_cos_first": (1.0 - cos[:n_show]).tolist(),
        "sv_rel_error_max": float(np.max(np.abs(svals[:k] - sv[:k]) / sv[:k])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--n-components", type=int, default=220)
    ap.add_argument("--quick", action="store_true", help="4,000 x 4,000 cells x genes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.n_cells, args.n_genes = 4_000, 4_000
    out_path = Path(args.out or HERE / "results" / f"pca_accuracy_cpu{'_quick' if args.quick else ''}.json")

    import gpulin
    from gpulin.datasets import synthetic_atlas
    from sklearn.decomposition import PCA

    k = args.n_components
    adata = synthetic_atlas(n_cells=args.n_cells, n_genes=args.n_genes, seed=0)
    Z = gpulin.sctop_transform(adata.X, device="cpu", dense=True).astype(np.float64)
    mean, std = Z.mean(axis=0), Z.std(axis=0)
    Z -= mean
    Z /= np.where(std > 0, std, 1.0)
    print(f"dense standardized matrix {Z.shape}", flush=True)

    t = time.perf_counter()
    sv, V = exact_top(Z, k)
    exact_seconds = time.perf_counter() - t
    print(f"exact top {k}: {exact_seconds:.0f} s", flush=True)

    rows = {}
    t = time.perf_counter()
    ref = PCA(k, svd_solver="randomized", random_state=0).fit(Z)
    rows["scikit-learn PCA (the authors' pipeline)"] = {
        **compare(Z, sv, V, ref.components_, ref.singular_values_), "seconds_on_dense_float64": time.perf_counter() - t,
    }
    for s in SETTINGS:
        p = {"n_iter": s["n_iter"], "n_oversamples": max(10, k // 5) if s["n_oversamples"] == "k//5" else s["n_oversamples"]}
        est = gpulin.LinearEmbedding(method="sctop", n_components=k, device="cpu", **p)
        t = time.perf_counter()
        est.fit(adata)
        seconds = time.perf_counter() - t
        rows[s["label"]] = {**compare(Z, sv, V, est.components_, est.singular_values_), "seconds": seconds,
                            "n_iter": est.n_iter_, "n_oversamples": p["n_oversamples"]}
    for name, r in rows.items():
        print(f"{name:45s} captured {r['variance_captured_of_optimal']:.5f}  "
              f"sv err (1..10) max {max(r['sv_rel_error_first'][:10]):.1e}  "
              f"1-cos (1..10) max {max(r['one_minus_cos_first'][:10]):.1e}", flush=True)
    result = {
        "benchmark": "pca_accuracy.py",
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "gpulin_commit": git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": versions(),
        "n_cells": args.n_cells, "n_genes": args.n_genes, "n_components": k,
        "exact_seconds": exact_seconds,
        "exact_singular_values_first": sv[:20].tolist(),
        "rows": rows,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
