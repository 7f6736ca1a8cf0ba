"""Warnings that point at the user's code, wherever in gpulin they are raised."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the caller of the outermost gpulin frame on the stack: the
    line of the user's call, however many gpulin frames (decorators, helpers) and wrappers of
    other libraries (scikit-learn's ``set_output``) lie in between."""
    level, outermost = 2, 2  # stacklevel 1 is this function, 2 its caller (a gpulin frame)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            outermost = level
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=outermost + 1)
