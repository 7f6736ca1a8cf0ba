"""The estimators as scikit-learn and scanpy users use them: clone / get_params / set_params,
pipelines and cross-validation on count matrices, labels of any type, parameter checks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

import gpulin


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    """600 cells of 4 well-separated types (gamma programs, Poisson counts), 250 genes."""
    rng = np.random.default_rng(11)
    programs = rng.gamma(0.3, 1.0, size=(4, 250))
    labels = rng.integers(0, 4, size=600)
    mu = programs[labels] + 0.05 * programs.mean()
    mu *= 0.5 * 250 / mu.sum(axis=1, keepdims=True)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{l}" for l in labels]), "type_id": labels},
                       index=[f"c{i}" for i in range(600)])  # integer labels, as leiden ids
    return ad.AnnData(sp.csr_matrix(rng.poisson(mu).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(250)]))


def test_clone_get_and_set_params():
    emb = gpulin.LinearEmbedding("lognorm", 7, seed=3)
    assert clone(emb).get_params() == emb.get_params()
    assert repr(emb) == "LinearEmbedding(method='lognorm', n_components=7, seed=3)"
    clf = gpulin.CellTypeClassifier("cross-species", device="cpu", n_components=12)
    assert clf.get_params() == {"preset": "cross-species", "device": "cpu", "n_components": 12}
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin.params == clf.params
    clf.set_params(model="logistic", n_components=9)
    assert clf.params["model"] == "logistic" and clf.params["n_components"] == 9
    with pytest.raises(TypeError, match="Unknown parameter"):
        clf.set_params(n_component=3)
    proj = gpulin.ScTOPProjection(0.2, device="cpu")
    assert clone(proj).get_params() == {"unassigned_threshold": 0.2, "min_gene_overlap": 0.5, "device": "cpu"}


def test_pandas_output_names_the_components(atlas):
    est = gpulin.LinearEmbedding(n_components=4, device="cpu").set_output(transform="pandas")
    Z = est.fit_transform(atlas.X)
    assert isinstance(Z, pd.DataFrame) and list(Z.columns) == [f"linearembedding{i}" for i in range(4)]


def test_pandas_output_of_anndata_is_indexed_by_cell(atlas):
    import sklearn

    names = [f"linearembedding{i}" for i in range(4)]
    est = gpulin.LinearEmbedding(n_components=4, device="cpu").set_output(transform="pandas")
    Z = est.fit_transform(atlas)
    assert list(Z.index) == list(atlas.obs_names) and list(Z.columns) == names
    np.testing.assert_array_equal(Z.to_numpy(), gpulin.LinearEmbedding(n_components=4, device="cpu").fit_transform(atlas))
    query = atlas[10:20]
    assert list(est.transform(query).index) == list(query.obs_names)
    with sklearn.config_context(transform_output="pandas"):  # the global setting too
        plain = gpulin.LinearEmbedding(n_components=4, device="cpu").fit(atlas)
        assert list(plain.transform(query).index) == list(query.obs_names)
    assert isinstance(plain.transform(query), np.ndarray)  # default output: arrays


def test_pipeline_and_cross_validation_on_count_matrices(atlas):
    X, y = atlas.X, atlas.obs["cell_type"].to_numpy()
    pipe = make_pipeline(gpulin.LinearEmbedding(n_components=10, device="cpu"),
                         gpulin.LogisticRegression(device="cpu"))
    assert pipe.fit(X, y).score(X, y) > 0.9
    scores = cross_val_score(gpulin.CellTypeClassifier(device="cpu", n_components=10), X, y, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.9


def test_integer_labels_keep_their_type(atlas):
    clf = gpulin.CellTypeClassifier(device="cpu", n_components=10).fit(atlas, "type_id")
    pred = clf.predict(atlas)
    assert pred.dtype.kind == "i" and np.mean(pred == atlas.obs["type_id"].to_numpy()) > 0.9
    assert clf.score(atlas, "type_id") == pytest.approx(np.mean(pred == atlas.obs["type_id"].to_numpy()))
    unassigned = clf.predict(atlas, unassigned_threshold=0.999999)
    assert unassigned.dtype == object and "unassigned" in set(unassigned)
    proj = gpulin.ScTOPProjection(None, device="cpu").fit(atlas, atlas.obs["type_id"].to_numpy())  # labels given directly
    assert proj.predict(atlas).dtype.kind == "i"
    with pytest.raises(ValueError, match="Got 5 labels for 600 cells"):
        gpulin.CellTypeClassifier(device="cpu").fit(atlas, [0, 1, 0, 1, 0])


def test_projection_on_matrices_and_gene_overlap(atlas):
    proj = gpulin.ScTOPProjection(device="cpu").fit(atlas.X, atlas.obs["cell_type"])
    assert proj.order_parameters(atlas.X).shape == (600, 4)
    with pytest.raises(ValueError, match="basis has 250"):
        proj.order_parameters(atlas.X[:, :100])
    named = gpulin.ScTOPProjection(device="cpu").fit(atlas, "cell_type")
    with pytest.raises(ValueError, match=r"Only 5 of the 250 basis genes \(2.0%\)"):
        named.order_parameters(atlas[:, :5])
    assert named.order_parameters(atlas[:, :200]).shape == (600, 4)  # 80% of the genes


def test_duplicated_gene_names(atlas):
    dup = atlas.copy()
    dup.var_names = [*atlas.var_names[:-1], atlas.var_names[0]]
    with pytest.raises(ValueError, match="reference has 1 duplicated gene name"):
        gpulin.ScTOPProjection(device="cpu").fit(dup, "cell_type")
    with pytest.warns(UserWarning, match="1 duplicated gene name"):
        gpulin.CellTypeClassifier(device="cpu", n_components=10).fit(dup, "cell_type")
    with pytest.warns(UserWarning, match="1 duplicated gene name"):
        gpulin.LinearEmbedding(n_components=5, device="cpu").fit(dup)
    clf = gpulin.CellTypeClassifier(device="cpu", n_components=10).fit(atlas, "cell_type")
    query = atlas.copy()
    query.var_names = [*atlas.var_names[:-1], "not_a_reference_gene"]
    extra = ad.concat([query, ad.AnnData(sp.csr_matrix((600, 1), dtype=np.float32), obs=query.obs,
                                         var=pd.DataFrame(index=["not_a_reference_gene"]))], axis=1)
    assert clf.predict(extra).shape == (600,)  # repeated names outside the reference genes are fine
    query.var_names = [*atlas.var_names[:-1], atlas.var_names[0]]
    with pytest.raises(ValueError, match="query has 1 duplicated gene name.* among the reference genes"):
        clf.predict(query)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_components=0), "n_components must be an int >= 1"),
    (dict(n_genes=0), "n_genes must be an int >= 1 or None"),
    (dict(C=0.0), r"C must be a number in \(0, inf\)"),
    (dict(unassigned_threshold=1.5), r"unassigned_threshold must be a number in \[0, 1\] or None"),
    (dict(seed=np.random.RandomState(0)), "seed must be an int >= 0"),
])
def test_classifier_parameters_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpulin.CellTypeClassifier(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_iter=-1), "n_iter must be an int >= 0 or None"),
    (dict(n_oversamples=-5), "n_oversamples must be an int >= 0 or None"),
    (dict(seed=np.random.RandomState(0)), "seed must be an int >= 0"),
    (dict(target_sum=0.0), r"target_sum must be a number in \(0, inf\) or None"),
])
def test_embedding_parameters_are_checked(atlas, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpulin.embed(atlas, device="cpu", n_components=5, copy=True, **kwargs)


def test_target_sum_none_is_the_median_library_size_of_the_reference(atlas):
    libs = np.asarray(atlas.X.sum(axis=1)).ravel()
    median = float(np.median(libs[libs > 0]))
    est = gpulin.LinearEmbedding("lognorm", 5, target_sum=None, device="cpu").fit(atlas)
    assert est.target_sum_ == pytest.approx(median)
    ref = gpulin.LinearEmbedding("lognorm", 5, target_sum=median, device="cpu").fit(atlas)
    half = atlas[:300]  # another median: the query still uses the reference's
    np.testing.assert_allclose(est.transform(half), ref.transform(half), rtol=1e-5, atol=1e-5)
    out = gpulin.embed(atlas, method="lognorm", target_sum=None, n_components=5, device="cpu", copy=True)
    assert out.uns["X_gpulin"]["params"]["target_sum"] == pytest.approx(median)
