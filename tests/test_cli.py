"""The command line: ``gpulin demo`` and ``gpulin evaluate`` on small inputs."""

from __future__ import annotations

import json

import pytest

from gpulin.cli import main
from gpulin.datasets import synthetic_atlas


def test_demo_embeds_reports_and_plots(tmp_path, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    png = tmp_path / "demo.png"
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a session's own backend (a notebook's inline one)
    try:
        rc = main(["demo", "--device", "cpu", "--n-cells", "1500", "--n-genes", "600", "--n-components", "10",
                   "--plot", str(png)])
        assert matplotlib.get_backend() == "svg"  # main() called in a session leaves its backend alone
    finally:
        matplotlib.use(backend)
    out = capsys.readouterr().out
    assert rc == 0
    assert "synthetic atlas: 1,500 cells x 600 genes" in out
    assert "15-nearest-neighbour accuracy for cell_type" in out
    knn = float(out.split("components: ")[1].split()[0])
    assert knn > 0.17  # 12 cell types: chance is ~0.08 (20k x 20k, 50 components: 0.96)
    assert png.exists() and png.stat().st_size > 0


def test_demo_without_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--device", "cpu", "--n-cells", "800", "--n-genes", "300", "--n-components", "5",
                 "--method", "lognorm", "--plot", ""]) == 0
    assert "wrote" not in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_evaluate_writes_the_tidy_table(tmp_path, capsys):
    adata = synthetic_atlas(n_cells=1200, n_genes=400, seed=2)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    out_json = tmp_path / "metrics.json"
    rc = main(["evaluate", str(path), "--label", "cell_type", "--protocol", "kfold", "--n-splits", "3",
               "--device", "cpu", "--min-cells", "20", "--out", str(out_json)])
    assert rc == 0
    rows = json.loads(out_json.read_text())
    assert len(rows) == 3 and all(0.0 <= r["macro_f1"] <= 1.0 for r in rows)
    assert "mean:" in capsys.readouterr().out
    # one split at a time (--n-jobs 1) gives the same table; --n-jobs 0 is refused
    rc = main(["evaluate", str(path), "--label", "cell_type", "--protocol", "kfold", "--n-splits", "3",
               "--device", "cpu", "--min-cells", "20", "--n-jobs", "1", "--out", str(out_json)])
    assert rc == 0
    one = json.loads(out_json.read_text())
    assert [r["macro_f1"] for r in one] == pytest.approx([r["macro_f1"] for r in rows], abs=1e-12)
    assert main(["evaluate", str(path), "--label", "cell_type", "--device", "cpu", "--n-jobs", "0"]) == 2
    assert "n_jobs" in capsys.readouterr().err


def test_evaluate_reports_bad_input_without_a_traceback(tmp_path, capsys):
    adata = synthetic_atlas(n_cells=300, n_genes=100, seed=0)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    rc = main(["evaluate", str(path), "--label", "no_such_column", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("gpulin evaluate: error:") and "no_such_column" in err
    assert main(["evaluate", str(tmp_path / "missing.h5ad"), "--label", "cell_type", "--device", "cpu"]) == 2


def test_demo_on_cuda_without_a_gpu_fails_fast(capsys):
    """No usable GPU: exit code 2 with the reason, before any atlas is generated."""
    from gpulin import cuda_available

    if cuda_available():
        pytest.skip("a GPU is usable here")
    assert main(["demo", "--device", "cuda", "--n-cells", "100000", "--plot", ""]) == 2
    captured = capsys.readouterr()
    assert "synthetic atlas" not in captured.out
    assert captured.err.startswith("gpulin demo: error: device='cuda' was requested but")


def test_evaluate_takes_a_preset_and_checks_out_before_running(tmp_path, capsys, monkeypatch):
    adata = synthetic_atlas(n_cells=900, n_genes=300, seed=5)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    import gpulin.evaluation

    ran = []
    real = gpulin.evaluation.evaluate
    monkeypatch.setattr(gpulin.evaluation, "evaluate", lambda *a, **k: ran.append(k["preset"]) or real(*a, **k))
    bad_out = tmp_path / "no_such_folder" / "m.csv"
    assert main(["evaluate", str(path), "--label", "cell_type", "--device", "cpu", "--out", str(bad_out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not ran  # failed before the protocol ran
    out_dir = tmp_path / "novel"
    assert main(["evaluate", str(path), "--label", "cell_type", "--protocol", "novel", "--device", "cpu",
                 "--min-cells", "20", "--preset", "cross-species", "--out-dir", str(out_dir)]) == 0
    assert ran == ["cross-species"]
    # only the files written are announced (the novel protocol has no confusion matrix)
    assert "wrote metrics.csv, metrics.json in" in capsys.readouterr().out


def test_demo_with_one_component(capsys):
    assert main(["demo", "--device", "cpu", "--n-cells", "500", "--n-genes", "200", "--n-components", "1"]) == 0
    assert "one component: no scatter plot" in capsys.readouterr().out


def test_evaluate_announces_only_the_files_it_wrote(tmp_path, capsys):
    adata = synthetic_atlas(n_cells=700, n_genes=250, seed=6)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "per_class.csv").touch()  # stale, from another run
    assert main(["evaluate", str(path), "--label", "cell_type", "--protocol", "novel", "--device", "cpu",
                 "--min-cells", "20", "--out-dir", str(out_dir)]) == 0
    assert "wrote metrics.csv, metrics.json in" in capsys.readouterr().out


def test_cli_file_and_option_errors_are_one_line(tmp_path, capsys):
    """Unreadable files, --out naming a folder, --query outside the transfer protocol and bad
    ortholog columns: exit code 2 and a one-line message, before any protocol runs."""
    not_h5ad = tmp_path / "notes.txt"
    not_h5ad.write_text("hello")
    assert main(["evaluate", str(not_h5ad), "--label", "cell_type", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("gpulin evaluate: error:")
    adata = synthetic_atlas(n_cells=300, n_genes=100, seed=0)
    path = tmp_path / "atlas.h5ad"
    adata.write_h5ad(path)
    assert main(["evaluate", str(path), "--label", "cell_type", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--label", "cell_type", "--device", "cpu", "--query", str(path)]) == 2
    assert "--protocol transfer only" in capsys.readouterr().err
    table = tmp_path / "orth.csv"
    table.write_text("human,mouse\nA,a\n")
    rc = main(["evaluate", str(path), "--label", "cell_type", "--device", "cpu", "--protocol", "transfer",
               "--query", str(path), "--orthologs", str(table), "--ortholog-cols", "x", "y"])
    assert rc == 2 and "available columns: ['human', 'mouse']" in capsys.readouterr().err


def test_demo_on_very_few_cells_skips_the_neighbour_check(tmp_path, capsys):
    plot = tmp_path / "small.png"
    assert main(["demo", "--device", "cpu", "--n-cells", "12", "--n-genes", "500", "--n-components", "3",
                 "--plot", str(plot)]) == 0
    assert plot.exists()


def test_python_dash_m_runs_the_cli(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gpulin", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "usage: gpulin" in done.stdout and "evaluate" in done.stdout
