"""The gpulin commit a benchmark ran at, for its JSON (``"gpulin_commit"``)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files differ from it; ``"unknown"`` outside
    a git checkout (for example on the GPU machine, which gets a copy of the working tree).
    Taken once, when a benchmark imports this module (its start), and cached: edits made while a
    long benchmark runs do not change what it reports."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


git_commit()  # at import: the state the benchmark starts from


def environment() -> dict:
    """Versions of the libraries a benchmark ran with (those imported or importable), the CPU
    model and core count, and the GPU when CuPy or PyTorch sees one: for every result JSON."""
    import importlib
    import importlib.metadata
    import os
    import platform

    env: dict = {"python": platform.python_version(), "platform": platform.platform(),
                 "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    for dist in ("gpulin", "numpy", "scipy", "numba", "scikit-learn", "anndata", "scanpy", "sctop", "torch", "cupy-cuda12x",
                 "cupy-cuda13x", "cupy"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        cupy = importlib.import_module("cupy")
        if cupy.is_available():
            props = cupy.cuda.runtime.getDeviceProperties(0)
            env["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # no CuPy, or no driver
        pass
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def write_json(path: str | Path, record: dict) -> Path:
    """Write a result JSON (creating its folder), with :func:`environment` added under ``"environment"``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "environment": environment()}, indent=1))
    return path
