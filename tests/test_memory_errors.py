"""Running out of memory: every step re-raises it as a DeviceMemoryError that names the step, its
size and what to change (the GPU case is simulated on the CPU: the same guard handles both)."""

from __future__ import annotations

import gc
import importlib
import weakref

import anndata as ad
import pytest

import gpulin
from gpulin import _cpu_kernels
from gpulin._backend import CPU, DeviceMemoryError, is_out_of_memory, memory_guard
from gpulin.datasets import synthetic_atlas


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    return synthetic_atlas(400, n_genes=300, n_types=4, seed=3)


def _out_of_memory(*args, **kwargs):
    raise MemoryError("Unable to allocate 80.0 GiB for an array")


def test_transform_names_the_row_block_and_the_batch_size(atlas, monkeypatch):
    monkeypatch.setattr(_cpu_kernels, "sctop_rows", _out_of_memory)
    with pytest.raises(DeviceMemoryError, match=r"Out of cpu memory transforming cells 0:100 \(.* nonzeros, "
                       r"batch_size=100\)\. Pass a smaller batch_size"):
        gpulin.sctop_transform(atlas.X, batch_size=100)
    with pytest.raises(DeviceMemoryError, match=r"batch_size=None, i\.e\. \d+ cells here"):
        gpulin.embed(atlas, device="cpu", n_components=5)


def test_embed_pca_and_query_projection(atlas, monkeypatch):
    est = gpulin.LinearEmbedding("sctop", 5, device="cpu").fit(atlas)
    monkeypatch.setattr(importlib.import_module("gpulin.embed"), "pca", _out_of_memory)  # the module, not the function
    with pytest.raises(DeviceMemoryError, match=r"in the PCA \(5 components of 400 cells\).*smaller n_iter"):
        gpulin.embed(atlas, device="cpu", n_components=5)
    monkeypatch.setattr(gpulin.implicit.StandardizedOperator, "matmat", _out_of_memory)
    with pytest.raises(DeviceMemoryError, match="projecting 400 query cells"):
        est.transform(atlas)


def test_classifier_fit_predict_and_projection(atlas, monkeypatch):
    import gpulin.classifier as classifier_module

    clf = gpulin.CellTypeClassifier(device="cpu", n_components=5).fit(atlas, "cell_type")
    proj = gpulin.ScTOPProjection(device="cpu").fit(atlas, "cell_type")
    with monkeypatch.context() as m:
        m.setattr(classifier_module, "pca", _out_of_memory)
        with pytest.raises(DeviceMemoryError, match="fitting the classifier on 400 cells x 300 genes.*fewer n_components"):
            gpulin.CellTypeClassifier(device="cpu", n_components=5).fit(atlas, "cell_type")
    with monkeypatch.context() as m:
        m.setattr(classifier_module.StandardizedOperator, "matmat", _out_of_memory)
        with pytest.raises(DeviceMemoryError, match="predicting 400 cells"):
            clf.predict(atlas)
    with monkeypatch.context() as m:
        m.setattr(classifier_module.SparsePlusRowConstant, "dot", _out_of_memory)
        with pytest.raises(DeviceMemoryError, match="projecting 400 query cells"):
            proj.order_parameters(atlas)
    # and nothing is left broken: the same objects work once memory is back
    assert clf.predict(atlas).shape == (400,)


def test_cuda_library_allocation_failures_count_as_out_of_memory():
    CUSparseError = type("CuSparseError", (RuntimeError,), {"__module__": "cupy_backends.cuda.libs.cusparse"})
    assert is_out_of_memory(CUSparseError("CUSPARSE_STATUS_INSUFFICIENT_RESOURCES"))
    assert is_out_of_memory(type("CUBLASError", (RuntimeError,), {"__module__": "cupy_backends.cuda.libs.cublas"})(
        "CUBLAS_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(CUSparseError("CUSPARSE_STATUS_INVALID_VALUE"))
    assert not is_out_of_memory(RuntimeError("out of memory"))  # not from CuPy
    with pytest.raises(DeviceMemoryError, match="Out of cpu memory doing it. Do less.") as info:
        with memory_guard(CPU, "doing it", "Do less."):
            raise CUSparseError("CUSPARSE_STATUS_INSUFFICIENT_RESOURCES")
    assert isinstance(info.value.__cause__, CUSparseError)


def test_other_errors_and_inner_messages_pass_through_unchanged():
    with pytest.raises(ValueError, match="^bad$"):
        with memory_guard(CPU, "outer", "x"):
            raise ValueError("bad")
    with pytest.raises(DeviceMemoryError, match="^Out of cpu memory inner. y$"):
        with memory_guard(CPU, "outer", "x"):
            with memory_guard(CPU, "inner", "y"):
                raise MemoryError


def test_the_failed_steps_temporaries_are_released():
    class Big:
        pass

    ref = None

    def step():
        nonlocal ref
        big = Big()
        ref = weakref.ref(big)
        raise MemoryError

    try:
        with memory_guard(CPU, "in a step", "x"):
            step()
    except DeviceMemoryError as exc:  # while the error is handled (a retry would run here) ...
        gc.collect()
        assert ref() is None  # ... the failed step's locals are gone, though its frames are still chained
        assert exc.__cause__.__traceback__ is not None
    else:
        pytest.fail("no DeviceMemoryError")


def test_on_a_gpu_the_pool_is_released_and_host_failures_say_host():
    import types

    from gpulin._backend import Backend

    released = []
    pool = types.SimpleNamespace(free_all_blocks=lambda: released.append(True))
    fake_cupy = types.SimpleNamespace(get_default_memory_pool=lambda: pool)
    cuda = Backend("cuda", fake_cupy, None, None)
    OutOfMemoryError = type("OutOfMemoryError", (MemoryError,), {"__module__": "cupy.cuda.memory"})
    with pytest.raises(DeviceMemoryError, match="^Out of cuda memory in a step"):
        with memory_guard(cuda, "in a step", "x"):
            raise OutOfMemoryError("Out of memory allocating 1,024 bytes")
    with pytest.raises(DeviceMemoryError, match="^Out of host memory in a step"):
        with memory_guard(cuda, "in a step", "x"):
            raise MemoryError("Unable to allocate 8.0 GiB")  # NumPy, during a GPU run
    assert released == [True, True]


def test_the_transformed_matrix_is_released_while_the_error_is_handled(atlas, monkeypatch):
    """The frame that holds the transformed matrix (the estimator's fit) is running when the guard
    re-raises; the public entry point clears it once the error leaves it."""
    embed_module = importlib.import_module("gpulin.embed")
    refs = []
    transform = embed_module.LinearEmbedding._transform_counts

    def keep_a_ref(self, X, backend, *args):
        S = transform(self, X, backend, *args)
        refs.append(weakref.ref(S))
        return S

    monkeypatch.setattr(embed_module.LinearEmbedding, "_transform_counts", keep_a_ref)
    monkeypatch.setattr(embed_module, "pca", _out_of_memory)
    try:
        gpulin.embed(atlas, device="cpu", n_components=5)
    except DeviceMemoryError:
        gc.collect()
        assert refs and refs[0]() is None  # a retry (smaller n_components, say) would have the memory
    else:
        pytest.fail("no DeviceMemoryError")
