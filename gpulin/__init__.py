"""gpulin: exact, never-densified linear single-cell representations on GPU (CuPy) and CPU (NumPy).

Main entry points
-----------------
embed
    transform (scTOP or lognorm) -> standardize -> PCA, results written into an AnnData.
LinearEmbedding
    The same as a scikit-learn-style estimator: ``fit`` a reference, ``transform`` queries.
sctop_transform, lognorm_transform
    The per-cell transforms in their exact sparse form ("sparse + one constant per cell").
CellTypeClassifier
    The published classifier preset (sctop -> ANOVA -> standardize -> PCA(220, whitened) ->
    balanced logistic regression), every step a parameter.
evaluate
    The study's protocols (split5, kfold, group, transfer, novel) as a tidy table of metrics.
"""

from __future__ import annotations

from ._backend import DeviceMemoryError, GPUUnavailableError, cuda_available, get_backend
from .classifier import CellTypeClassifier, ScTOPProjection
from .embed import LinearEmbedding, embed
from .evaluation import evaluate
from .models import LogisticRegression, RidgeClassifier
from .orthologs import map_orthologs
from .transforms import EmptyCellsWarning, lognorm_transform, sctop_transform

__version__ = "0.1.0"

__all__ = [
    "CellTypeClassifier",
    "ScTOPProjection",
    "DeviceMemoryError",
    "EmptyCellsWarning",
    "GPUUnavailableError",
    "LinearEmbedding",
    "LogisticRegression",
    "RidgeClassifier",
    "cuda_available",
    "embed",
    "evaluate",
    "get_backend",
    "lognorm_transform",
    "map_orthologs",
    "sctop_transform",
]
