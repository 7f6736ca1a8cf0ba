"""Parity of gpulin's linear classifiers with scikit-learn, bad-input errors, CPU/GPU agreement."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression as SkLogistic
from sklearn.linear_model import RidgeClassifier as SkRidge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import gpulin
from gpulin._backend import cuda_available
from gpulin.models import LogisticRegression, RidgeClassifier

DATA_DIR = Path(os.environ.get("GPULIN_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
BARON_HUMAN = DATA_DIR / "baron_pancreas" / "baron_human.h5ad"

gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU with CuPy")


def _dataset(n_classes: int, n: int = 2000, p: int = 50, seed: int = 0, imbalanced: bool = True):
    weights = None
    if imbalanced:
        weights = [0.4] + [0.6 / (n_classes - 1)] * (n_classes - 1)
    X, y = make_classification(
        n_samples=n, n_features=p, n_informative=min(20, p - 1), n_redundant=min(5, max(p - 21, 0)),
        n_classes=n_classes,
        n_clusters_per_class=1, weights=weights, flip_y=0.05, random_state=seed,
    )
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def five_class():
    X, y = _dataset(5)
    names = np.array(["alpha", "beta", "delta", "gamma", "ductal"], dtype=object)
    return X, names[y]


@pytest.fixture(scope="module")
def sk_five_class_balanced(five_class):
    X, y = five_class
    return SkLogistic(C=1.0, class_weight="balanced", solver="lbfgs", tol=1e-12, max_iter=10000).fit(X, y)


def _assert_parity(ours, theirs, X, *, agree=0.995, atol=1e-3, dec_atol=2e-2):
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    assert ours.coef_.shape == theirs.coef_.shape
    pred, ref = ours.predict(X), theirs.predict(X)
    assert isinstance(pred, np.ndarray)
    assert np.mean(pred == ref) >= agree
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=atol, rtol=0)
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=dec_atol, rtol=0)


# ------------------------------------------------------------------------------------------
# LogisticRegression
# ------------------------------------------------------------------------------------------


def test_logistic_parity_five_classes_balanced(five_class, sk_five_class_balanced):
    X, y = five_class
    ours = LogisticRegression(C=1.0, class_weight="balanced", device="cpu").fit(X, y)
    assert ours.converged_
    _assert_parity(ours, sk_five_class_balanced, X)
    # tight tolerance converges to the same optimum to many digits
    tight = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-9, device="cpu").fit(X, y)
    np.testing.assert_allclose(tight.coef_, sk_five_class_balanced.coef_, atol=1e-5)
    np.testing.assert_allclose(tight.intercept_, sk_five_class_balanced.intercept_, atol=1e-5)
    np.testing.assert_array_equal(tight.predict(X), sk_five_class_balanced.predict(X))


def test_logistic_same_iterates_as_sklearn_default_tol(five_class):
    """With scikit-learn's default tol the two L-BFGS runs stop at nearly the same point."""
    X, y = five_class
    sk = SkLogistic(class_weight="balanced").fit(X, y)
    ours = LogisticRegression(class_weight="balanced", tol=1e-4, device="cpu").fit(X, y)
    _assert_parity(ours, sk, X, atol=5e-3, dec_atol=5e-2)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_logistic_parity_small_k(n_classes, class_weight):
    X, y = _dataset(n_classes, n=800, p=20, seed=n_classes)
    sk = SkLogistic(C=0.5, class_weight=class_weight, tol=1e-12, max_iter=10000).fit(X, y)
    ours = LogisticRegression(C=0.5, class_weight=class_weight, device="cpu").fit(X, y)
    _assert_parity(ours, sk, X)
    if n_classes == 2:  # scikit-learn 1.9's binomial model: one weight row, 1-D scores
        assert ours.coef_.shape == (1, X.shape[1]) and ours.intercept_.shape == (1,)
        assert ours.decision_function(X).shape == (X.shape[0],)
        assert ours.predict_proba(X).shape == (X.shape[0], 2)


def _sklearn_at_least(major: int, minor: int) -> bool:
    import sklearn

    return tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (major, minor)


def test_logistic_sample_weight_dict_class_weight_no_intercept():
    X, y = _dataset(4, n=600, p=15, seed=7)
    sw = np.random.default_rng(0).uniform(0.2, 3.0, size=len(y))
    cw = {0: 2.0, 1: 0.5, 2: 1.0, 3: 3.0}
    # scikit-learn < 1.7 balanced classes by unweighted counts even with sample weights
    balanced = ({"class_weight": "balanced"},) if _sklearn_at_least(1, 7) else ()
    for kwargs in ({"class_weight": cw}, *balanced, {"fit_intercept": False}):
        sk = SkLogistic(tol=1e-12, max_iter=10000, **kwargs).fit(X, y, sample_weight=sw)
        ours = LogisticRegression(device="cpu", **kwargs).fit(X, y, sample_weight=sw)
        _assert_parity(ours, sk, X)
    assert np.all(ours.intercept_ == 0)


def test_logistic_label_types(five_class, sk_five_class_balanced):
    X, y = five_class
    ref = LogisticRegression(class_weight="balanced", device="cpu").fit(X, y)
    cat = pd.Categorical(y, categories=["gamma", "ductal", "delta", "beta", "alpha", "unused"])
    for labels in (cat, pd.Series(y), list(y), y.astype(str)):
        m = LogisticRegression(class_weight="balanced", device="cpu").fit(X, labels)
        np.testing.assert_array_equal(m.classes_, sk_five_class_balanced.classes_)
        np.testing.assert_array_equal(m.coef_, ref.coef_)
    codes = np.unique(y, return_inverse=True)[1] * 10 + 3
    m = LogisticRegression(class_weight="balanced", device="cpu").fit(X, codes)
    np.testing.assert_array_equal(m.classes_, [3, 13, 23, 33, 43])
    assert m.predict(X).dtype == codes.dtype
    np.testing.assert_array_equal(m.coef_, ref.coef_)


def test_logistic_float32_batches_and_determinism(five_class):
    X, y = five_class
    a = LogisticRegression(class_weight="balanced", device="cpu").fit(X, y)
    b = LogisticRegression(class_weight="balanced", device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    batched = LogisticRegression(class_weight="balanced", device="cpu", batch_size=300).fit(X, y)
    np.testing.assert_allclose(batched.coef_, a.coef_, atol=1e-8)
    X32 = X.astype(np.float32)
    f32 = LogisticRegression(class_weight="balanced", device="cpu").fit(X32, y)
    np.testing.assert_allclose(f32.predict_proba(X32), a.predict_proba(X), atol=1e-4)
    assert f32.coef_.dtype == np.float64


def test_logistic_log_proba_and_score(five_class):
    X, y = five_class
    m = LogisticRegression(device="cpu").fit(X, y)
    np.testing.assert_allclose(np.exp(m.predict_log_proba(X)), m.predict_proba(X), rtol=1e-10)
    np.testing.assert_allclose(m.predict_proba(X).sum(axis=1), 1.0)
    assert m.score(X, y) > 0.7
    assert clone(m).get_params() == m.get_params()


def test_logistic_max_iter_warns(five_class):
    X, y = five_class
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        m = LogisticRegression(max_iter=3, device="cpu").fit(X, y)
    assert m.n_iter_[0] == 3 and not m.converged_


@pytest.mark.skipif(not BARON_HUMAN.exists(), reason=f"real data not found at {BARON_HUMAN} (set GPULIN_DATA_DIR)")
def test_logistic_parity_baron_pca():
    """Real-ish case: whitened PCA (220) of log-normalized Baron human, the 5 types with >= 100 cells."""
    # one BLAS thread: on a busy 2-core machine OpenBLAS threads on these small products oversubscribe
    with threadpool_limits(1):
        _baron_parity()


def _baron_parity():
    import anndata as ad
    from sklearn.decomposition import PCA

    adata = ad.read_h5ad(BARON_HUMAN)
    counts = adata.obs["cell_type1"].value_counts()
    adata = adata[adata.obs["cell_type1"].isin(counts.index[counts >= 100]).to_numpy()]
    X = adata.X.tocsr().astype(np.float64)
    X = scipy.sparse.diags(1e4 / np.maximum(X.sum(axis=1).A1, 1)) @ X
    X.data = np.log1p(X.data)
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - np.asarray(X.mean(axis=0)).ravel() ** 2
    top = np.sort(np.argsort(-var, kind="stable")[:1000])
    Xd = StandardScaler().fit_transform(X[:, top].toarray())
    Z = PCA(220, whiten=True, svd_solver="randomized", random_state=0).fit_transform(Xd)
    y = adata.obs["cell_type1"]
    sk = SkLogistic(C=1.0, class_weight="balanced", tol=1e-12, max_iter=10000).fit(Z, y)
    ours = LogisticRegression(C=1.0, class_weight="balanced", device="cpu").fit(Z, y)
    assert ours.converged_
    _assert_parity(ours, sk, Z, dec_atol=5e-2)


# ------------------------------------------------------------------------------------------
# RidgeClassifier
# ------------------------------------------------------------------------------------------


def _sk_coef(sk):
    return np.atleast_2d(sk.coef_)  # scikit-learn 1.9 returns (p,) for two classes


@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_ridge_parity(n_classes, class_weight):
    X, y = _dataset(n_classes, n=1500, p=40, seed=n_classes)
    X = X * np.linspace(0.5, 3.0, X.shape[1]) + 2.0  # uncentered, unequal scales
    labels = np.array(["a", "b", "c", "d", "e"])[y]
    sk = SkRidge(alpha=3.0, class_weight=class_weight).fit(X, labels)
    ours = RidgeClassifier(alpha=3.0, class_weight=class_weight, device="cpu").fit(X, labels)
    assert ours.solver_ == "gram"
    np.testing.assert_array_equal(ours.classes_, sk.classes_)
    np.testing.assert_allclose(ours.coef_, _sk_coef(sk), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(ours.intercept_, np.ravel(sk.intercept_), rtol=1e-5, atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
    np.testing.assert_allclose(ours.decision_function(X), sk.decision_function(X), rtol=1e-6, atol=1e-9)
    batched = RidgeClassifier(alpha=3.0, class_weight=class_weight, device="cpu", batch_size=128).fit(X, labels)
    np.testing.assert_allclose(batched.coef_, ours.coef_, rtol=1e-10, atol=1e-12)


def test_ridge_sample_weight_no_intercept_and_kernel_form():
    X, y = _dataset(3, n=400, p=12, seed=3)
    sw = np.random.default_rng(1).uniform(0.1, 2.0, size=len(y))
    for kwargs in ({"class_weight": {0: 3.0, 1: 1.0, 2: 0.5}}, {"fit_intercept": False}, {"alpha": 1e-3}):
        sk = SkRidge(**kwargs).fit(X, y, sample_weight=sw)
        ours = RidgeClassifier(device="cpu", **kwargs).fit(X, y, sample_weight=sw)
        np.testing.assert_allclose(ours.coef_, sk.coef_, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
    # more features than samples: the n x n dual system
    Xw, yw = X[:60], y[:60]
    Xw = np.hstack([Xw, np.random.default_rng(2).normal(size=(60, 100))])
    sk = SkRidge(alpha=2.0, class_weight="balanced").fit(Xw, yw, sample_weight=sw[:60])
    ours = RidgeClassifier(alpha=2.0, class_weight="balanced", device="cpu").fit(Xw, yw, sample_weight=sw[:60])
    assert ours.solver_ == "kernel"
    np.testing.assert_allclose(ours.coef_, sk.coef_, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours.intercept_, sk.intercept_, rtol=1e-5, atol=1e-9)


def test_ridge_singular_gram_alpha_zero():
    X, y = _dataset(3, n=300, p=10, seed=5)
    X = np.hstack([X, X[:, :2]])  # duplicated columns: the Gram matrix is singular
    m = RidgeClassifier(alpha=0.0, device="cpu").fit(X, y)
    assert np.all(np.isfinite(m.coef_))
    ref = RidgeClassifier(alpha=0.0, device="cpu").fit(X[:, :10], y)
    np.testing.assert_allclose(m.decision_function(X), ref.decision_function(X[:, :10]), atol=1e-8)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("Model", [LogisticRegression, RidgeClassifier])
def test_bad_input(Model):
    X, y = _dataset(3, n=120, p=6, seed=1, imbalanced=False)
    labels = np.array(["x", "y", "z"], dtype=object)[y]
    with pytest.raises(ValueError, match=r"needs at least 2 classes, got 1: 'x'"):
        Model(device="cpu").fit(X, np.full(len(X), "x"))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Model(device="cpu").fit(bad, labels)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        Model(device="cpu").fit(bad, labels)
    with pytest.raises(ValueError, match="inconsistent lengths"):
        Model(device="cpu").fit(X, labels[:-1])
    missing = labels.copy()
    missing[5] = None
    with pytest.raises(ValueError, match="missing label"):
        Model(device="cpu").fit(X, missing)
    with pytest.raises(ValueError, match="missing label"):
        Model(device="cpu").fit(X, np.where(y == 1, np.nan, y.astype(float)))
    with pytest.raises(ValueError, match="missing label"):
        Model(device="cpu").fit(X, pd.Categorical(missing))
    with pytest.raises(ValueError, match="continuous"):
        Model(device="cpu").fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(TypeError, match="sparse"):
        Model(device="cpu").fit(scipy.sparse.csr_matrix(X), labels)
    with pytest.raises(ValueError, match="2-dimensional"):
        Model(device="cpu").fit(X[:, 0], labels)
    with pytest.raises(NotFittedError):
        Model(device="cpu").predict(X)
    m = Model(device="cpu").fit(X, labels)
    with pytest.raises(ValueError, match="X has 5 features, but .* is expecting 6 features"):
        m.predict(X[:, :5])
    with pytest.raises(ValueError, match="non-finite"):
        m.predict(bad)
    with pytest.raises(ValueError, match="sample_weight"):
        Model(device="cpu").fit(X, labels, sample_weight=-np.ones(len(X)))
    with pytest.raises(ValueError, match="device"):
        Model(device="tpu").fit(X, labels)


def test_bad_hyperparameters():
    X, y = _dataset(3, n=100, p=5, seed=2, imbalanced=False)
    for kwargs in ({"C": 0}, {"C": -1.0}, {"max_iter": -1}, {"tol": -1.0}, {"class_weight": "auto"}):
        with pytest.raises(ValueError):
            LogisticRegression(device="cpu", **kwargs).fit(X, y)
    with pytest.raises(ValueError, match="alpha"):
        RidgeClassifier(alpha=-1.0, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        LogisticRegression(class_weight={0: 1.0, 7: 2.0}, device="cpu").fit(X, y)


# ------------------------------------------------------------------------------------------
# CPU vs GPU
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n_classes", [2, 5])
def test_logistic_cpu_gpu_agree(n_classes):
    import cupy as cp

    X, y = _dataset(n_classes, n=3000, p=40, seed=11)
    # Converged tightly: at the default tol the two devices' rounding can stop L-BFGS at iterates
    # that differ by more than the 1e-6 compared here.
    cpu = LogisticRegression(class_weight="balanced", device="cpu", tol=1e-10).fit(X, y)
    gpu_np = LogisticRegression(class_weight="balanced", device="cuda", tol=1e-10).fit(X, y)
    gpu_cp = LogisticRegression(class_weight="balanced", device="auto", batch_size=700, tol=1e-10)
    gpu_cp.fit(cp.asarray(X), cp.asarray(y))
    for m in (gpu_np, gpu_cp):
        np.testing.assert_allclose(m.coef_, cpu.coef_, atol=1e-6)
        np.testing.assert_allclose(m.predict_proba(X), cpu.predict_proba(X), atol=1e-6)
        pred = m.predict(cp.asarray(X))
        assert isinstance(pred, np.ndarray)
        np.testing.assert_array_equal(pred, cpu.predict(X))
    X32 = cp.asarray(X, dtype=cp.float32)
    m32 = LogisticRegression(class_weight="balanced").fit(X32, y)
    np.testing.assert_allclose(m32.predict_proba(X32), cpu.predict_proba(X), atol=1e-4)
    # fitted on the GPU, predicted on the CPU, and the other way round
    on_cpu = clone(gpu_cp).fit(cp.asarray(X), y).set_params(device="cpu")
    np.testing.assert_allclose(on_cpu.predict_proba(X), cpu.predict_proba(X), atol=1e-6)
    on_gpu = clone(cpu).fit(X, y).set_params(device="cuda")
    np.testing.assert_allclose(on_gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-12)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_ridge_cpu_gpu_agree(class_weight):
    import cupy as cp

    X, y = _dataset(4, n=3000, p=40, seed=12)
    cpu = RidgeClassifier(class_weight=class_weight, device="cpu").fit(X, y)
    gpu_m = RidgeClassifier(class_weight=class_weight, device="auto", batch_size=512).fit(cp.asarray(X), y)
    np.testing.assert_allclose(gpu_m.coef_, cpu.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu_m.intercept_, cpu.intercept_, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(gpu_m.predict(cp.asarray(X)), cpu.predict(X))
    wide = RidgeClassifier(device="cuda").fit(X[:30], y[:30])
    wide_cpu = RidgeClassifier(device="cpu").fit(X[:30], y[:30])
    np.testing.assert_allclose(wide.coef_, wide_cpu.coef_, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("model", ["logistic", "ridge"])
def test_device_branches_on_a_strict_cupy_stand_in(model, monkeypatch):
    """The classifiers' device branches with the strict CuPy stand-in (tests/strict_device.py)
    as the CUDA backend: device and host inputs, nothing converted implicitly, results equal to
    the host run's."""
    import dataclasses

    import gpulin._backend as backend_module
    from strict_device import DeviceArray, xp as strict_xp

    stand_in = dataclasses.replace(gpulin.get_backend("cpu"), name="cuda", xp=strict_xp)
    monkeypatch.setattr(backend_module, "_cuda_probe", lambda: (stand_in, ""))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    Z = rng.standard_normal((300, 8)).astype(np.float32)
    Z[y == 1] += 1.5
    Z[y == 2, 0] -= 2.0
    cls = gpulin.LogisticRegression if model == "logistic" else gpulin.RidgeClassifier
    host = cls(device="cpu", class_weight="balanced").fit(Z, y)
    for X in (DeviceArray(Z), Z):
        dev = cls(device="cuda", class_weight="balanced").fit(X, y)
        assert isinstance(dev.coef_, np.ndarray)
        np.testing.assert_allclose(dev.coef_, host.coef_, rtol=1e-6, atol=1e-8)
        out = dev.decision_function(X)
        np.testing.assert_allclose(out.get() if hasattr(out, "get") else out, host.decision_function(Z), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(dev.predict(X), host.predict(Z))
        if model == "logistic":
            np.testing.assert_allclose(dev.predict_proba(X), host.predict_proba(Z), atol=1e-7)


def test_encode_labels_takes_every_label_container_and_names_what_is_wrong():
    """Labels as a Series, Index, Categorical (occurring categories only), one-column DataFrame,
    (n, 1) column, list or bool array encode alike; other shapes and mixes are clear errors."""
    from gpulin.models._labels import encode_labels

    y = np.array(["b", "a", "c", "a"])
    expected_classes, expected_codes = np.array(["a", "b", "c"]), np.array([1, 0, 2, 0])
    for form in (pd.Series(y, index=[9, 8, 7, 6]), pd.Index(y), pd.DataFrame({"t": y}), y[:, None], list(y),
                 pd.Categorical(y, categories=["a", "b", "c", "unused"])):
        classes, codes = encode_labels(form, 4)
        np.testing.assert_array_equal(classes.astype(str), expected_classes)
        np.testing.assert_array_equal(codes, expected_codes)
    classes, codes = encode_labels(np.array([True, False, True]))
    assert classes.dtype == bool and codes.tolist() == [1, 0, 1]
    classes, _ = encode_labels([3, 1, 2.0])
    assert classes.tolist() == [1, 2, 3]
    for bad, error, match in (
        (None, ValueError, "is None"),
        (pd.DataFrame({"a": y, "b": y}), ValueError, "2 columns"),
        (np.stack([y, y], axis=1), ValueError, "multilabel"),
        (np.array([], dtype=str), ValueError, "empty"),
        (["a", 1, "b"], TypeError, "mixes string and non-string"),
        (np.array(["a", 1, (2,)], dtype=object), TypeError, "cannot be ordered"),
        (np.array([0.0, np.inf, 1.0]), ValueError, "missing label"),
        (["a", float("nan"), "b"], ValueError, r"missing label\(s\) \(None/NaN/inf\), first at position\(s\) \[1\]"),
    ):
        with pytest.raises(error, match=match):
            encode_labels(bad)
