"""Where the protocol is ours to choose: cross-species transfer variants and novel-type detection.

Transfer (pipeline.md section 3-4 protocol: 1:1 orthologs, training types >= 20 cells, every query
cell of a shared type scored, macro F1 over true and predicted labels) for the published preset and
variants of it, both directions on Baron; then novel-type detection (each Baron type with >= 50
cells left out of training in turn with a stratified 20% of the other types' cells, AUROC of the
novelty score = 1 - top probability, of the left-out type's cells against those held-out cells),
and the same for the scTOP projection's two novelty scores (``ScTOPProjection.novelty_score``:
the negative top order parameter, and the residual share outside the basis span).

The transfer also tries ensembles of the projection and the regressions (the issue's "ensembles of
projection and regression"): each model's class scores for a cell (decision values; the projection's
order parameters) are standardized over the classes (mean 0, std 1 per cell; for the logistic
head the same as standardizing its log-probabilities) and summed with equal weights.

Usage::

    python benchmarks/beyond_reference.py [--device cpu|cuda] [--out results/beyond_reference_cpu.json]
    python benchmarks/beyond_reference.py --skip-transfer --out benchmarks/results/novel_cpu.json

Prints markdown tables (copied into ``benchmarks/README.md``).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _provenance import git_commit, write_json  # noqa: E402

#: name -> (preset, overrides)
VARIANTS = {
    "preset souza-mehta-2026": ("souza-mehta-2026", {}),
    "preset souza-mehta-2026, solver='auto' (exact PCA here)": ("souza-mehta-2026", {"solver": "auto"}),
    "preset cross-species (class-balanced ridge, 50 comps)": ("cross-species", {}),
    "preset cross-species, PCA seed 1": ("cross-species", {"seed": 1}),
    "preset cross-species, PCA seed 2": ("cross-species", {"seed": 2}),
    "preset cross-species, PCA seed 3": ("cross-species", {"seed": 3}),
    "preset cross-species, exact PCA": ("cross-species", {"solver": "gram"}),
    "model='logistic', n_components=50": ("cross-species", {"model": "logistic"}),
    "model='logistic', n_components=50, PCA seed 1": ("cross-species", {"model": "logistic", "seed": 1}),
    "model='logistic', n_components=50, PCA seed 2": ("cross-species", {"model": "logistic", "seed": 2}),
    "model='logistic', n_components=50, PCA seed 3": ("cross-species", {"model": "logistic", "seed": 3}),
    "model='logistic', n_components=50, exact PCA": ("cross-species", {"model": "logistic", "solver": "gram"}),
    "model='ridge' (class-balanced, 220 comps)": ("souza-mehta-2026", {"model": "ridge", "solver": "auto"}),
    "model='ridge', n_components=50": ("souza-mehta-2026", {"model": "ridge", "n_components": 50, "solver": "auto"}),
    "model='ridge', n_components=100": ("souza-mehta-2026", {"model": "ridge", "n_components": 100, "solver": "auto"}),
    "whiten=False": ("souza-mehta-2026", {"whiten": False}),
    "preset lognorm-ridge": ("lognorm-ridge", {}),
}
DIRECTIONS = {"human_to_mouse": ("h", "m", ("gene.name", "human.gene.name")),
              "mouse_to_human": ("m", "h", ("human.gene.name", "gene.name"))}
PUBLISHED = {"human_to_mouse": (0.662, 0.811), "mouse_to_human": (0.763, 0.819)}
#: name -> members of an equal-weight ensemble of per-cell standardized class scores
ENSEMBLES = {
    "ensemble: souza-mehta-2026 + projection": ("souza-mehta-2026", "projection"),
    "ensemble: cross-species + projection": ("cross-species", "projection"),
    "ensemble: souza-mehta-2026 + cross-species": ("souza-mehta-2026", "cross-species"),
    "ensemble: souza-mehta-2026 + cross-species + projection": ("souza-mehta-2026", "cross-species", "projection"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-transfer", action="store_true", help="novel-type detection only")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import gpulin
    from gpulin.datasets import load_orthologs, load_shared
    from gpulin import evaluate

    d = {"h": load_shared("baron_human"), "m": load_shared("baron_mouse")}
    orth = load_orthologs()
    transfer: dict[str, dict[str, dict[str, float]]] = {}
    for name, (preset, overrides) in ({} if args.skip_transfer else VARIANTS).items():
        transfer[name] = {}
        for direction, (ref, query, cols) in DIRECTIONS.items():
            t0 = time.perf_counter()
            t = evaluate(d[ref], "cell_type1", "transfer", query=d[query], orthologs=orth, ortholog_cols=cols,
                         min_cells=20, device=args.device, preset=preset, **overrides)
            transfer[name][direction] = {"macro_f1": float(t["macro_f1"].iloc[0]),
                                         "accuracy": float(t["accuracy"].iloc[0]),
                                         "seconds": time.perf_counter() - t0}
        print(name, json.dumps({k: round(v["macro_f1"], 3) for k, v in transfer[name].items()}), flush=True)
    if not args.skip_transfer:
        for name, r in transfer_ensembles(d, orth, args.device).items():
            transfer[name] = r
            print(name, json.dumps({k: round(v["macro_f1"], 3) for k, v in r.items()}), flush=True)
    novel = {}
    for key, species in (("h", "baron_human"), ("m", "baron_mouse")):
        t = evaluate(d[key], "cell_type1", "novel", min_cells=50, device=args.device, progress=False)
        novel[species] = {"per_type": dict(zip(t["held_out_type"], t["novelty_auroc"].astype(float))),
                          "mean_auroc": float(t["novelty_auroc"].mean()),
                          "negatives": "held-out cells of the known types (stratified 20%)"}
        print(species, "mean novelty AUROC", round(novel[species]["mean_auroc"], 3), flush=True)
    novel_projection = {species: projection_novelty(d[key], args.device)
                        for key, species in (("h", "baron_human"), ("m", "baron_mouse"))}
    for species, r in novel_projection.items():
        print(species, "projection novelty AUROC", {k: round(v["mean_auroc"], 3) for k, v in r.items()}, flush=True)
    out = {"benchmark": "beyond_reference.py", "command": "python benchmarks/beyond_reference.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": args.device,
           "machine": platform.platform(), "gpulin": gpulin.__version__, "gpulin_commit": git_commit(), "published": PUBLISHED,
           "transfer": transfer, "novel": novel, "novel_projection": novel_projection}
    path = Path(args.out or HERE / "results" / f"beyond_reference_{args.device}.json")
    write_json(path, out)
    print("\n| variant (overrides of the preset) | human→mouse F1 / acc | mouse→human F1 / acc |")
    print("|---|---|---|")
    print("| published reference (sctop + sklearn) | " + " | ".join(f"{f:.3f} / {a:.3f}" for f, a in PUBLISHED.values()) + " |")
    for name, r in transfer.items():
        print(f"| {name} | " + " | ".join(f"{r[k]['macro_f1']:.3f} / {r[k]['accuracy']:.3f}" for k in DIRECTIONS) + " |")
    print("\n| dataset | held-out types | AUROC per type | mean AUROC |\n|---|---|---|---|")
    for species, r in novel.items():
        per = ", ".join(f"{k} {v:.3f}" for k, v in r["per_type"].items())
        print(f"| {species} | {len(r['per_type'])} | {per} | **{r['mean_auroc']:.3f}** |")
    print("\n| dataset | projection novelty score | mean AUROC |\n|---|---|---|")
    for species, r in novel_projection.items():
        for score, v in r.items():
            print(f"| {species} | {score} | {v['mean_auroc']:.3f} |")
    print(f"wrote {path}")


def transfer_ensembles(d: dict, orth, device: str) -> dict[str, dict[str, dict[str, float]]]:
    """The transfer protocol for the :data:`ENSEMBLES`: {name: {direction: {"macro_f1", "accuracy"}}}.

    Both sides are cut to the shared 1:1 orthologs (``map_orthologs``), the reference to its types
    with >= 20 cells, the query to its cells of those types, as ``evaluate(..., "transfer")`` does
    (the single models' F1 here equal its rows). Each member's class scores are standardized per
    cell over the classes, then summed; the prediction is the argmax.
    """
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from gpulin import CellTypeClassifier, ScTOPProjection, map_orthologs

    def standardized(s):
        s = np.asarray(s, dtype=np.float64)
        return (s - s.mean(axis=1, keepdims=True)) / np.maximum(s.std(axis=1, keepdims=True), 1e-12)

    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in ENSEMBLES}
    for direction, (ref_key, query_key, cols) in DIRECTIONS.items():
        ref, query = d[ref_key], map_orthologs(d[query_key], orth, *cols)
        shared = ref.var_names.intersection(query.var_names)
        y_ref = ref.obs["cell_type1"].astype(str).to_numpy()
        types, counts = np.unique(y_ref, return_counts=True)
        keep = np.isin(y_ref, types[counts >= 20])
        ref = ref[keep, shared].copy()
        y_query = query.obs["cell_type1"].astype(str).to_numpy()
        on = np.isin(y_query, types[counts >= 20])
        query, y_query = query[on, shared].copy(), y_query[on]
        proj = ScTOPProjection(device=device).fit(ref, "cell_type1")
        classes = np.asarray(proj.classes_)
        scores = {"projection": standardized(proj.order_parameters(query).to_numpy())}
        for preset in ("souza-mehta-2026", "cross-species"):
            clf = CellTypeClassifier(preset, device=device).fit(ref, "cell_type1")
            assert np.array_equal(np.asarray(clf.classes_), classes)
            decision = clf.decision_function(query)  # (cells, classes): these tasks have >= 8 types
            scores[preset] = standardized(decision)
        for name, members in ENSEMBLES.items():
            pred = classes[np.argmax(sum(scores[m] for m in members), axis=1)]
            out[name][direction] = {"macro_f1": float(f1_score(y_query, pred, average="macro")),
                                    "accuracy": float(accuracy_score(y_query, pred))}
    return out


def projection_novelty(adata, device: str, min_cells: int = 50) -> dict[str, dict]:
    """The novel protocol of ``evaluate`` (same splits) for ``ScTOPProjection``'s novelty scores:
    {score: {"per_type": {type: AUROC}, "mean_auroc": float}} for score "order" and "residual"."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedShuffleSplit

    from gpulin import ScTOPProjection
    from gpulin.classifier import labels_of
    from gpulin.evaluation import _held_out_share

    y = labels_of(adata, "cell_type1")
    types, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, types[counts >= min_cells])
    X, y = sp.csr_matrix(adata.X)[keep], y[keep]
    per: dict[str, dict[str, float]] = {"order": {}, "residual": {}}
    for t in np.unique(y):
        others = np.flatnonzero(y != t)
        fit, held = next(StratifiedShuffleSplit(1, test_size=_held_out_share(y[others]), random_state=0)
                         .split(others, y[others]))
        tr, te = others[fit], np.concatenate([np.flatnonzero(y == t), others[held]])
        proj = ScTOPProjection(None, device=device).fit(X[tr], y[tr])
        for score in per:
            per[score][str(t)] = float(roc_auc_score(y[te] == t, proj.novelty_score(X[te], score=score)))
    return {score: {"per_type": v, "mean_auroc": float(np.mean(list(v.values())))} for score, v in per.items()}


if __name__ == "__main__":
    main()
