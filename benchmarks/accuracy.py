"""pipeline.md section 4 in one run: gpulin vs the authors' dense reference (sctop + scikit-learn).

For every task both sides follow the same protocol (splits, type filters, metrics) and are timed
end to end from raw counts (transform included), each as the median of ``--repeats`` runs
(default 3) after warm-up tasks (one pipeline, one projection), with gpulin's and the reference's runs interleaved (gpulin,
reference, gpulin, ...) so that a slow spell of this shared machine falls on both sides; the
speedup is the ratio of the medians. ``--reference-repeats`` runs the reference fewer times (it
takes 1.5-20 s per task). Writes ``benchmarks/results/accuracy_<device>.json`` and prints a
markdown table (copied into ``benchmarks/README.md``).

Usage::

    python benchmarks/accuracy.py [--device cpu|cuda] [--skip-reference] [--repeats 3] [--reference-repeats N]
                                  [--tasks baron_human_100 ...]
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

REFERENCE = {  # pipeline.md section 4 (macro F1, accuracy)
    "baron_human_100": (0.980, 0.986), "baron_mouse_100": (0.981, 0.985),
    "baron_human_20": (0.958, 0.976), "baron_mouse_20": (0.901, 0.967),
    "human_to_mouse_pipeline": (0.662, 0.811), "human_to_mouse_projection": (0.564, 0.686),
    "mouse_to_human_pipeline": (0.763, 0.819), "mouse_to_human_projection": (0.594, 0.603),
    "kang_cell_type": (0.922, 0.928), "kang_stim": (0.990, 0.990),
}


def load():
    from gpulin.datasets import load_orthologs, load_shared

    return {"h": load_shared("baron_human"), "m": load_shared("baron_mouse"), "kang": load_shared("kang"),
            "orth": load_orthologs()}


def tasks(d):
    """name -> (kind, kwargs)."""
    H2M = ("gene.name", "human.gene.name")
    M2H = ("human.gene.name", "gene.name")
    return {
        "baron_human_100": ("split", dict(adata=d["h"], key="cell_type1", min_cells=100, protocol="split5")),
        "baron_mouse_100": ("split", dict(adata=d["m"], key="cell_type1", min_cells=100, protocol="split5")),
        "baron_human_20": ("split", dict(adata=d["h"], key="cell_type1", min_cells=20, protocol="split5")),
        "baron_mouse_20": ("split", dict(adata=d["m"], key="cell_type1", min_cells=20, protocol="split5")),
        "human_to_mouse_pipeline": ("transfer", dict(ref=d["h"], query=d["m"], cols=H2M, model="pipeline")),
        "human_to_mouse_projection": ("transfer", dict(ref=d["h"], query=d["m"], cols=H2M, model="projection")),
        "mouse_to_human_pipeline": ("transfer", dict(ref=d["m"], query=d["h"], cols=M2H, model="pipeline")),
        "mouse_to_human_projection": ("transfer", dict(ref=d["m"], query=d["h"], cols=M2H, model="projection")),
        "kang_cell_type": ("split", dict(adata=d["kang"], key="cluster_id", min_cells=100, protocol="split5")),
        "kang_stim": ("split", dict(adata=d["kang"], key="group_id", min_cells=100, protocol="kfold")),
    }


# -- gpulin ---------------------------------------------------------------------------------------
def run_gpulin(kind, kw, device, orth):
    from gpulin import evaluate

    if kind == "split":
        t = evaluate(kw["adata"], kw["key"], kw["protocol"], device=device, min_cells=kw["min_cells"], progress=False)
    else:
        t = evaluate(kw["ref"], "cell_type1", "transfer", query=kw["query"], orthologs=orth,
                     ortholog_cols=kw["cols"], approach=kw["model"], device=device, min_cells=20)
    return float(t["macro_f1"].mean()), float(t["accuracy"].mean())


# -- the authors' dense reference ------------------------------------------------------------------
def ref_pipeline_fit_predict(Ztr, ytr, Zte):
    from sklearn.decomposition import PCA
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(20000, Ztr.shape[1])
    ncomp = min(220, Ztr.shape[0] - 1, k)
    pipe = make_pipeline(SelectKBest(f_classif, k=k), StandardScaler(),
                         PCA(ncomp, whiten=True, svd_solver="randomized", random_state=0),
                         LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))
    pipe.fit(Ztr, ytr)
    return pipe.predict(Zte)


def sctop_dense(X):
    import sctop

    return sctop.process(X.T.toarray() if hasattr(X, "toarray") else X.T).to_numpy().T


def run_reference(kind, kw, orth):
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    from gpulin import map_orthologs

    if kind == "split":
        a = kw["adata"]
        y = a.obs[kw["key"]].astype(str).to_numpy()
        vals, counts = np.unique(y, return_counts=True)
        keep = np.isin(y, vals[counts >= kw["min_cells"]])
        Z, y = sctop_dense(a.X[keep]), y[keep]
        if kw["protocol"] == "split5":
            splits = [next(StratifiedShuffleSplit(1, test_size=0.2, random_state=s).split(Z, y)) for s in range(5)]
        else:
            splits = list(StratifiedKFold(10, shuffle=True, random_state=42).split(Z, y))
        f1s, accs = [], []
        for tr, te in splits:
            p = ref_pipeline_fit_predict(Z[tr], y[tr], Z[te])
            f1s.append(f1_score(y[te], p, average="macro"))
            accs.append(accuracy_score(y[te], p))
        return float(np.mean(f1s)), float(np.mean(accs))
    ref, query = kw["ref"], map_orthologs(kw["query"], orth, *kw["cols"])
    shared = ref.var_names.intersection(query.var_names)
    yr = ref.obs["cell_type1"].astype(str).to_numpy()
    vals, counts = np.unique(yr, return_counts=True)
    keep = np.isin(yr, vals[counts >= 20])
    ref = ref[keep, shared]
    yr = yr[keep]
    query = query[:, shared]
    yq = query.obs["cell_type1"].astype(str).to_numpy()
    on = np.isin(yq, np.unique(yr))
    if kw["model"] == "pipeline":
        p = ref_pipeline_fit_predict(sctop_dense(ref.X), yr, sctop_dense(query.X[on]))
    else:
        import pandas as pd
        import sctop

        types = np.unique(yr)
        basis = pd.concat([sctop.process(pd.DataFrame(ref.X[yr == t].T.toarray(), index=shared), average=True)
                           for t in types], axis=1)
        basis.columns = types
        sample = pd.DataFrame(sctop_dense(query.X[on]).T, index=shared)
        a = sctop.score(basis, sample).to_numpy()
        p = types[a.argmax(axis=0)]
    return float(f1_score(yq[on], p, average="macro")), float(accuracy_score(yq[on], p))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="runs per task and side (the medians are reported)")
    ap.add_argument("--reference-repeats", type=int, default=None,
                    help="reference runs per task (default: --repeats), interleaved with gpulin's")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.repeats < 1 or (args.reference_repeats is not None and args.reference_repeats < 0):
        ap.error("--repeats must be >= 1 and --reference-repeats >= 0")
    warnings.filterwarnings("ignore")
    d = load()
    all_tasks = tasks(d)
    names = args.tasks or list(all_tasks)
    results = {}
    n_ref = 0 if args.skip_reference else (args.repeats if args.reference_repeats is None else args.reference_repeats)
    # warm-up (imports, JIT) of both code paths, the pipeline and the projection (sctop.score's
    # first call cost ~2.5 s inside the first projection task's timing before)
    warm_up = ("kang_cell_type", "mouse_to_human_projection")
    for name in warm_up:
        run_gpulin(*all_tasks[name], args.device, d["orth"])
        if n_ref:
            run_reference(*all_tasks[name], d["orth"])
    for name in names:
        kind, kw = all_tasks[name]
        runs, ref_runs = [], []
        for i in range(max(args.repeats, n_ref)):
            if i < args.repeats:
                t0 = time.perf_counter()
                f1, acc = run_gpulin(kind, kw, args.device, d["orth"])
                runs.append(time.perf_counter() - t0)
            if i < n_ref:
                t0 = time.perf_counter()
                f1r, accr = run_reference(kind, kw, d["orth"])
                ref_runs.append(time.perf_counter() - t0)
        row = {"gpulin_macro_f1": f1, "gpulin_accuracy": acc, "gpulin_seconds": float(np.median(runs)),
               "gpulin_seconds_runs": runs,
               "published_macro_f1": REFERENCE[name][0], "published_accuracy": REFERENCE[name][1]}
        if n_ref:
            row.update(reference_macro_f1=f1r, reference_accuracy=accr, reference_seconds=float(np.median(ref_runs)),
                       reference_seconds_runs=ref_runs)
            row["speedup"] = row["reference_seconds"] / row["gpulin_seconds"]
        results[name] = row
        print(name, json.dumps({k: round(v, 3) for k, v in row.items() if not isinstance(v, list)}), flush=True)
    import gpulin

    out = {"benchmark": "accuracy.py", "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": args.device,
           "machine": platform.platform(), "gpulin": gpulin.__version__,
           "gpulin_commit": git_commit(), "tasks": results}
    path = Path(args.out or HERE / "results" / f"accuracy_{args.device}.json")
    write_json(path, out)
    print("\n| task | gpulin F1 / acc | reference F1 / acc (this run) | published F1 | gpulin s | reference s | speedup |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ref = f"{r['reference_macro_f1']:.3f} / {r['reference_accuracy']:.3f}" if "reference_macro_f1" in r else "-"
        ref_s = f"{r['reference_seconds']:.1f} | {r['speedup']:.1f}x" if "speedup" in r else "- | -"
        print(f"| {name} | {r['gpulin_macro_f1']:.3f} / {r['gpulin_accuracy']:.3f} | {ref} | {r['published_macro_f1']:.3f} | "
              f"{r['gpulin_seconds']:.2f} | {ref_s} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
