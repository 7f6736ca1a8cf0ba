"""ANOVA selection, the preset classifier, scTOP projection and the evaluation harness."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import gpulin
from gpulin.classifier import CellTypeClassifier, ScTOPProjection
from gpulin import evaluate
from gpulin.evaluation import pooled_confusion, pooled_per_class
from gpulin.selection import f_classif, select_k_best

from conftest import shared_file


def labelled(n=400, g=300, rank=4, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 1.0, size=(rank, g))
    labels = rng.integers(0, rank, size=n)
    mu = programs[labels] + 0.05 * programs.mean()
    mu *= 0.5 * g / mu.sum(axis=1, keepdims=True)
    X = sp.csr_matrix(rng.poisson(mu).astype(np.float32))
    obs = pd.DataFrame({"type": [f"t{l}" for l in labels]}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


def test_f_classif_matches_sklearn_on_the_materialized_matrix():
    from sklearn.feature_selection import f_classif as sk_f

    a = labelled()
    S = gpulin.sctop_transform(a.X, batch_size=64)
    rows = np.random.default_rng(0).permutation(a.n_obs)[:300]
    codes = pd.Categorical(a.obs["type"]).codes
    F, p = f_classif(S.take_rows(rows), codes[rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Fr, pr = sk_f(S.toarray()[rows].astype(np.float64), codes[rows])
    np.testing.assert_allclose(F, Fr, rtol=1e-4)
    np.testing.assert_allclose(p, pr, rtol=1e-3, atol=1e-300)


def test_select_k_best_puts_nan_last():
    F = np.array([3.0, np.nan, 5.0, 1.0])
    assert select_k_best(F, 2).tolist() == [0, 2]
    assert select_k_best(F, 10).tolist() == [0, 1, 2, 3]


def test_classifier_fits_predicts_and_aligns_genes():
    a = labelled(seed=1)
    train, test = a[:300].copy(), a[300:].copy()
    clf = CellTypeClassifier(device="cpu", n_genes=200, n_components=20).fit(train, "type")
    assert len(clf.genes_) == 200 and clf.components_.shape == (20, 200)
    acc = clf.score(test, "type")
    assert acc > 0.95
    perm = np.random.default_rng(0).permutation(test.n_vars)
    np.testing.assert_array_equal(clf.predict(test[:, perm].copy()), clf.predict(test))
    proba = clf.predict_proba(test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    pred = clf.predict(test, unassigned_threshold=0.999999)
    assert "unassigned" in set(pred)
    nov = clf.novelty_score(test)
    assert nov.shape == (100,) and np.all((nov >= 0) & (nov <= 1))
    ridge = CellTypeClassifier("lognorm-ridge", device="cpu", n_components=20).fit(train, "type")
    assert ridge.score(test, "type") > 0.9


def test_classifier_bad_input():
    a = labelled(n=120)
    with pytest.raises(KeyError, match="'celltype' not in adata.obs"):
        CellTypeClassifier(device="cpu").fit(a, "celltype")
    one = a.copy()
    one.obs["type"] = "same"
    with pytest.raises(ValueError, match="at least 2 cell types, got 1"):
        CellTypeClassifier(device="cpu", n_components=5).fit(one, "type")
    missing = a.copy()
    missing.obs.loc[missing.obs_names[0], "type"] = np.nan
    with pytest.raises(ValueError, match="1 cells have no label"):
        CellTypeClassifier(device="cpu").fit(missing, "type")
    clf = CellTypeClassifier(device="cpu", n_components=5).fit(a, "type")
    other = a.copy()
    other.var_names = [f"x{i}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="Only 0 of the 300 reference genes"):
        clf.predict(other)
    with pytest.raises(ValueError, match="Unknown preset"):
        CellTypeClassifier("foo")
    with pytest.raises(TypeError, match="Unknown parameter"):
        CellTypeClassifier(n_comps=3)


def test_projection_recovers_types():
    a = labelled(seed=2)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ScTOPProjection(device="cpu").predict(a)
    proj = ScTOPProjection(device="cpu").fit(a[:300], "type")
    assert proj.basis_.shape == (300, 4)
    op = proj.order_parameters(a[300:])
    assert op.shape == (100, 4)
    assert np.mean(proj.predict(a[300:]) == a.obs["type"].to_numpy()[300:]) > 0.95


def test_projection_residual_novelty_equals_the_dense_residual():
    """novelty_score(score="residual"): ||s - B a||^2 / ||s||^2 of each query cell's scTOP profile
    over the basis genes, from the implicit form (a query missing some basis genes uses the
    basis rows it shares); 1 for a cell without counts; "order" is the negative top order parameter."""
    a = labelled(seed=4)
    proj = ScTOPProjection(device="cpu").fit(a[:300], "type")
    query = a[300:, 40:].copy()  # 40 basis genes missing
    X = query.X.tolil()
    X[0, :] = 0  # a cell without counts
    query.X = X.tocsr()
    with pytest.warns(gpulin.EmptyCellsWarning):
        share = proj.novelty_score(query, score="residual")
    B = proj.basis_.loc[query.var_names].to_numpy()
    with pytest.warns(gpulin.EmptyCellsWarning):
        S = gpulin.sctop_transform(query.X, dense=True).astype(np.float64)
    coef = np.linalg.lstsq(B, S[1:].T, rcond=None)[0]
    dense = ((S[1:].T - B @ coef) ** 2).sum(axis=0) / (S[1:] ** 2).sum(axis=1)
    np.testing.assert_allclose(share[1:], dense, rtol=1e-6, atol=1e-9)
    assert share[0] == 1.0 and ((share >= 0) & (share <= 1)).all()
    with pytest.warns(gpulin.EmptyCellsWarning):
        order = proj.novelty_score(query)
        np.testing.assert_array_equal(order, -proj.order_parameters(query).to_numpy().max(axis=1))
    with pytest.raises(ValueError, match="score must be"):
        proj.novelty_score(query, score="entropy")


def test_projection_basis_over_columns_equals_the_basis_of_the_cut_matrix():
    """ScTOPProjection._fit_counts(X, y, columns=...) (the transfer protocol's reference, not cut):
    library sizes over those columns, profiles over all genes and then their columns, equal the
    basis fitted on the matrix cut to those columns (in that order) to the last bit."""
    a = labelled(seed=2)
    y = a.obs["type"].to_numpy()
    cols = np.random.default_rng(0).permutation(a.n_vars)[:180]  # another order, 120 genes left out
    X32 = sp.csr_matrix(a.X)
    # uint16 counts with libraries past 65,535: summed in float64, not in the counts' dtype
    X16 = X32.copy()
    X16.data = X16.data * (65535 // X16.data.max())  # the largest count 65,535 or just below
    X16 = X16.astype(np.uint16)
    assert X16.astype(np.int64)[:, cols].sum(axis=1).max() > 2**16
    for X in (X32, X16):
        cut = ScTOPProjection(device="cpu").fit(X[:, cols], y)
        whole = ScTOPProjection(device="cpu")._fit_counts(X, y, None, columns=cols)
        np.testing.assert_array_equal(whole.basis_.to_numpy(), cut.basis_.to_numpy())
        np.testing.assert_array_equal(whole.order_parameters(X[:50][:, cols]), cut.order_parameters(X[:50][:, cols]))
    # only the values in the columns are checked (as the transfer pipeline checks its cut matrix)
    left_out = np.setdiff1d(np.arange(a.n_vars), cols)[0]
    bad = X32.tolil()
    bad[0, left_out] = -1.0
    bad = bad.tocsr()
    ScTOPProjection(device="cpu")._fit_counts(bad, y, None, columns=cols)
    with pytest.raises(ValueError, match="negative"):
        ScTOPProjection(device="cpu").fit(bad, y)


def test_evaluate_novel_and_errors():
    a = labelled(seed=3)
    with threadpool_limits(1):
        table = evaluate(a, "type", "novel", device="cpu", min_cells=50, n_components=10, progress=False)
    assert len(table) == 4 and table["novelty_auroc"].between(0, 1).all()
    with pytest.raises(ValueError, match="Unknown protocol"):
        evaluate(a, "type", "loo")
    with pytest.raises(ValueError, match="needs query"):
        evaluate(a, "type", "transfer")


def test_evaluate_writes_per_class_report_and_confusion(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    a = labelled(seed=4)
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a session's own backend (a notebook's inline one)
    try:
        with threadpool_limits(1):
            table = evaluate(a, "type", "split5", device="cpu", min_cells=50, n_components=10, progress=False,
                             n_splits=2, out_dir=tmp_path)
        assert matplotlib.get_backend() == "svg"  # the confusion PNG leaves the caller's backend alone
    finally:
        matplotlib.use(backend)
    conf, per_class = pooled_confusion(table), pooled_per_class(table)
    # Pooled over both splits: every test cell counted once per split, rows = true labels.
    assert conf.to_numpy().sum() == table["n_test"].sum()
    assert list(conf.index) == list(per_class.index) == sorted(a.obs["type"].unique())
    assert (per_class["support"].to_numpy() == conf.to_numpy().sum(axis=1)).all()
    assert (per_class["n_predicted"].to_numpy() == conf.to_numpy().sum(axis=0)).all()
    acc = np.trace(conf.to_numpy()) / conf.to_numpy().sum()
    assert acc == pytest.approx(np.average(table["accuracy"], weights=table["n_test"]))
    for name in ("metrics.csv", "metrics.json", "per_class.csv", "confusion.csv", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert pd.read_csv(tmp_path / "metrics.csv")["macro_f1"].tolist() == pytest.approx(table["macro_f1"].tolist())
    # Tables print (truncated, as at the default width) and concatenate with tables of other runs.
    other = table.copy()
    other.attrs = {**table.attrs, "per_class": pooled_per_class(table).iloc[:1].to_dict(orient="tight")}
    both = pd.concat([table, other], ignore_index=True)
    assert len(both) == 2 * len(table)
    with pd.option_context("display.width", 40, "display.max_columns", 3):
        assert "..." in repr(table)


def test_evaluate_group_protocol_leaves_each_donor_out():
    h = ad.read_h5ad(shared_file("baron_pancreas/baron_human.h5ad"))
    with threadpool_limits(1):
        table = evaluate(h, "cell_type1", "group", group_key="donor", device="cpu", min_cells=20,
                         n_components=30, progress=False)
    donors = sorted(h.obs["donor"].astype(str).unique())
    assert sorted(s.split("=", 1)[1] for s in table["split"]) == donors
    counts = h.obs["cell_type1"].value_counts()
    kept = h.obs["cell_type1"].isin(counts.index[counts >= 20])
    assert table["n_test"].sum() == kept.sum()
    # Across donors the pancreas types stay easy to tell apart.
    assert table["accuracy"].min() > 0.9
    with pytest.raises(ValueError, match="needs group_key"):
        evaluate(h, "cell_type1", "group", device="cpu", min_cells=20)


@pytest.mark.slow
def test_kang_cell_type_matches_reference():
    kang = ad.read_h5ad(shared_file("kang_ifnb_muscat/kang_muscat_counts.h5ad"))
    with threadpool_limits(1):
        table = evaluate(kang, "cluster_id", "split5", device="cpu", min_cells=100, progress=False)
    assert abs(table["macro_f1"].mean() - 0.922) <= 0.01


@pytest.mark.slow
def test_baron_transfer_projection_matches_reference():
    h = ad.read_h5ad(shared_file("baron_pancreas/baron_human.h5ad"))
    m = ad.read_h5ad(shared_file("baron_pancreas/baron_mouse.h5ad"))
    orth = shared_file("baron_pancreas/orthologs_1to1_human2mouse.csv")
    t = evaluate(h, "cell_type1", "transfer", query=m, orthologs=orth, ortholog_cols=("gene.name", "human.gene.name"),
                 approach="projection", min_cells=20, device="cpu")
    assert t["n_shared_genes"].iloc[0] == 11674
    assert abs(t["macro_f1"].iloc[0] - 0.564) <= 0.01 and abs(t["accuracy"].iloc[0] - 0.686) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("direction, cols, f1", [
    ("human_to_mouse", ("gene.name", "human.gene.name"), 0.662),
    ("mouse_to_human", ("human.gene.name", "gene.name"), 0.763),
])
def test_baron_transfer_pipeline_matches_reference(direction, cols, f1):
    """The published preset (scikit-learn's randomized PCA subspace included) gives the published F1."""
    h = ad.read_h5ad(shared_file("baron_pancreas/baron_human.h5ad"))
    m = ad.read_h5ad(shared_file("baron_pancreas/baron_mouse.h5ad"))
    ref, query = (h, m) if direction == "human_to_mouse" else (m, h)
    orth = shared_file("baron_pancreas/orthologs_1to1_human2mouse.csv")
    t = evaluate(ref, "cell_type1", "transfer", query=query, orthologs=orth, ortholog_cols=cols, min_cells=20,
                 device="cpu")
    assert abs(t["macro_f1"].iloc[0] - f1) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("direction, cols, reference_f1", [
    ("human_to_mouse", ("gene.name", "human.gene.name"), 0.662),
    ("mouse_to_human", ("human.gene.name", "gene.name"), 0.763),
])
def test_cross_species_preset_beats_the_reference_for_every_pca_seed(direction, cols, reference_f1):
    """The cross-species preset (class-balanced ridge on 50 whitened components) beats the published
    pipeline in both directions whatever the PCA draw (benchmarks/README.md: 0.732-0.740 and
    0.769-0.794 over seeds 0-3 and the exact PCA)."""
    h = ad.read_h5ad(shared_file("baron_pancreas/baron_human.h5ad"))
    m = ad.read_h5ad(shared_file("baron_pancreas/baron_mouse.h5ad"))
    ref, query = (h, m) if direction == "human_to_mouse" else (m, h)
    orth = shared_file("baron_pancreas/orthologs_1to1_human2mouse.csv")
    for seed in (0, 1):
        t = evaluate(ref, "cell_type1", "transfer", query=query, orthologs=orth, ortholog_cols=cols, min_cells=20,
                     device="cpu", preset="cross-species", seed=seed)
        assert t["macro_f1"].iloc[0] >= reference_f1 + 0.005


@pytest.mark.gpu
@pytest.mark.parametrize("query_on_gpu", [False, True], ids=["host-query", "gpu-query"])
def test_classifier_and_projection_cpu_and_gpu_agree(query_on_gpu):
    """The preset and the scTOP projection give the same answers on CPU and GPU, for host counts
    and for counts already on the GPU, with query genes re-indexed to the training genes."""
    import cupyx.scipy.sparse as cusp

    a = labelled(n=500, seed=9)
    train, query = a[:400].copy(), a[400:, ::-1].copy()  # reversed genes: alignment by var_names
    if query_on_gpu:
        query.X = cusp.csr_matrix(query.X)
    out = {}
    for device in ("cpu", "cuda"):
        clf = CellTypeClassifier(device=device, n_components=20).fit(train, "type")
        proj = ScTOPProjection(device=device).fit(train, "type")
        out[device] = (clf.predict_proba(query), proj.order_parameters(query).to_numpy())
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], atol=1e-3)
    np.testing.assert_allclose(out["cuda"][1], out["cpu"][1], atol=1e-5)


@pytest.mark.gpu
def test_transfer_protocol_cpu_and_gpu_agree():
    """protocol='transfer' (orthologs renamed in place, unlabelled query cells dropped from counts
    that live on the GPU) gives the CPU's numbers on the GPU."""
    import cupyx.scipy.sparse as cusp

    a = labelled(n=500, seed=13)
    ref, query = a[:350].copy(), a[350:].copy()
    query.var_names = [f"m{g}" for g in query.var_names]
    query.obs["type"] = query.obs["type"].astype(object)
    query.obs.iloc[:10, 0] = np.nan
    on_gpu = query.copy()
    on_gpu.X = cusp.csr_matrix(query.X)
    table = pd.DataFrame({"mouse": [f"mg{j}" for j in range(300)], "human": [f"g{j}" for j in range(300)]})
    out = {}
    for device, q in (("cpu", query), ("cuda", on_gpu)):
        for approach in ("pipeline", "projection"):
            out[device, approach] = evaluate(ref, "type", "transfer", query=q, orthologs=table,
                                             ortholog_cols=("mouse", "human"), approach=approach, device=device,
                                             min_cells=20, n_components=10).iloc[0]
    for approach in ("pipeline", "projection"):
        assert out["cuda", approach]["n_test"] == out["cpu", approach]["n_test"] == 140
        assert out["cuda", approach]["accuracy"] == pytest.approx(out["cpu", approach]["accuracy"], abs=0.01)


def test_fitted_estimators_pickle_and_predict_the_same():
    """Fitted estimators pickle (joblib.dump works the same way) and give identical results after
    loading: they keep host arrays, and their backend pickles as its device name."""
    import pickle

    from gpulin import LinearEmbedding, LogisticRegression, RidgeClassifier

    a = labelled(n=300, seed=4)
    clf = CellTypeClassifier(device="cpu", n_components=10).fit(a, "type")
    proj = ScTOPProjection(device="cpu").fit(a, "type")
    emb = LinearEmbedding(n_components=8, device="cpu").fit(a)
    Z = emb.transform(a)
    lr = LogisticRegression(device="cpu").fit(Z, a.obs["type"].to_numpy())
    ridge = RidgeClassifier(device="cpu").fit(Z, a.obs["type"].to_numpy())
    checks = [
        (clf, lambda e: e.predict_proba(a)),
        (proj, lambda e: e.order_parameters(a).to_numpy()),
        (emb, lambda e: e.transform(a)),
        (lr, lambda e: e.predict_proba(Z)),
        (ridge, lambda e: e.decision_function(Z)),
    ]
    for est, result in checks:
        loaded = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(result(loaded), result(est))


def test_a_gpu_fitted_estimator_loads_on_a_cpu_only_machine():
    """A backend fitted on CUDA unpickles as the CPU backend, with a warning, where no GPU is usable."""
    import pickle

    import scipy.special

    from gpulin._backend import CPU, Backend, cuda_available

    if cuda_available():
        pytest.skip("a GPU is usable here: the CUDA backend unpickles as itself")
    cuda = Backend("cuda", np, sp, scipy.special)  # stands in for the real one: only its name is pickled
    with pytest.warns(RuntimeWarning, match="fitted on a CUDA GPU.*compute on the CPU"):
        assert pickle.loads(pickle.dumps(cuda)) is CPU


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_scikit_learn(seed):
    """The metrics of gpulin.evaluate equal scikit-learn's, with a predicted label absent from the
    truth, a true label never predicted, tied scores and string labels."""
    from sklearn import metrics

    from gpulin.evaluation import classification_metrics

    rng = np.random.default_rng(seed)
    classes = np.array(["a", "b", "c", "d"])
    y_true = rng.choice(classes[:3], size=300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(classes, size=300))
    y_pred[y_pred == "c"] = "b"  # "c" is never predicted; "d" is predicted but never true
    proba = np.round(rng.dirichlet(np.ones(4), size=300), 1)  # many ties
    got = classification_metrics(y_true, y_pred, proba, classes)
    want = {
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "macro_f1": metrics.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "macro_precision": metrics.precision_score(y_true, y_pred, average="macro", zero_division=0),
        "macro_recall": metrics.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
        "macro_auroc": np.mean([metrics.roc_auc_score(y_true == c, proba[:, i]) for i, c in enumerate(classes[:3])]),
    }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    from gpulin.evaluation import confusion_table, per_class_report

    labels = np.union1d(y_true, y_pred)
    report = per_class_report(y_true, y_pred)
    p, r, f, support = metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert report.index.tolist() == labels.tolist()
    np.testing.assert_allclose(report[["precision", "recall", "f1"]].to_numpy(), np.stack([p, r, f], axis=1), rtol=1e-12)
    np.testing.assert_array_equal(report["support"], support)
    np.testing.assert_array_equal(confusion_table(y_true, y_pred).to_numpy(),
                                  metrics.confusion_matrix(y_true, y_pred, labels=labels))


def test_transfer_needs_shared_genes_and_scores_labelled_query_cells_only():
    a = labelled(seed=5)
    ref, query = a[:200].copy(), a[200:].copy()
    query.obs["type"] = query.obs["type"].astype(object)
    query.obs.iloc[:25, 0] = np.nan  # unlabelled query cells: predicted, not scored
    t = evaluate(ref, "type", "transfer", query=query, device="cpu", min_cells=20, n_components=10)
    assert t["n_unlabelled"].iloc[0] == 25 and t["n_test"].iloc[0] == 175
    assert t["accuracy"].iloc[0] > 0.9
    other_species = query.copy()
    other_species.var_names = [f"mouse_{g}" for g in query.var_names[:-8]] + list(query.var_names[-8:])
    with pytest.raises(ValueError, match=r"share 8 genes, 2.7% of the smaller gene set.*orthologs="):
        evaluate(ref, "type", "transfer", query=other_species, device="cpu", min_cells=20, n_components=10)


def test_novel_protocol_scores_held_out_cells_of_the_known_types():
    a = labelled(seed=7)
    with threadpool_limits(1):
        table = evaluate(a, "type", "novel", device="cpu", min_cells=50, n_components=10, progress=False)
    counts = a.obs["type"].value_counts()
    for _, row in table.iterrows():
        others = len(a) - counts[row["held_out_type"]]
        # the negatives are cells the classifier never saw: 20% of the other types' cells
        assert row["n_train"] + row["n_known_held_out"] == others
        assert row["n_known_held_out"] == pytest.approx(0.2 * others, abs=1)


def test_projection_approach_runs_for_split_protocols():
    a = labelled(seed=8)
    pipe = evaluate(a, "type", "split5", device="cpu", min_cells=50, n_components=10, n_splits=2, progress=False)
    proj = evaluate(a, "type", "split5", approach="projection", device="cpu", min_cells=50, n_splits=2, progress=False)
    assert (proj["approach"] == "projection").all() and (pipe["approach"] == "pipeline").all()
    assert proj["accuracy"].min() > 0.9
    # the projection's own predictions, split by split
    from sklearn.model_selection import StratifiedShuffleSplit

    y = a.obs["type"].astype(str).to_numpy()
    tr, te = next(StratifiedShuffleSplit(1, test_size=0.2, random_state=0).split(y, y))
    direct = ScTOPProjection(None, device="cpu").fit(a[tr], "type").predict(a[te])
    assert proj["accuracy"].iloc[0] == pytest.approx(np.mean(direct == y[te]))
    novel = evaluate(a, "type", "novel", approach="projection", device="cpu", min_cells=50, progress=False)
    assert novel["novelty_auroc"].between(0, 1).all()


def test_evaluate_follows_the_preset_method_and_threshold(monkeypatch):
    import gpulin.evaluation as evaluation_module

    a = labelled(seed=9)
    kw = dict(device="cpu", min_cells=50, n_splits=2, progress=False)
    methods = []
    transform = evaluation_module.transform_implicit
    monkeypatch.setattr(evaluation_module, "transform_implicit",
                        lambda X, method, **k: methods.append(method) or transform(X, method, **k))
    evaluate(a, "type", "split5", preset="lognorm-ridge", **kw)
    evaluate(a, "type", "split5", preset="lognorm-ridge", method="sctop", **kw)
    evaluate(a, "type", "split5", **kw)
    assert methods == ["lognorm", "sctop", "sctop"]  # the preset's transform, unless overridden
    strict = evaluate(a, "type", "split5", unassigned_threshold=0.999999, n_components=10, **kw)
    assert "unassigned" in pooled_confusion(strict).columns  # as CellTypeClassifier.predict


def test_projection_scores_and_checks_parameters_set_later():
    a = labelled(seed=10)
    a.obs["code"] = a.obs["type"].str[1:].astype(int)
    proj = ScTOPProjection(device="cpu").fit(a, "code")
    assert 0.9 < proj.score(a, "code") == proj.score(a, a.obs["code"].to_numpy()) <= 1.0
    with pytest.raises(ValueError, match="min_gene_overlap"):
        ScTOPProjection(device="cpu").set_params(min_gene_overlap=5.0).fit(a, "code")


def test_novel_protocol_holds_out_one_cell_of_each_small_type():
    rng = np.random.default_rng(0)
    a = labelled(n=400, seed=11)
    a.obs["fine"] = [f"{t}_{i}" for t, i in zip(a.obs["type"], rng.integers(0, 20, size=400))]  # 80 small types
    table = evaluate(a, "fine", "novel", device="cpu", min_cells=4, n_components=5, progress=False)
    assert table["novelty_auroc"].between(0, 1).all()


def test_transfer_matches_integer_and_string_labels():
    a = labelled(seed=12)
    a.obs["code"] = a.obs["type"].str[1:].astype(int)
    ref, query = a[:200].copy(), a[200:].copy()
    query.obs["code"] = query.obs["code"].astype(str)  # 1 in the reference, "1" in the query
    t = evaluate(ref, "code", "transfer", query=query, device="cpu", min_cells=20, n_components=10)
    assert t["accuracy"].iloc[0] > 0.9


@pytest.mark.parametrize("n_types", [2, 4])
@pytest.mark.parametrize("preset", ["souza-mehta-2026", "lognorm-ridge"])
def test_predictions_through_the_folded_weights_equal_the_model_on_the_embedding(preset, n_types):
    """predict_proba is one product with folded_coef_ (loadings, whitening and coef_ multiplied
    out); it equals the head applied to the whitened scores, and fitting without the PCA loadings
    (what gpulin.evaluate does) predicts the same."""
    a = labelled(seed=11)
    a = a[a.obs["type"].isin([f"t{i}" for i in range(n_types)])].copy()
    train, test = a[: int(0.7 * a.n_obs)].copy(), a[int(0.7 * a.n_obs):].copy()
    clf = CellTypeClassifier(preset, device="cpu", n_components=15).fit(train, "type")
    n_out = 1 if n_types == 2 else n_types
    assert clf.folded_coef_.shape == (train.n_vars, n_out)
    S = clf._query(test, None)
    Z = np.asarray(clf.embed_transformed(S))
    if clf.params["model"] == "logistic":
        expected = clf.model_.predict_proba(Z)
    else:
        d = clf.model_.decision_function(Z)
        d = np.stack([-d, d], axis=1) if d.ndim == 1 else d
        expected = np.exp(d - d.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
    proba = clf.predict_proba(test)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    # decision_function: the head's decision values, scikit-learn's shapes
    decision = clf.decision_function(test)
    np.testing.assert_allclose(decision, clf.model_.decision_function(Z), rtol=1e-4, atol=1e-4)
    assert decision.shape == ((test.n_obs,) if n_types == 2 else (test.n_obs, n_types))
    d2 = np.stack([-decision, decision], axis=1) if decision.ndim == 1 else decision
    if clf.params["model"] == "logistic" and n_types == 2:
        d2 = d2 / 2  # [1 - sigmoid(z), sigmoid(z)] = softmax([-z/2, z/2])
    np.testing.assert_allclose(np.exp(d2) / np.exp(d2).sum(axis=1, keepdims=True), proba, atol=1e-5)
    del clf.folded_coef_  # as in an estimator pickled before gpulin kept it
    np.testing.assert_allclose(clf.predict_proba(test), proba, atol=1e-12)
    # fitted without loadings (solver="sklearn" on fewer cells than genes skips them)
    S_train = gpulin.transforms.transform_implicit(train.X, clf.params["method"], device="cpu")
    lean = CellTypeClassifier(preset, device="cpu", n_components=15).fit_transformed(
        S_train, train.obs["type"].to_numpy(), loadings=False)
    np.testing.assert_allclose(lean.predict_proba_transformed(S), proba, atol=1e-5)
    if preset == "souza-mehta-2026":
        assert lean.components_ is None
        with pytest.raises(ValueError, match="loadings=False"):
            lean.embed_transformed(S)


def test_transfer_renames_through_orthologs_as_map_orthologs_does():
    """protocol='transfer' with an ortholog table (renamed in place, one column take per side)
    gives the numbers of a query mapped by gpulin.map_orthologs first."""
    a = labelled(seed=12)
    ref, query = a[:250].copy(), a[250:].copy()
    # the query in another "species": genes renamed, a few without an ortholog, two ambiguous
    query.var_names = [f"m{g}" for g in query.var_names]
    table = pd.DataFrame({"mouse": [f"mg{j}" for j in range(20, 300)] + ["mg20"],
                          "human": [f"g{j}" for j in range(20, 300)] + ["g5"]})
    for approach in ("pipeline", "projection"):
        kw = dict(device="cpu", min_cells=20, **({"n_components": 10} if approach == "pipeline" else {}))
        t = evaluate(ref, "type", "transfer", query=query, orthologs=table, ortholog_cols=("mouse", "human"),
                     approach=approach, **kw)
        mapped = gpulin.map_orthologs(query, table, "mouse", "human")
        u = evaluate(ref, "type", "transfer", query=mapped, approach=approach, **kw)
        assert t["n_shared_genes"].iloc[0] == u["n_shared_genes"].iloc[0] == 279
        # the renaming's counts are reported (as map_orthologs' uns), and not for an already mapped query
        for key, value in mapped.uns["map_orthologs"].items():
            if isinstance(value, (int, np.integer)):
                assert t[f"orthologs_{key}"].iloc[0] == value
        assert "orthologs_n_mapped" not in u
        for col in ("macro_f1", "accuracy", "macro_auroc"):
            assert t[col].iloc[0] == pytest.approx(u[col].iloc[0], abs=1e-12)
        assert t["accuracy"].iloc[0] > 0.9


def test_unassigned_predictions_are_misses_not_a_class_and_work_with_integer_labels():
    """Cells below unassigned_threshold count as misses of their true type in the macro averages
    (scikit-learn's labels= without "unassigned"), are kept in the confusion matrix, and mix with
    int labels (the confusion matrix sorts them last)."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    from gpulin.evaluation import classification_metrics, confusion_table

    yt = np.array([0, 0, 1, 1, 2, 2])
    yp = np.array([0, "unassigned", 1, 2, 2, "unassigned"], dtype=object)
    m = classification_metrics(yt, yp, None, np.array([0, 1, 2]))
    as_str = yp.astype(str)
    for key, fn in (("macro_f1", f1_score), ("macro_precision", precision_score), ("macro_recall", recall_score)):
        assert m[key] == pytest.approx(fn(yt.astype(str), as_str, labels=["0", "1", "2"], average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(m["balanced_accuracy"])
    C = confusion_table(yt, yp)
    assert list(C.columns) == [0, 1, 2, "unassigned"] and C.loc[0, "unassigned"] == 1 and C.to_numpy().sum() == 6
    a = labelled(seed=14)
    a.obs["code"] = a.obs["type"].str[1:].astype(int)
    t = evaluate(a, "code", "split5", device="cpu", min_cells=20, n_components=10, n_splits=2, progress=False,
                 unassigned_threshold=0.9)
    assert np.isfinite(t["macro_f1"]).all() and (t["macro_recall"] == t["balanced_accuracy"]).all()


def test_threshold_on_a_ridge_head_warns_and_none_turns_the_default_off():
    a = labelled(seed=15)
    ridge = CellTypeClassifier("lognorm-ridge", device="cpu", n_components=10).fit(a, "type")
    with pytest.warns(UserWarning, match="ridge head's probabilities"):
        ridge.predict(a, unassigned_threshold=0.5)
    strict = CellTypeClassifier(device="cpu", n_components=10, unassigned_threshold=0.999999).fit(a, "type")
    assert "unassigned" in set(strict.predict(a))
    assert "unassigned" not in set(strict.predict(a, unassigned_threshold=None))
    with pytest.raises(ValueError, match="unassigned_threshold must be"):
        strict.predict(a, unassigned_threshold=1.5)


def test_labels_missing_in_a_list_and_series_aligned_by_cell_names():
    a = labelled(n=60, seed=16)
    with pytest.raises(ValueError, match="1 cells have no label"):
        CellTypeClassifier(device="cpu", n_components=5).fit(a, [np.nan] + list(a.obs["type"][1:]))
    with pytest.raises(ValueError, match="missing label"):
        gpulin.LogisticRegression(device="cpu").fit(np.ones((3, 2)), ["a", np.nan, "b"])
    shuffled = a.obs["type"].sample(frac=1, random_state=0)  # the same cells, another order
    from gpulin.classifier import labels_of

    np.testing.assert_array_equal(labels_of(a, shuffled), a.obs["type"].to_numpy())
    np.testing.assert_array_equal(labels_of(a, shuffled.reset_index(drop=True)), shuffled.to_numpy())  # by position
    with pytest.raises(ValueError, match="index does not match adata.obs_names"):
        labels_of(a, shuffled.rename(index=lambda c: c + "_other"))


def test_evaluate_checks_n_splits_novel_types_and_groups():
    a = labelled(seed=17)
    with pytest.raises(ValueError, match="n_splits must be an int >= 2"):
        evaluate(a, "type", "kfold", device="cpu", n_splits=1)
    with pytest.raises(ValueError, match="n_splits must be an int >= 1"):
        evaluate(a, "type", "split5", device="cpu", n_splits=0)
    two = a[a.obs["type"].isin(["t0", "t1"])].copy()
    with pytest.raises(ValueError, match="needs at least 3 cell types"):
        evaluate(two, "type", "novel", device="cpu", min_cells=10)
    a.obs["donor"] = pd.Series(np.where(np.arange(a.n_obs) % 2, "d1", "d2"), index=a.obs_names, dtype=object)
    a.obs.loc[a.obs_names[3], "donor"] = None
    with pytest.raises(ValueError, match="1 cells have no group"):
        evaluate(a, "type", "group", group_key="donor", device="cpu", min_cells=10)


def test_a_type_named_unassigned_is_refused_and_predictions_keep_the_labels_type():
    """'unassigned' is reserved for cells below a threshold: a training type of that name would be
    indistinguishable from them (and left out of the macro averages). Predictions keep the labels'
    type unless some cell is unassigned."""
    a = labelled(seed=13)
    renamed = a.obs["type"].replace({"t0": "unassigned"}).to_numpy()
    for fit in (lambda: CellTypeClassifier(device="cpu", n_components=5).fit(a, renamed),
                lambda: ScTOPProjection(device="cpu").fit(a, renamed),
                lambda: evaluate(a, renamed_column(a, renamed), "split5", device="cpu", min_cells=20, n_splits=1,
                                 n_components=5, progress=False)):
        with pytest.raises(ValueError, match="reserves for cells below an unassigned_threshold"):
            fit()
    codes = a.obs["type"].str[1:].astype(int).to_numpy()
    proj = ScTOPProjection(device="cpu").fit(a, codes)  # default threshold 0.1 on the order parameters
    pred = proj.predict(a)
    assert pred.dtype.kind == "i" and (pred == codes).mean() > 0.9  # scikit-learn metrics accept it
    mixed = proj.predict(a, unassigned_threshold=1.0)  # every cell unassigned: object array
    assert mixed.dtype == object and (mixed == "unassigned").all()
    strings = ScTOPProjection(device="cpu").fit(a, "type").predict(a, unassigned_threshold=1.0)
    assert strings.dtype.kind in "UO" and (strings == "unassigned").all()


def renamed_column(a: ad.AnnData, values: np.ndarray) -> str:
    a.obs["renamed"] = values
    return "renamed"


def test_object_columns_of_integers_keep_their_type_and_nested_lists_are_matrices():
    a = labelled(seed=14)
    a.obs["code"] = pd.Series(a.obs["type"].str[1:].astype(int).tolist(), dtype=object).to_numpy()
    clf = CellTypeClassifier(device="cpu", n_components=5).fit(a, "code")
    assert clf.classes_.dtype.kind == "i"
    assert (clf.predict(a) == a.obs["code"].to_numpy()).mean() > 0.9
    counts = a.X[:60].toarray().astype(int).tolist()
    y = a.obs["type"].to_numpy()[:60]
    lists = CellTypeClassifier(device="cpu", n_components=5).fit(counts, y)
    arrays = CellTypeClassifier(device="cpu", n_components=5).fit(np.asarray(counts), y)
    np.testing.assert_allclose(lists.predict_proba(counts), arrays.predict_proba(np.asarray(counts)))
    assert (ScTOPProjection(device="cpu").fit(counts, y).predict(counts) == y).mean() > 0.8
    with pytest.raises(ValueError, match="nested list"):
        CellTypeClassifier(device="cpu").fit([[1, 2], [3]], [0, 1])


def test_evaluate_refuses_arguments_its_protocol_would_ignore_and_reads_a_layer():
    a = labelled(seed=15)
    kw = dict(device="cpu", min_cells=20, progress=False)
    with pytest.raises(ValueError, match="takes none"):
        evaluate(a, "type", "split5", approach="projection", unassigned_threshold=0.9, **kw)
    with pytest.raises(TypeError, match="no_such_param"):
        evaluate(a, "type", "split5", no_such_param=1, **kw)
    with pytest.raises(ValueError, match="query is not used by protocol='split5'"):
        evaluate(a, "type", "split5", query=a, **kw)
    with pytest.raises(ValueError, match="group_key is not used"):
        evaluate(a, "type", "kfold", group_key="type", **kw)
    with pytest.raises(ValueError, match="n_splits is not used by protocol='novel'"):
        evaluate(a, "type", "novel", n_splits=3, **kw)
    with pytest.raises(ValueError, match="has no preset"):
        evaluate(a, "type", "split5", approach="projection", preset="lognorm-ridge", **kw)
    with pytest.raises(ValueError, match="ortholog_cols is used with orthologs"):
        evaluate(a, "type", "transfer", query=a, ortholog_cols=("x", "y"), **kw)
    # counts in a layer, something else in X: the same numbers as counts in X
    b = a.copy()
    b.layers["counts"] = b.X.copy()
    b.X = b.X * 0.5
    t = evaluate(a, "type", "split5", n_splits=2, n_components=10, **kw)
    u = evaluate(b, "type", "split5", n_splits=2, n_components=10, layer="counts", **kw)
    np.testing.assert_array_equal(t["macro_f1"], u["macro_f1"])
    query = a[:100].copy()
    query.obs.iloc[:10, query.obs.columns.get_loc("type")] = "t_new"  # a type the reference lacks
    t = evaluate(a[100:].copy(), "type", "transfer", query=query, n_components=10, **kw)
    assert t["n_query_of_other_types"].iloc[0] == 10 and t["n_test"].iloc[0] == 90
