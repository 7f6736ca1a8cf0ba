"""Cell-type classification at scale: fit + predict time of the published preset on the synthetic atlas.

A stratified 80/20 split of ``synthetic_atlas(n_cells)`` (labels ``cell_type``); the classifier
(``CellTypeClassifier(preset)``: sctop -> ANOVA -> standardize -> PCA(220, whitened) -> balanced
logistic regression) is fitted on the training AnnData and predicts the test AnnData, both timed
end to end from raw host counts (transform included; the GPU is synchronized by the host copy of
the predictions). Medians over ``--repeats`` after a warm-up on a small subset.

Usage::

    python benchmarks/classify_synthetic.py --device cpu --n-cells 50000
    python benchmarks/classify_synthetic.py --device cpu --n-cells 50000 --solver auto \
        --out benchmarks/results/classify_synthetic_cpu_krylov.json
    python benchmarks/classify_synthetic.py --device cuda --n-cells 1000000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n-cells", type=int, default=None, help="default 50,000 on CPU, 1,000,000 on CUDA")
    ap.add_argument("--n-genes", type=int, default=20_000)
    ap.add_argument("--preset", default="souza-mehta-2026")
    ap.add_argument("--solver", default=None, help="override the preset's PCA solver (e.g. 'auto': block Krylov)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from gpulin.classifier import CellTypeClassifier
    from gpulin.datasets import synthetic_atlas
    from gpulin.evaluation import classification_metrics
    from sklearn.model_selection import train_test_split

    n = args.n_cells or (1_000_000 if args.device == "cuda" else 50_000)
    t0 = time.perf_counter()
    adata = synthetic_atlas(n_cells=n, n_genes=args.n_genes, seed=0)
    gen_s = time.perf_counter() - t0
    print(f"synthetic atlas {adata.shape}, {adata.X.nnz:,} nonzeros, generated in {gen_s:.1f} s", flush=True)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    tr, te = train_test_split(np.arange(n), test_size=0.2, stratify=y, random_state=0)
    train, test = adata[np.sort(tr)].copy(), adata[np.sort(te)].copy()
    warm = adata[: min(n, 5000)].copy()
    overrides = {} if args.solver is None else {"solver": args.solver}
    CellTypeClassifier(args.preset, device=args.device, **overrides).fit(warm, "cell_type").predict(warm)  # warm-up
    fit_s, pred_s = [], []
    for _ in range(args.repeats):
        clf = CellTypeClassifier(args.preset, device=args.device, **overrides)
        t0 = time.perf_counter()
        clf.fit(train, "cell_type")
        fit_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proba = clf.predict_proba(test)
        pred_s.append(time.perf_counter() - t0)
    pred = clf._labels(proba, None)
    yt = test.obs["cell_type"].astype(str).to_numpy()
    metrics = classification_metrics(yt, pred, proba, np.asarray(clf.classes_))
    fit_med, pred_med = statistics.median(fit_s), statistics.median(pred_s)
    versions: dict = {}  # write_json adds the commit, library versions, CPU and GPU
    device_name = f"cpu ({platform.processor() or platform.machine()})"
    if args.device == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        versions["cupy"] = cupy.__version__
    out = {"benchmark": "classify_synthetic.py",
           "command": "python benchmarks/classify_synthetic.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": args.device, "device_name": device_name,
           "machine": platform.platform(), "versions": versions, "preset": args.preset, "overrides": overrides, "n_cells": n,
           "n_train": len(tr), "n_test": len(te), "n_genes": args.n_genes, "nnz": int(adata.X.nnz),
           "fit_seconds": fit_s, "predict_seconds": pred_s, "fit_median_s": fit_med, "predict_median_s": pred_med,
           "train_cells_per_s": len(tr) / fit_med, "predict_cells_per_s": len(te) / pred_med, "metrics": metrics}
    path = Path(args.out or HERE / "results" / f"classify_synthetic_{args.device}.json")
    write_json(path, out)
    print(f"fit {fit_med:.2f} s ({len(tr):,} cells, {len(tr) / fit_med:,.0f} cells/s); predict {pred_med:.2f} s "
          f"({len(te):,} cells, {len(te) / pred_med:,.0f} cells/s); accuracy {metrics['accuracy']:.3f}, "
          f"macro F1 {metrics['macro_f1']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
