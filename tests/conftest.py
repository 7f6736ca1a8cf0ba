"""Shared fixtures: real data location (skips with a reason when absent) and small count matrices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from gpulin._backend import cuda_available

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("GPULIN_DATA_DIR", REPO.parent / "shared" / "data"))


def shared_file(relpath: str) -> Path:
    path = data_dir() / relpath
    if not path.exists():
        pytest.skip(f"shared dataset {relpath} not found under {data_dir()} (set GPULIN_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def baron_human():
    import anndata as ad

    return ad.read_h5ad(shared_file("baron_pancreas/baron_human.h5ad"))


@pytest.fixture(scope="session")
def kang():
    import anndata as ad

    return ad.read_h5ad(shared_file("kang_ifnb_muscat/kang_muscat_counts.h5ad"))


def make_counts(n: int = 300, g: int = 400, rank: int = 5, seed: int = 0, depth: float = 0.5) -> sp.csr_matrix:
    """Poisson counts of ``rank`` discrete cell types: many ties, a clear rank-(rank - 1) signal.

    ``depth`` is the mean count per gene per cell (library sizes vary log-normally).
    """
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 1.0, size=(rank, g))
    labels = rng.integers(0, rank, size=n)
    mu = programs[labels] + 0.05 * programs.mean()
    mu *= depth * g / mu.sum(axis=1, keepdims=True) * rng.lognormal(0.0, 0.5, size=(n, 1))
    return sp.csr_matrix(rng.poisson(mu).astype(np.float32))


@pytest.fixture
def counts() -> sp.csr_matrix:
    return make_counts()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy (cupy.is_available() is False here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
