"""PCA accuracy and time on small real datasets: the randomized default against the exact solver.

On data of a few thousand cells the spectrum is flat past the first components, so the block
Krylov PCA at 4 iterations (the default chosen on the 20k x 20k benchmark matrix, ``pca_accuracy.py``)
leaves the trailing components approximate; on such small problems the default is now 8
(``gpulin.pca.default_krylov_iter``). This measures, for 50 components of the standardized sctop and the centred lognorm matrices of Kang
PBMC (1,556 x 1,267) and PBMC 3k (2,700 cells, genes in >= 3 cells), the exact solver
(``solver="gram"``) against the randomized one at several settings: seconds (``gpulin.embed``,
median of 3 after a warm-up), the largest relative error of the 50 explained variances, and the
share of the exact top-50 variance captured.

Usage::

    python benchmarks/pca_small_data.py [--out benchmarks/results/pca_small_data_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import git_commit, write_json  # noqa: E402

SETTINGS = [("auto (default: 8 iterations here)", {}),
            ("randomized n_iter=4 (the default on larger problems)", {"solver": "randomized", "n_iter": 4}),
            ("randomized n_iter=6", {"solver": "randomized", "n_iter": 6}),
            ("randomized n_iter=4, n_oversamples=50", {"solver": "randomized", "n_iter": 4, "n_oversamples": 50})]


def timed_embed(adata, **kw) -> tuple[float, np.ndarray]:
    import gpulin

    gpulin.embed(adata, device="cpu", n_components=50, **kw)  # warm-up
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        gpulin.embed(adata, device="cpu", n_components=50, **kw)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), np.asarray(adata.uns["X_gpulin"]["variance"], dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "pca_small_data_cpu.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import scanpy as sc

    from gpulin.datasets import load_shared

    rows = []
    for name in ("kang", "pbmc3k"):
        a = load_shared(name)
        if name == "pbmc3k":
            sc.pp.filter_genes(a, min_cells=3)
        for method, scale in (("sctop", True), ("lognorm", False)):
            t_exact, ev_exact = timed_embed(a, method=method, scale=scale, solver="gram")
            rows.append({"dataset": name, "shape": list(a.shape), "method": method, "setting": "exact (solver='gram')",
                         "seconds": t_exact, "max_rel_error": 0.0, "captured": 1.0})
            for label, kw in SETTINGS:
                t, ev = timed_embed(a, method=method, scale=scale, **kw)
                rows.append({"dataset": name, "shape": list(a.shape), "method": method, "setting": label, "seconds": t,
                             "max_rel_error": float(np.max(np.abs(ev - ev_exact) / ev_exact)),
                             "captured": float(ev.sum() / ev_exact.sum())})
            for r in rows[-len(SETTINGS) - 1:]:
                print(json.dumps(r), flush=True)
    out = {"benchmark": "pca_small_data.py", "command": "python benchmarks/pca_small_data.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "gpulin_commit": git_commit(), "n_components": 50, "rows": rows}
    write_json(args.out, out)
    print("\n| dataset (cells x genes) | method | PCA | seconds | max rel. error, 50 variances | variance captured |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} ({r['shape'][0]:,} x {r['shape'][1]:,}) | {r['method']} | {r['setting']} | "
              f"{r['seconds']:.2f} | {r['max_rel_error']:.4f} | {r['captured']:.4f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
