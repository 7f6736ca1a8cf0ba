"""Evaluation harness reproducing the published protocols (pipeline.md sections 2-4).

Protocols
---------
split5    5 stratified 80/20 shuffle splits (random_state 0..4), types with >= ``min_cells`` cells.
kfold     stratified k-fold (shuffle, seed 42), e.g. disease state with k = 10.
group     leave one group (donor / sample) out.
transfer  fit on ``adata``, predict ``query`` (optionally through a 1:1 ortholog table), scored on
          the labels both share; ``approach="projection"`` uses the scTOP basis projection.
novel     leave each type with >= ``min_cells`` cells out of training in turn (and a stratified
          20% of the other types' cells); AUROC of the novelty score for that type's cells against
          those held-out cells of known types.

The transform is per cell, so it is computed once per dataset and rows are taken per split; gene
selection, standardization, PCA and the classifier are fitted on the training cells only.

Besides the tidy per-split table, classification protocols pool the test predictions of all splits
into a per-class report (:func:`pooled_per_class`) and a confusion matrix (:func:`pooled_confusion`,
rows = true label, columns = predicted; both kept in ``table.attrs`` as plain dicts, so tables still
print and concatenate); ``out_dir=`` writes them as
``metrics.csv``, ``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .classifier import (PRESETS, UNASSIGNED, CellTypeClassifier, ScTOPProjection, _assign, labels_of,
                         warn_uncalibrated_threshold)
from ._backend import backend_of, get_backend, is_gpu_array, releases_memory, resolve_backend
from ._concurrent import map_tasks, task_workers
from ._validation import check_int
from .embed import _matrix_and_genes, align_genes, matched_genes
from .implicit import thread_workers
from .transforms import transform_implicit

PROTOCOLS = ("split5", "kfold", "group", "transfer", "novel")


def _is_unassigned(values: Any) -> np.ndarray:
    """Which entries are :data:`UNASSIGNED` (an object array may mix it with int or bool labels)."""
    return np.array([isinstance(v, str) and v == UNASSIGNED for v in values], dtype=bool)


def _sorted_labels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, with :data:`UNASSIGNED` (the predictions below a
    threshold) last: it sorts with string labels and also appears beside int or bool ones."""
    values = np.asarray(values)
    if values.dtype.kind != "O":
        return np.unique(values, return_inverse=True)
    unassigned = _is_unassigned(values)
    known = np.unique(values[~unassigned].tolist())  # one label type: NumPy's own order
    labels = np.empty(len(known) + int(unassigned.any()), dtype=object)
    labels[: len(known)] = known.tolist()
    if unassigned.any():
        labels[-1] = UNASSIGNED
    codes = np.full(len(values), len(known), dtype=np.int64)
    codes[~unassigned] = np.searchsorted(known, values[~unassigned].tolist())
    return labels, codes


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Confusion counts, rows = true label, columns = predicted label (union of both label sets,
    sorted; "unassigned" predictions last)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels, codes = _sorted_labels(np.concatenate([y_true, y_pred]))  # object if either one is
    L = len(labels)
    counts = np.bincount(codes[: len(y_true)] * L + codes[len(y_true) :], minlength=L * L).reshape(L, L)
    return pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per label (union of true and predicted labels), as
    scikit-learn's ``precision_recall_fscore_support(zero_division=0)`` computes them (tested).

    Returns
    -------
    DataFrame indexed by label with columns ``precision``, ``recall``, ``f1``, ``support`` (number of
    true cells) and ``n_predicted``.
    """
    C = confusion_table(y_true, y_pred)
    counts = C.to_numpy()
    L = len(C)
    tp = np.diag(counts).astype(np.float64)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(L), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(L), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(L), where=denom > 0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support,
                         "n_predicted": predicted}, index=pd.Index(C.index.to_numpy(), name="label"))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 / precision / recall, balanced accuracy and macro one-vs-rest AUROC.

    Macro averages run over the union of true and predicted labels (scikit-learn's default, as
    in the published protocol): predicting a type absent from the query adds a zero-F1 class.
    Cells predicted "unassigned" (below an ``unassigned_threshold``) count as misses of their true
    type; "unassigned" is not a class of the averages (scikit-learn's ``labels=`` without it).
    The values equal scikit-learn's (``f1_score(average="macro", zero_division=0)``,
    ``balanced_accuracy_score``, ``roc_auc_score`` per class present, tied scores averaged; tested),
    computed from one confusion matrix (:func:`per_class_report`) and one ranking per class without
    scikit-learn's input checks, which cost more than the metrics themselves on a split of a few
    hundred cells.
    """
    import scipy.stats

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per_class = per_class_report(y_true, y_pred)
    per_class = per_class[~_is_unassigned(per_class.index)]
    present = per_class["support"].to_numpy() > 0
    recall = per_class["recall"].to_numpy()
    out = {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else np.nan,
        "macro_f1": per_class["f1"].mean(),
        "macro_precision": per_class["precision"].mean(),
        "macro_recall": recall.mean(),
        "balanced_accuracy": recall[present].mean() if present.any() else np.nan,
    }
    auroc = np.nan
    if proba is not None:
        present = [i for i, c in enumerate(classes) if np.any(y_true == c)]
        if len(present) >= 2:
            scores = []
            for i in present:
                pos = y_true == classes[i]
                n_pos = int(pos.sum())
                n_neg = len(pos) - n_pos
                if 0 < n_pos < len(pos):
                    ranks = scipy.stats.rankdata(proba[:, i])  # ties get their average rank
                    scores.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
            auroc = float(np.mean(scores)) if scores else np.nan
    out["macro_auroc"] = auroc
    return {k: float(v) for k, v in out.items()}


def plot_confusion(confusion: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix heat map (fraction of each true type), counts annotated.

    Needs matplotlib (``pip install 'gpulin[plot]'``). Drawn on a standalone ``Figure`` (no
    pyplot): the caller's backend and open figures (a notebook's inline plots) are left alone.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_confusion needs matplotlib: pip install 'gpulin[plot]'") from exc

    counts = confusion.to_numpy()
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(confusion)
    fig = Figure(figsize=(max(4.0, 0.45 * n + 2.5), max(3.5, 0.45 * n + 1.8)), layout="tight")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(counts.shape[1]), [str(c) for c in confusion.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), [str(c) for c in confusion.index], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true type")
    ax.set_title(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=130)
    return path


def _with_pooled(table: pd.DataFrame, y_true: list[np.ndarray], y_pred: list[np.ndarray]) -> pd.DataFrame:
    # Plain dicts (pandas' "tight" layout), not DataFrames: pandas compares attrs when it
    # concatenates tables (and when it prints a truncated one), and DataFrames do not compare to a bool.
    yt, yp = np.concatenate(y_true), np.concatenate(y_pred)
    table.attrs["per_class"] = per_class_report(yt, yp).to_dict(orient="tight")
    table.attrs["confusion"] = confusion_table(yt, yp).to_dict(orient="tight")
    return table


def pooled_per_class(table: pd.DataFrame) -> pd.DataFrame:
    """The per-class report (:func:`per_class_report`) pooled over all test cells of all splits of
    a table from :func:`evaluate` (classification protocols).

    A cell in several test sets (the overlapping 80/20 splits of ``split5``) counts once per test
    set, so ``support`` can exceed a type's number of cells; with an ``unassigned_threshold`` the
    ``unassigned`` row counts the cells left unassigned (it is not a class: its F1 is 0 and the
    macro averages of :func:`evaluate` leave it out)."""
    return _attr_frame(table, "per_class")


def pooled_confusion(table: pd.DataFrame) -> pd.DataFrame:
    """The confusion matrix (:func:`confusion_table`: rows = true, columns = predicted) pooled over
    all test cells of all splits of a table from :func:`evaluate` (classification protocols)."""
    return _attr_frame(table, "confusion")


def _attr_frame(table: pd.DataFrame, key: str) -> pd.DataFrame:
    if key not in table.attrs:
        raise KeyError(f"This table has no pooled {key!r} (only classification protocols have one).")
    return pd.DataFrame.from_dict(table.attrs[key], orient="tight")


def write_report(table: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[Path]:
    """Write the tidy table (CSV and JSON) and, when present, the per-class report and confusion matrix."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.csv", out / "metrics.json"]
    table.to_csv(written[0], index=False)
    table.to_json(written[1], orient="records", indent=1)
    if "per_class" in table.attrs:
        written.append(out / "per_class.csv")
        pooled_per_class(table).to_csv(written[-1])
    if "confusion" in table.attrs:
        written.append(out / "confusion.csv")
        pooled_confusion(table).to_csv(written[-1])
        try:
            written.append(plot_confusion(pooled_confusion(table), out / "confusion.png", title))
        except ImportError:
            pass
    return written


def _keep_types(y: np.ndarray, min_cells: int) -> np.ndarray:
    vals, counts = np.unique(y, return_counts=True)
    return np.isin(y, vals[counts >= min_cells])


def _splits(protocol: str, y: np.ndarray, groups: np.ndarray | None, n_splits: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, StratifiedShuffleSplit

    idx = np.zeros(len(y))
    if protocol == "split5":
        for seed in range(n_splits):
            tr, te = next(StratifiedShuffleSplit(1, test_size=0.2, random_state=seed).split(idx, y))
            yield f"seed{seed}", tr, te
    elif protocol == "kfold":
        for i, (tr, te) in enumerate(StratifiedKFold(n_splits, shuffle=True, random_state=42).split(idx, y)):
            yield f"fold{i}", tr, te
    elif protocol == "group":
        if groups is None:
            raise ValueError("protocol='group' needs group_key (e.g. the donor column).")
        for tr, te in LeaveOneGroupOut().split(idx, y, groups):
            yield f"group={groups[te[0]]}", tr, te


def _progress(it, total: int, desc: str, show: bool):
    if not show:
        return it
    try:
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc)
    except ImportError:
        return it


@releases_memory
def evaluate(
    adata: Any,
    label_key: str,
    protocol: str = "split5",
    *,
    query: Any = None,
    query_label_key: str | None = None,
    orthologs: pd.DataFrame | str | None = None,
    ortholog_cols: tuple[str, str] | None = None,
    approach: str = "pipeline",
    preset: str | None = None,
    device: str = "auto",
    min_cells: int = 100,
    n_splits: int | None = None,
    group_key: str | None = None,
    progress: bool = True,
    out_dir: str | Path | None = None,
    n_jobs: int | None = None,
    layer: str | None = None,
    **classifier_params: Any,
) -> pd.DataFrame:
    """Run a protocol and return a tidy table: one row per split (or held-out type) with metrics.

    Parameters
    ----------
    adata : AnnData
        Raw counts and labels in ``obs[label_key]`` (the training side for ``transfer``).
    label_key : str
        The ``obs`` column of the cell labels.
    protocol : {"split5", "kfold", "group", "transfer", "novel"}
    query, query_label_key : AnnData, str
        ``transfer`` only: the query and its label column (default ``label_key``). Query cells
        without a label are left out (counted in ``n_unlabelled``), and so are cells of types the
        reference does not know (``n_query_of_other_types``); the others are scored. With
        ``orthologs``, the table's ``orthologs_*`` columns give :func:`~gpulin.map_orthologs`'s
        counts (query genes in, mapped, dropped as ambiguous on either side, unmapped).
    orthologs, ortholog_cols : DataFrame or CSV path, (query_col, reference_col)
        ``transfer`` across species: query genes are renamed to reference genes through the 1:1
        table and both sides keep the shared genes only.
    approach : {"pipeline", "projection"}
        The preset classifier or the scTOP basis projection (:class:`~gpulin.ScTOPProjection`,
        fitted on the training cells of each split; its probabilities for the AUROC and the
        novelty score are a softmax of the order parameters), for every protocol.
    preset : str, optional
        :class:`~gpulin.CellTypeClassifier` preset of the pipeline (default
        ``"souza-mehta-2026"``; ``approach="pipeline"`` only).
    device : {"cpu", "cuda", "auto"}
    min_cells : int
        Keep cell types with at least this many cells (training side).
    n_splits : int, optional
        split5: 5; kfold: 10.
    group_key : str, optional
        ``group`` only: the obs column whose values are left out one at a time (e.g. donor).
    progress : bool
        Show a progress bar over splits (needs tqdm).
    out_dir : str or Path, optional
        Write ``metrics.csv``/``.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png``
        (the last needs matplotlib) there.
    n_jobs : int, optional
        Splits (or held-out types) fitted at once, each in its own thread with one core. Default:
        on the CPU, for datasets of at most 10,000 cells (after the ``min_cells`` filter), one per
        core gpulin uses (``GPULIN_NUM_THREADS``, else the cores); otherwise 1 (one split at a
        time with every core on it). On a GPU splits always run one at a time. Each concurrent
        split holds its own copy of its training cells. Results depend on the number of threads
        only through floating-point rounding; ``seconds`` is each split's wall time, so splits
        run side by side overlap in it.
    layer : str, optional
        The ``layers`` entry holding the raw counts (of ``adata`` and of the ``query``); default ``X``.
    classifier_params
        Overrides for :class:`~gpulin.classifier.CellTypeClassifier` (``approach="pipeline"``
        only; the projection takes none). Parameters that the protocol does not use (``query``
        outside ``transfer``, ``group_key`` outside ``group``, ``n_splits`` outside ``split5`` /
        ``kfold``) are errors, not silently ignored.

    Returns
    -------
    DataFrame
        One row per split with ``accuracy``, ``macro_f1``, ``macro_precision``, ``macro_recall``,
        ``balanced_accuracy``, ``macro_auroc`` and ``seconds`` (``novelty_auroc`` for ``novel``).
        For classification protocols, :func:`pooled_per_class` and :func:`pooled_confusion` give
        the report and confusion matrix pooled over all test cells of all splits.
    """
    table = _evaluate(adata, label_key, protocol, query, query_label_key, orthologs, ortholog_cols, approach,
                      preset, device, min_cells, n_splits, group_key, progress, n_jobs, layer, classifier_params)
    if out_dir is not None:
        written = write_report(table, out_dir, title=f"{protocol} {label_key} ({approach})")
        table.attrs["files_written"] = [str(p) for p in written]
    return table


def _evaluate(adata, label_key, protocol, query, query_label_key, orthologs, ortholog_cols, approach, preset,
              device, min_cells, n_splits, group_key, progress, n_jobs, layer, classifier_params) -> pd.DataFrame:
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
    if approach not in ("pipeline", "projection"):
        raise ValueError(f"Unknown approach {approach!r}; expected 'pipeline' or 'projection'.")
    if approach == "projection" and preset is not None:
        raise ValueError(f"preset={preset!r} applies to approach='pipeline'; approach='projection' has no preset.")
    preset = "souza-mehta-2026" if preset is None else preset
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {list(PRESETS)}.")
    _check_protocol_arguments(protocol, approach, query=query, query_label_key=query_label_key,
                              orthologs=orthologs, ortholog_cols=ortholog_cols, n_splits=n_splits,
                              group_key=group_key, classifier_params=classifier_params)
    if approach == "pipeline":
        CellTypeClassifier(preset, device="cpu", **classifier_params)  # unknown or invalid parameters: before any work
    check_int("n_jobs", n_jobs, 1, allow_none=True)
    check_int("n_splits", n_splits, 2 if protocol == "kfold" else 1, allow_none=True)
    check_int("min_cells", min_cells, 1)
    y_all = labels_of(adata, label_key)
    keep = _keep_types(y_all, min_cells)
    if protocol == "transfer":
        return _transfer(adata[keep], label_key, query, query_label_key or label_key, orthologs, ortholog_cols,
                         approach, preset, device, min_cells, layer, classifier_params)
    ad_k = adata[keep]
    y = y_all[keep]
    if len(np.unique(y)) < 2:
        raise ValueError(f"Fewer than 2 cell types have >= {min_cells} cells in obs[{label_key!r}].")
    X, _ = _matrix_and_genes(ad_k, layer)
    backend = resolve_backend(device, X)
    t0 = time.perf_counter()
    # The pipeline's transform is per cell: once per dataset, rows taken per split. The projection
    # averages raw counts per type, so it works from the counts of each split.
    method = classifier_params.get("method", PRESETS[preset]["method"])
    S = transform_implicit(X, method, device=backend) if approach == "pipeline" else None
    t_transform = time.perf_counter() - t0

    def fit_predict(tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, classes) for the cells ``te`` of a model fitted on the cells ``tr``."""
        if approach == "projection":
            proj = ScTOPProjection(None, device=backend).fit(X[tr], y[tr])
            return _softmax(proj.order_parameters(X[te]).to_numpy()), np.asarray(proj.classes_)
        assert S is not None  # the pipeline's transform, made above
        clf = CellTypeClassifier(preset, device=backend, **classifier_params).fit_transformed(
            S.take_rows(tr), y[tr], loadings=False)  # predictions only: no PCA loadings needed
        return clf.predict_proba_transformed(S.take_rows(te)), np.asarray(clf.classes_)

    # as CellTypeClassifier.predict: cells below unassigned_threshold (when given) are "unassigned"
    threshold = classifier_params.get("unassigned_threshold") if approach == "pipeline" else None
    if protocol == "novel":
        types = [t for t in np.unique(y)]
        if len(types) < 3:
            raise ValueError(f"protocol='novel' needs at least 3 cell types with >= {min_cells} cells (each is held "
                             f"out in turn and at least 2 must remain to train on); got {len(types)}: {types}.")
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedShuffleSplit

        def novel_row(t: Any) -> dict[str, Any]:
            t1 = time.perf_counter()
            others = np.flatnonzero(y != t)
            # Negatives are held-out cells of the known types (a stratified 20%), never training
            # cells: the classifier is more confident on the cells it was fitted on.
            fit, held = next(StratifiedShuffleSplit(1, test_size=_held_out_share(y[others]), random_state=0)
                             .split(others, y[others]))
            tr, te = others[fit], np.concatenate([np.flatnonzero(y == t), others[held]])
            proba, _ = fit_predict(tr, te)
            novelty = 1.0 - proba.max(axis=1)
            return {"split": f"novel={t}", "held_out_type": t, "n_held_out": int((y == t).sum()),
                    "n_known_held_out": len(held), "n_train": len(tr),
                    "novelty_auroc": float(roc_auc_score(y[te] == t, novelty)), "seconds": time.perf_counter() - t1}

        workers = task_workers(n_jobs, len(types), backend.is_gpu, len(y))
        rows = list(_progress(map_tasks(novel_row, types, workers), len(types), "novel types", progress))
        return pd.DataFrame(rows).assign(protocol=protocol, approach=approach, transform_seconds=t_transform)
    warn_uncalibrated_threshold(classifier_params.get("model", PRESETS[preset]["model"]), threshold)
    groups = labels_of(ad_k, group_key, what="group") if group_key else None
    n_splits = n_splits or (5 if protocol == "split5" else 10)
    splits = list(_splits(protocol, y, groups, n_splits))
    if protocol == "group" and len(splits) < 2:
        raise ValueError(f"protocol='group' needs at least 2 distinct values in obs[{group_key!r}].")

    def split_result(split: tuple[str, np.ndarray, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
        name, tr, te = split
        t1 = time.perf_counter()
        proba, classes = fit_predict(tr, te)
        pred = _assign(classes, proba, threshold)
        return ({"split": name, "n_train": len(tr), "n_test": len(te),
                 **classification_metrics(y[te], pred, proba, classes), "seconds": time.perf_counter() - t1}, pred)

    rows, pooled_true, pooled_pred = [], [], []
    workers = task_workers(n_jobs, len(splits), backend.is_gpu, len(y))
    # consumed whole (list), so the thread pool and its BLAS limit end with the last split
    results = list(_progress(map_tasks(split_result, splits, workers), len(splits), protocol, progress))
    for (_, _, te), (row, pred) in zip(splits, results):
        pooled_true.append(y[te])
        pooled_pred.append(pred)
        rows.append(row)
    table = pd.DataFrame(rows).assign(protocol=protocol, approach=approach, transform_seconds=t_transform)
    return _with_pooled(table, pooled_true, pooled_pred)


def _check_protocol_arguments(protocol: str, approach: str, *, query: Any, query_label_key: Any, orthologs: Any,
                              ortholog_cols: Any, n_splits: Any, group_key: Any, classifier_params: dict) -> None:
    """Clear errors for arguments the protocol or approach would otherwise silently ignore."""
    unused = []
    if protocol != "transfer":
        unused += [name for name, value in (("query", query), ("query_label_key", query_label_key),
                                            ("orthologs", orthologs), ("ortholog_cols", ortholog_cols)) if value is not None]
    elif ortholog_cols is not None and orthologs is None:
        raise ValueError("ortholog_cols is used with orthologs= (the 1:1 table) only; pass both, or neither.")
    if protocol != "group" and group_key is not None:
        unused.append("group_key")
    if protocol not in ("split5", "kfold") and n_splits is not None:
        unused.append("n_splits")
    if unused:
        raise ValueError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by protocol={protocol!r}.")
    if approach == "projection" and classifier_params:
        raise ValueError(f"Classifier parameters {sorted(classifier_params)} apply to approach='pipeline'; "
                         "approach='projection' (the scTOP basis, argmax of the order parameters) takes none.")


def _transfer(ref, label_key, query, query_label_key, orthologs, ortholog_cols, approach, preset, device, min_cells,
              layer, params) -> pd.DataFrame:
    from .orthologs import ortholog_names

    if query is None:
        raise ValueError("protocol='transfer' needs query=AnnData.")
    # As published: every query cell whose type the reference knows is scored (min_cells applies to
    # the reference's training types only).
    query_genes = np.asarray(query.var_names).astype(str)
    n_query_genes = len(query_genes)
    ortholog_stats: dict[str, int] = {}
    if orthologs is not None:
        if ortholog_cols is None:
            raise ValueError("ortholog_cols=(query_column, reference_column) is required with orthologs.")
        # map_orthologs' renaming, without its copy of the query: genes without a one-to-one
        # ortholog get the name "" (left out of the shared genes below), the rest their ortholog's
        targets, mapped, stats = ortholog_names(query_genes, orthologs, ortholog_cols[0], ortholog_cols[1])
        query_genes = np.where(mapped, targets, "").astype(str)
        n_query_genes = stats["n_mapped"]
        ortholog_stats = {f"orthologs_{k}": v for k, v in stats.items()}
    shared = ref.var_names.intersection(pd.Index(query_genes[query_genes != ""] if orthologs is not None else query_genes))
    # Both sides keep the shared genes only: too few of them (a query of another species passed
    # without orthologs=, other gene identifiers) would still give numbers, meaningless ones.
    min_overlap = params.get("min_gene_overlap", 0.5)
    smaller = min(ref.n_vars, n_query_genes)
    if len(shared) == 0 or len(shared) < min_overlap * smaller:
        raise ValueError(
            f"Reference ({ref.n_vars} genes) and query ({n_query_genes} genes) share {len(shared)} genes, "
            f"{100 * len(shared) / max(smaller, 1):.1f}% of the smaller gene set; at least {100 * min_overlap:.0f}% "
            "are required (min_gene_overlap). Another species needs orthologs= (gpulin.map_orthologs); "
            "check that both use the same gene identifiers."
        )
    if query_label_key not in query.obs:
        raise KeyError(f"Label column {query_label_key!r} not in query.obs; columns: {list(query.obs.columns)}.")
    labelled = query.obs[query_label_key].notna().to_numpy()  # unlabelled query cells are left out
    if not labelled.any():
        raise ValueError(f"No query cell has a label in query.obs[{query_label_key!r}].")
    # The count matrices are cut to the shared genes (in one order) by one compiled column take
    # each, and the models see them by position: no AnnData column views (SciPy column indexing)
    # and no renamed copy of the query. The projection's reference is not cut: its basis takes the
    # shared columns from the types x genes profiles (ScTOPProjection._fit_counts).
    t1 = time.perf_counter()
    shared_genes = np.asarray(shared).astype(str)
    ref_genes = np.asarray(ref.var_names).astype(str)
    Xr, _ = _matrix_and_genes(ref, layer)
    Xq, _ = _matrix_and_genes(query, layer)
    backend = resolve_backend(device, Xr)
    if approach == "pipeline":  # the projection takes the shared columns from its type profiles
        Xr = align_genes(Xr, ref_genes, shared_genes, backend, name="the reference")

    def query_counts():
        Xl = Xq
        if not labelled.all():
            rows = np.flatnonzero(labelled)
            Xl = Xl[backend_of(Xl).asarray(rows) if is_gpu_array(Xl) else rows]
        return align_genes(Xl, query_genes, shared_genes, backend)

    y_ref = labels_of(ref, label_key)
    if approach == "projection":
        Xq = query_counts()
        qi, ri = matched_genes(ref_genes, shared_genes, name="the reference")
        ref_columns = np.empty(len(shared_genes), dtype=np.int64)  # every shared gene is a reference gene
        ref_columns[ri] = qi
        clf = ScTOPProjection(device=backend)._fit_counts(Xr, y_ref, None, columns=ref_columns)
        a = clf.order_parameters(Xq).to_numpy()
        pred = _assign(np.asarray(clf.classes_), a, None)  # predict(): argmax, as published
        proba = _softmax(a)
    else:
        clf = CellTypeClassifier(preset, device=backend, **params)
        method = clf.params["method"]

        def query_transformed() -> Any:
            return transform_implicit(query_counts(), method, device=backend)

        # predictions only: the PCA loadings are not formed (fit_transformed(loadings=False)).
        # On the host the query is aligned and transformed on one core beside the fit, which
        # leaves cores idle in its small dense steps (Baron transfers 3-4% faster, medians of 7);
        # per-cell steps, so the numbers are those of one after the other.
        if backend.is_gpu:
            clf._fit(Xr, y_ref, None, loadings=False)
            Sq = query_transformed()
        else:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpulin-query") as pool:
                query_job = pool.submit(_one_core, query_transformed)
                clf._fit(Xr, y_ref, None, loadings=False)
                Sq = query_job.result()
        proba = clf.predict_proba_transformed(Sq)
        pred = clf._labels(proba)
    yq = labels_of(query if labelled.all() else query[labelled], query_label_key)
    classes = np.asarray(clf.classes_)
    if (yq.dtype.kind in "biuf") != (classes.dtype.kind in "biuf"):  # e.g. 1 in the reference, "1" in the query
        yq, classes = yq.astype(str), classes.astype(str)
        pred = pred.astype(str)
    on_shared = np.isin(yq, classes)
    if not on_shared.any():
        raise ValueError("Reference and query share no cell-type labels.")
    row = {"split": "transfer", "approach": approach, "n_shared_genes": len(shared), **ortholog_stats,
           "n_test": int(on_shared.sum()), "n_unlabelled": int((~labelled).sum()),
           "n_query_of_other_types": int((~on_shared).sum()), "shared_types": int(len(np.intersect1d(classes, yq))),
           **classification_metrics(yq[on_shared], pred[on_shared], proba[on_shared], classes),
           "seconds": time.perf_counter() - t1}
    return _with_pooled(pd.DataFrame([row]).assign(protocol="transfer"), [yq[on_shared]], [pred[on_shared]])


def _one_core(fn: Any) -> Any:
    """``fn()`` with one thread for gpulin's compiled kernels (a task beside another)."""
    with thread_workers(1):
        return fn()


def _held_out_share(y: np.ndarray) -> float:
    """Share of the known types' cells held out as the novel protocol's negatives: 20%, or enough
    for one cell of every type; each type needs two cells (one to train on, one held out)."""
    types, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"protocol='novel' needs at least 2 cells of every type; {types[counts.argmin()]!r} has "
                         f"{counts.min()} (raise min_cells).")
    share = max(0.2, len(types) / len(y))
    if share > 0.5:
        raise ValueError(f"protocol='novel': {len(types)} types with {len(y)} cells leave too few to train on "
                         "after holding out one cell of each (raise min_cells).")
    return share


def _softmax(a: np.ndarray) -> np.ndarray:
    """Row-wise softmax of the projection's order parameters: its class probabilities for the AUROC
    and the novelty score."""
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def summarize(table: pd.DataFrame) -> pd.Series:
    """Mean of the numeric metric columns over splits."""
    return table.select_dtypes("number").mean()


# -- CLI ------------------------------------------------------------------------------------------
def add_cli(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="run a classification protocol on an h5ad file")
    p.add_argument("data", help="h5ad with raw counts (training side for transfer)")
    p.add_argument("--label", required=True)
    p.add_argument("--protocol", default="split5", choices=PROTOCOLS)
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--approach", default="pipeline", choices=["pipeline", "projection"])
    p.add_argument("--min-cells", type=int, default=100)
    p.add_argument("--n-splits", type=int, default=None)
    p.add_argument("--group", default=None)
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="classifier preset of --approach pipeline (default souza-mehta-2026)")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="splits fitted at once, one core each (CPU default: one per core up to 10,000 cells, "
                        "else 1; on a GPU always 1)")
    p.add_argument("--layer", default=None, help="the layer of raw counts (data and query; default X)")
    p.add_argument("--query", default=None)
    p.add_argument("--query-label", default=None, help="the query's label column (default: --label)")
    p.add_argument("--orthologs", default=None, help="CSV of 1:1 orthologs")
    p.add_argument("--ortholog-cols", nargs=2, default=None, metavar=("QUERY_COL", "REF_COL"))
    p.add_argument("--out", default=None, help="CSV or JSON path for the tidy table")
    p.add_argument("--out-dir", default=None,
                   help="folder for metrics.csv/.json, per_class.csv, confusion.csv and confusion.png")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import anndata as ad

    # fail fast, before reading the data and running the protocol
    get_backend(args.device)
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: the folder {Path(args.out).resolve().parent} does not exist.")
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name (.csv or .json), or use --out-dir.")
    if args.query and args.protocol != "transfer":
        raise ValueError(f"--query is used by --protocol transfer only (got --protocol {args.protocol}).")
    adata = ad.read_h5ad(args.data)
    query = ad.read_h5ad(args.query) if args.query else None
    table = evaluate(adata, args.label, args.protocol, query=query, query_label_key=args.query_label,
                     orthologs=args.orthologs, ortholog_cols=tuple(args.ortholog_cols) if args.ortholog_cols else None,
                     approach=args.approach, preset=args.preset, device=args.device, min_cells=args.min_cells,
                     n_splits=args.n_splits, group_key=args.group, out_dir=args.out_dir, n_jobs=args.n_jobs,
                     layer=args.layer)
    print(table.to_string(index=False))
    print("\nmean:\n" + summarize(table).to_string())
    if "per_class" in table.attrs:
        print("\nper class (pooled over splits):\n" + pooled_per_class(table).round(3).to_string())
    if args.out_dir:
        written = [Path(p).name for p in table.attrs.get("files_written", [])]
        print(f"wrote {', '.join(written)} in {args.out_dir}")
    if args.out:
        out = Path(args.out)
        table.to_json(out, orient="records", indent=1) if out.suffix == ".json" else table.to_csv(out, index=False)
        print(f"wrote {out}")
    return 0


__all__ = ["PROTOCOLS", "classification_metrics", "confusion_table", "evaluate", "per_class_report", "plot_confusion",
           "pooled_confusion", "pooled_per_class", "summarize", "write_report"]
