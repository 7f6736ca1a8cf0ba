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
