"""Linear classifiers on CPU (NumPy) or GPU (CuPy) from one code path, with scikit-learn semantics.

- :class:`LogisticRegression`: L2 multinomial (binomial for two classes) logistic regression,
  L-BFGS in the array namespace.
- :class:`RidgeClassifier`: closed-form ridge on {-1, +1} class indicators.
"""

from .logistic import LogisticRegression
from .ridge import RidgeClassifier

__all__ = ["LogisticRegression", "RidgeClassifier"]
