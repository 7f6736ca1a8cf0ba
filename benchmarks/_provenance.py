"""Provenance for every benchmark JSON: the gpulin commit it ran at, library versions, the CPU and GPU."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files other than the result files
    (``benchmarks/results/``, which earlier benchmarks of a series rewrite) differ from it; ``"unknown"`` outside
    a git checkout (for example on the GPU machine, which gets a copy of the working tree).
    Taken once, when a benchmark imports this module (its start), and cached: edits made while a
    long benchmark runs do not change what it reports."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


git_commit()  # at import: the state the benchmark starts from


def environment() -> dict:
    """The commit (:func:`git_commit`), the versions of the libraries installed here, the CPU
    model and core count, and the GPU when CuPy sees one: a result JSON's ``"versions"``."""
    import importlib
    import importlib.metadata
    import os
    import platform

    env: dict = {"gpulin_commit": git_commit(), "python": platform.python_version(), "platform": platform.platform(),
                 "cpu": cpu_model(), "cpu_count": os.cpu_count()}
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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def write_json(path: str | Path, record: dict) -> Path:
    """Write a result JSON (creating its folder), its ``"versions"`` completed by :func:`environment`."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**record, "versions": {**environment(), **record.get("versions", {})}}
    path.write_text(json.dumps(record, indent=1, default=float))
    return path
