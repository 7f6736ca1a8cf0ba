"""Command line: ``gpulin demo`` and ``gpulin evaluate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import gpulin
    from gpulin.datasets import synthetic_atlas

    gpulin.get_backend(args.device)  # fail fast (no usable GPU, say) before generating the atlas
    t0 = time.perf_counter()
    adata = synthetic_atlas(n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    t_gen = time.perf_counter() - t0
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    print(
        f"synthetic atlas: {adata.n_obs:,} cells x {adata.n_vars:,} genes, {adata.X.nnz:,} nonzeros "
        f"({100 * density:.1f}%), {adata.obs['cell_type'].nunique()} cell types, generated in {t_gen:.1f} s"
    )
    gpulin.embed(adata, device=args.device, method=args.method, n_components=args.n_components, seed=args.seed)
    info = adata.uns["X_gpulin"]
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in info["timings"].items())
    print(f"gpulin.embed(method={args.method!r}, n_components={args.n_components}) on {info['device']}: {stages}")
    print(
        f"  throughput {adata.n_obs / info['timings']['total']:,.0f} cells/s; "
        f"variance explained by PC1-5: {np.round(info['variance_ratio'][:5], 4).tolist()}"
    )
    emb = adata.obsm["X_gpulin"]
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    type_sizes = np.unique(codes, return_counts=True)[1]
    if len(emb) > 200_000 or len(type_sizes) < 2 or type_sizes.min() < 5:
        pass  # too many cells for a quick check, or too few of some type for 5 folds
    else:
        # How well the embedding separates cell types: 15-nearest-neighbour classification of
        # cell_type on held-out cells (5-fold), the usual local-structure check of an embedding.
        from sklearn.model_selection import cross_val_score
        from sklearn.neighbors import KNeighborsClassifier

        k = min(15, len(emb) * 4 // 5 - 1)
        knn = cross_val_score(KNeighborsClassifier(n_neighbors=k), emb, codes, cv=5).mean()
        print(
            f"  {k}-nearest-neighbour accuracy for cell_type on held-out cells over all {emb.shape[1]} "
            f"components: {knn:.3f} (PC1-2 mostly carry species and sequencing depth)"
        )
    if args.plot and emb.shape[1] < 2:
        print("  (one component: no scatter plot)")
    elif args.plot:
        try:  # a standalone Figure: no pyplot, so main() called in a session leaves its backend alone
            import matplotlib
            from matplotlib.figure import Figure
        except ImportError:
            print("  (matplotlib not installed: no plot; pip install 'gpulin[plot]')")
            return 0
        from sklearn.feature_selection import f_classif

        # PC1-2 carry species and depth here; the third panel shows the pair of components that
        # separate the cell types best (largest one-way ANOVA F of the components on cell_type).
        best = np.sort(np.argsort(-np.nan_to_num(f_classif(emb, codes)[0]))[:2]) if emb.shape[1] > 2 else [0, 1]
        panels = (("cell_type", 0, 1), ("species", 0, 1), ("cell_type", int(best[0]), int(best[-1])))
        fig = Figure(figsize=(16, 4.8), layout="tight")
        axes = fig.subplots(1, 3)
        for ax, (key, i, j) in zip(axes, panels):
            cats = adata.obs[key].cat.categories
            kc = adata.obs[key].cat.codes.to_numpy()
            colours = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
            for c, name in enumerate(cats):
                m = kc == c
                ax.scatter(emb[m, i], emb[m, j], s=2, alpha=0.5, label=str(name), rasterized=True,
                           color=colours(c % colours.N))
            ax.set_xlabel(f"PC{i + 1}")
            ax.set_ylabel(f"PC{j + 1}")
            ax.set_title(f"coloured by {key}" + (" (the best-separating pair)" if (i, j) != (0, 1) else ""))
            ax.legend(markerscale=4, fontsize=6, ncol=2, frameon=False)
        fig.suptitle(f"gpulin {args.method} PCA, {adata.n_obs:,} synthetic cells ({info['device']})")
        out = Path(args.plot)
        fig.savefig(out, dpi=120)
        print(f"  wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpulin", description="Linear single-cell representations on GPU and CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="embed the built-in synthetic atlas and plot PC1 vs PC2")
    demo.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    demo.add_argument("--n-cells", type=int, default=20_000)
    demo.add_argument("--n-genes", type=int, default=20_000)
    demo.add_argument("--n-components", type=int, default=50)
    demo.add_argument("--method", default="sctop", choices=["sctop", "lognorm"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", default="gpulin_demo.png", help="PNG path ('' to skip)")
    demo.set_defaults(func=_demo)
    from gpulin import evaluation

    evaluation.add_cli(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, TypeError, OSError, MemoryError, RuntimeError) as exc:  # OSError: unreadable files
        print(f"gpulin {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
