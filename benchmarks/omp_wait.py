"""OpenMP wait policy: gpulin's default (``OMP_WAIT_POLICY=PASSIVE``) against GNU OpenMP's own.

gpulin sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before Numba loads GNU OpenMP.
This script measures what that changes, each policy in its own subprocess on the same data:

* ``eigh``: a 230 x 230 ``numpy.linalg.eigh`` right after an embed (the pattern of every PCA: compiled
  parallel kernels, then small LAPACK calls), median of 5;
* ``embed``: ``gpulin.embed`` of the synthetic atlas (sctop, 50 components), median of 5 after a warm-up;
* the gpulin side of ``accuracy.py``'s ``baron_human_100`` and ``kang_stim`` tasks (needs the shared data).

"default" loads Numba's OpenMP layer before gpulin is imported, so GNU OpenMP starts with the
policy unset, as it did before gpulin set it.

Usage::

    python benchmarks/omp_wait.py [--n-cells 20000] [--out benchmarks/results/omp_wait_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _provenance import git_commit, write_json  # noqa: E402

CHILD = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
if sys.argv[1] == "default":
    os.environ.pop("OMP_WAIT_POLICY", None)
    import numba.np.ufunc.omppool  # GNU OpenMP reads its environment now: policy unset
    policy = "unset when GNU OpenMP started (its own default)"
else:
    policy = "PASSIVE (gpulin's setting)"
import numpy as np
sys.path.insert(0, sys.argv[3])
import gpulin
from gpulin.datasets import synthetic_atlas

n_cells = int(sys.argv[2])
a = synthetic_atlas(n_cells, seed=0)
A = np.random.default_rng(0).random((230, 230)); A = A @ A.T
gpulin.embed(a, device="cpu", n_components=50)  # warm-up (JIT, caches)
eigh, embed = [], []
for _ in range(5):
    t = time.perf_counter(); gpulin.embed(a, device="cpu", n_components=50); embed.append(time.perf_counter() - t)
    t = time.perf_counter(); np.linalg.eigh(A); eigh.append(time.perf_counter() - t)
out = {"policy": policy, "eigh_after_embed_s": float(np.median(eigh)),
       "eigh_runs_s": eigh, "embed_s": float(np.median(embed)), "embed_runs_s": embed}
try:
    import accuracy as A_
    d = A_.load(); T = A_.tasks(d)
    A_.run_gpulin(*T["kang_cell_type"], "cpu", d["orth"])  # warm-up
    for name in ("baron_human_100", "kang_stim"):
        t = time.perf_counter(); A_.run_gpulin(*T[name], "cpu", d["orth"]); out[name + "_s"] = time.perf_counter() - t
except FileNotFoundError as exc:
    out["accuracy_skipped"] = str(exc)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--out", default=str(HERE / "results" / "omp_wait_cpu.json"))
    args = ap.parse_args()
    rows = {}
    for policy in ("default", "gpulin"):
        res = subprocess.run([sys.executable, "-c", CHILD, policy, str(args.n_cells), str(HERE)],
                             capture_output=True, text=True, check=True, cwd=HERE.parent)
        rows[policy] = json.loads(res.stdout.strip().splitlines()[-1])
        print(policy, json.dumps({k: round(v, 4) for k, v in rows[policy].items() if isinstance(v, float)}), flush=True)
    out = {"benchmark": "omp_wait.py", "command": "python benchmarks/omp_wait.py " + " ".join(sys.argv[1:]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "gpulin_commit": git_commit(), "n_cells": args.n_cells, "results": rows}
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
