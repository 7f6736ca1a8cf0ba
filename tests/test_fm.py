"""gpulin.fm: FM reference encoders, tokenizers and parameter counts (CPU, small).

Large models are checked by meta-device parameter counting at full size and by a forward pass of a
reduced-layer (and, where the full input is large, reduced-token / reduced-vocabulary) variant of
the same configuration, at the real width; Geneformer V1-10M runs at its real size.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
anndata = pytest.importorskip("anndata")

import gpulin.fm as fm  # noqa: E402
from gpulin.fm import tokenizers as tk  # noqa: E402
from gpulin.fm.encoders import HardBinEncoder, LogBinEncoder, SoftBinEncoder  # noqa: E402
from gpulin.fm.models import build_model, forward_flops  # noqa: E402

# 3 cells x 6 genes; cell 2 is empty. Library sizes 11 and 46.
TINY = np.array(
    [[0, 3, 1, 0, 5, 2],
     [4, 0, 0, 40, 1, 1],
     [0, 0, 0, 0, 0, 0]], dtype=np.float32)


@pytest.fixture
def tiny() -> sp.csr_matrix:
    return sp.csr_matrix(TINY)


def _atlas(n_cells: int = 6, n_genes: int = 300, seed: int = 0) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=0.3, random_state=seed, format="csr", dtype=np.float32)
    X.data = np.ceil(rng.gamma(0.7, 5, size=X.nnz)).astype(np.float32)
    return anndata.AnnData(X)


# ---------------------------------------------------------------------------------------------
# import hygiene
# ---------------------------------------------------------------------------------------------
def test_import_gpulin_does_not_import_torch():
    code = "import sys, gpulin, gpulin.fm; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# tokenizers: hand-computed tokens on the 3 x 6 example
# ---------------------------------------------------------------------------------------------
def test_gene_medians_hand(tiny):
    # normalised x 1e4: cell0 g1 2727.27, g2 909.09, g4 4545.45, g5 1818.18
    #                   cell1 g0 869.57, g3 8695.65, g4 217.39, g5 217.39
    med = tk.gene_nonzero_medians(tiny)
    expect = [10000 * 4 / 46, 10000 * 3 / 11, 10000 / 11, 10000 * 40 / 46,
              (10000 * 5 / 11 + 10000 / 46) / 2, (10000 * 2 / 11 + 10000 / 46) / 2]
    np.testing.assert_allclose(med, expect, rtol=1e-6)


def test_geneformer_rank_value_hand(tiny):
    # cell0 scores: g4 4545/2381 = 1.91, g5 1818/1018 = 1.79, g1 = g2 = 1 (tie -> gene index)
    # cell1 scores: g0 = g3 = 1 (tie), g5 217/1018 = 0.21, g4 217/2381 = 0.09
    tb = fm.tokenize_geneformer(tiny, vocab_size=100, n_special=2)
    np.testing.assert_array_equal(tb.ids, [[6, 7, 3, 4], [2, 5, 7, 6], [0, 0, 0, 0]])
    np.testing.assert_array_equal(tb.lengths, [4, 4, 0])
    assert tb.values is None
    # top-2 only; V2 layout <cls>=2 ... <eos>=3 with 4 specials
    tb = fm.tokenize_geneformer(tiny, vocab_size=100, n_special=2, max_tokens=2)
    np.testing.assert_array_equal(tb.ids, [[6, 7], [2, 5], [0, 0]])
    tb = fm.tokenize_geneformer(tiny, vocab_size=100, n_special=4, cls_eos=True, max_tokens=4)
    np.testing.assert_array_equal(tb.ids, [[2, 8, 9, 3], [2, 4, 7, 3], [2, 3, 0, 0]])
    np.testing.assert_array_equal(tb.lengths, [4, 4, 2])


def test_geneformer_given_medians_and_vocab_modulo(tiny):
    tb = fm.tokenize_geneformer(tiny, vocab_size=5, n_special=2, gene_medians=np.ones(6))
    # raw order: cell0 g4(5) g1(3) g5(2) g2(1); cell1 g3(40) g0(4) g4 g5 (tie); ids 2 + g % 3
    np.testing.assert_array_equal(tb.ids[:2], [[3, 3, 4, 4], [2, 2, 3, 4]])


def test_geneformer_matches_reference_loop():
    ad = _atlas(40, 200, seed=3)
    X = ad.X.toarray().astype(np.float64)
    med = fm.gene_nonzero_medians(ad)
    tb = fm.tokenize_geneformer(ad, max_tokens=30, vocab_size=1000, gene_medians=med)
    for i in range(X.shape[0]):
        nz = np.flatnonzero(X[i] > 0)
        score = (X[i, nz] / X[i].sum() * 1e4 / med[nz]).astype(np.float32)
        ref = nz[np.lexsort((nz, -score))][:30]
        np.testing.assert_array_equal(tb.ids[i, : len(ref)], 2 + ref)
        assert tb.lengths[i] == len(ref) and not tb.ids[i, len(ref):].any()


def test_scgpt_bins_hand(tiny):
    # n_bins=5 -> 4 edges at quantiles 0, 1/3, 2/3, 1.
    # cell0 sorted values 1 2 3 5 -> edges 1 2 3 5: g1(3)->3 g2(1)->1 g4(5)->4 g5(2)->2
    # cell1 sorted values 1 1 4 40 -> edges 1 1 4 40: g0(4)->3 g3(40)->4 g4(1)->2 g5(1)->2
    tb = fm.tokenize_scgpt(tiny, n_bins=5, vocab_size=100, n_special=3)
    np.testing.assert_array_equal(tb.ids, [[1, 4, 5, 7, 8], [1, 3, 6, 7, 8], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(tb.values, [[0, 3, 1, 4, 2], [0, 3, 4, 2, 2], [0, -2, -2, -2, -2]])
    np.testing.assert_array_equal(tb.lengths, [5, 5, 1])
    # 51 bins: cell0 value 3 is above 33 of the 50 edges (k <= 32 since 3k/49 <= 2), 2 above 17
    tb = fm.tokenize_scgpt(tiny, vocab_size=100, n_special=3)
    np.testing.assert_array_equal(tb.values[0, 1:], [33, 1, 50, 17])


def test_scgpt_bins_match_numpy_quantile_digitize():
    ad = _atlas(50, 300, seed=1)
    X = ad.X.toarray()
    rows, cols, vals, counts = tk._expressed(ad.X)
    bins = tk.bin_values_per_cell(rows, cols, vals, counts, X.shape[1], 51)
    for i in range(X.shape[0]):
        nzv = X[i][X[i] > 0]
        ref = np.digitize(nzv, np.quantile(nzv.astype(np.float64), np.linspace(0, 1, 50)))
        np.testing.assert_array_equal(bins[rows == i], ref)


def test_scgpt_subset_when_too_many_genes():
    ad = _atlas(20, 300, seed=2)
    X = ad.X.toarray()
    tb = fm.tokenize_scgpt(ad, max_tokens=31, vocab_size=1000, n_special=3, rng=7)
    again = fm.tokenize_scgpt(ad, max_tokens=31, vocab_size=1000, n_special=3, rng=7)
    np.testing.assert_array_equal(tb.ids, again.ids)
    for i in range(X.shape[0]):
        nz = np.flatnonzero(X[i] > 0)
        genes = tb.ids[i, 1: tb.lengths[i]] - 3
        assert len(genes) == min(len(nz), 30)
        assert np.all(np.diff(genes) > 0) and np.isin(genes, nz).all()


def test_transcriptformer_counts_clipped_hand(tiny):
    tb = fm.tokenize_transcriptformer(tiny, max_tokens=6, vocab_size=100, n_special=4)
    np.testing.assert_array_equal(tb.ids, [[5, 6, 8, 9, 0, 0], [4, 7, 8, 9, 0, 0], [0] * 6])
    np.testing.assert_array_equal(tb.values, [[3, 1, 5, 2, 0, 0], [4, 30, 1, 1, 0, 0], [0] * 6])
    np.testing.assert_array_equal(tb.lengths, [4, 4, 0])
    # always padded to max_tokens; first max_tokens expressed genes kept
    tb = fm.tokenize_transcriptformer(tiny, max_tokens=3, vocab_size=100, n_special=4)
    np.testing.assert_array_equal(tb.ids, [[5, 6, 8], [4, 7, 8], [0, 0, 0]])


def test_uce_sampling_deterministic_and_structured(tiny):
    kw = dict(n_sample=8, n_chromosomes=3, vocab_size=100, max_tokens=20)
    a = fm.tokenize_uce(tiny, rng=11, **kw)
    b = fm.tokenize_uce(tiny, rng=11, **kw)
    c = fm.tokenize_uce(tiny, rng=12, **kw)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    chrom = tk.synthetic_chromosomes(6, 3)
    np.testing.assert_array_equal(chrom, [0, 1, 1, 2, 2, 2])
    n_special = 3 + 3
    for i in range(2):
        seq = a.ids[i, : a.lengths[i]]
        assert seq[0] == 1 and not a.ids[i, a.lengths[i]:].any()
        genes = seq[seq >= n_special] - n_special
        assert len(genes) == 8 and np.isin(genes, np.flatnonzero(TINY[i] > 0)).all()
        # groups: <chr_start c> genes of chromosome c (by position) <chr_end>
        j, seen = 1, set()
        while j < len(seq):
            c_tok = seq[j] - 3
            assert 0 <= c_tok < 3 and c_tok not in seen
            seen.add(c_tok)
            end = j + 1 + np.flatnonzero(seq[j + 1:] == 2)[0]
            g = seq[j + 1: end] - n_special
            assert len(g) and (chrom[g] == c_tok).all() and np.all(np.diff(g) >= 0)
            j = end + 1
        assert a.lengths[i] == 1 + 8 + 2 * len(seen)
    np.testing.assert_array_equal(a.ids[2, : a.lengths[2]], [1])  # empty cell: <cls> only


def test_uce_sampling_proportional_to_log1p(tiny):
    tb = fm.tokenize_uce(tiny[1], n_sample=1000, n_chromosomes=3, vocab_size=100, max_tokens=1100, rng=0)
    genes = tb.ids[0][tb.ids[0] >= 6] - 6
    freq = np.bincount(genes, minlength=6) / len(genes)
    w = np.log1p(TINY[1])
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.04)


def test_tokenizers_accept_anndata_layer_and_int_counts(tiny):
    ad = anndata.AnnData(sp.csr_matrix(np.zeros_like(TINY)))
    ad.layers["counts"] = sp.csr_matrix(TINY.astype(np.int64))
    a = fm.tokenize_geneformer(ad, layer="counts", vocab_size=100)
    np.testing.assert_array_equal(a.ids, fm.tokenize_geneformer(tiny, vocab_size=100).ids)


# ---------------------------------------------------------------------------------------------
# parameter counts (meta device, no allocation)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in fm.list_models() if fm.get_config(n).published_params])
def test_parameter_counts_match_published(name):
    counts = fm.count_parameters(name)
    for kind, published in fm.get_config(name).published_params.items():
        assert abs(counts[kind] / published - 1) < 0.05, (name, kind, counts[kind], published)


def test_frozen_tables_are_the_esm2_tables():
    assert fm.count_parameters("transcriptformer-sapiens")["frozen"] == 23_829 * 2560
    assert fm.count_parameters("uce-33")["frozen"] == 145_469 * 5120
    assert fm.count_parameters("geneformer-v1-10m")["frozen"] == 0
    assert fm.count_parameters("encoding-esm2-soft")["frozen"] == 23_829 * 2560


def test_count_builds_on_meta():
    model = build_model("uce-33", device="meta", training_heads=True)
    assert all(p.is_meta for p in model.parameters())


def test_forward_flops_formula():
    cfg = fm.get_config("geneformer-v1-10m")
    P = 6 * (4 * 256 * 256 + 2 * 256 * 512)
    assert forward_flops(cfg, 2, 100) == 2 * (2 * P * 100 + 4 * 6 * 100**2 * 256)


# ---------------------------------------------------------------------------------------------
# encoders and forward passes
# ---------------------------------------------------------------------------------------------
def _reduced(name: str) -> fm.FMConfig:
    """Same width and parts, 1 layer, small vocabulary, short inputs (CPU-test sized)."""
    cfg = fm.get_config(name)
    return cfg.replace(
        n_layers=1, vocab_size=min(cfg.vocab_size, 400), max_tokens=min(cfg.max_tokens, 96)
        if cfg.tokenizer != "uce" else cfg.max_tokens, n_sample=min(cfg.n_sample, 32),
    )


def test_geneformer_v1_real_size_forward():
    ad = _atlas(4, 300, seed=4)
    Z = fm.embed(ad, "geneformer-v1-10m", device="cpu")
    assert Z.shape == (4, 256) and Z.dtype == np.float32 and np.isfinite(Z).all()
    np.testing.assert_array_equal(Z, fm.embed(ad, "geneformer-v1-10m", device="cpu"))
    assert not np.allclose(Z, fm.embed(ad, "geneformer-v1-10m", device="cpu", seed=1))
    # batch size does not change the result (padding is masked)
    np.testing.assert_allclose(Z, fm.embed(ad, "geneformer-v1-10m", device="cpu", batch_size=1), atol=1e-5)
    Zh = fm.embed(ad, "geneformer-v1-10m", device="cpu", hidden_layer=-2)
    assert Zh.shape == (4, 256) and np.isfinite(Zh).all() and not np.allclose(Zh, Z)


@pytest.mark.parametrize("name", [n for n in fm.list_models() if n != "geneformer-v1-10m"])
def test_every_encoder_forward_reduced(name):
    cfg = _reduced(name)
    ad = _atlas(3, 200, seed=5)
    Z = fm.embed(ad, cfg, device="cpu")
    assert Z.shape == (3, fm.get_config(name).embedding_dim)
    assert np.isfinite(Z).all()
    fm.clear_cache()


def test_embedding_widths():
    widths = {n: fm.get_config(n).embedding_dim for n in fm.PUBLISHED_MODELS}
    assert widths == {
        "geneformer-v1-10m": 256, "geneformer-v2-104m": 768, "geneformer-v2-316m": 1152,
        "scgpt-human": 512, "transcriptformer-sapiens": 2048, "transcriptformer-exemplar": 2048,
        "transcriptformer-metazoa": 2048, "uce-33": 1280,
    }


def test_transcriptformer_mask_is_causal_plus_log1p_count():
    cfg = _reduced("transcriptformer-sapiens")
    model = build_model(cfg, device="meta")
    ids = torch.tensor([[5, 6, 7, 0]])
    counts = torch.tensor([[1.0, 3.0, 30.0, 0.0]])
    mask, valid = model._masks(ids, torch.tensor([3]), counts)
    inf = float("-inf")
    l1, l3, l30 = np.log1p([1.0, 3.0, 30.0])
    expect = [[l1, inf, inf, inf], [l1, l3, inf, inf], [l1, l3, l30, inf], [l1, l3, l30, inf]]
    np.testing.assert_allclose(mask[0, 0].numpy(), expect, rtol=1e-6)
    np.testing.assert_array_equal(valid.numpy(), [[True, True, True, False]])


def test_transcriptformer_counts_change_the_embedding():
    cfg = _reduced("transcriptformer-sapiens")
    X = sp.csr_matrix(np.array([[1, 2, 0, 5, 1, 0, 3, 1]], dtype=np.float32))
    X2 = X.copy()
    X2.data = X2.data * 7
    a, b = fm.embed(X, cfg, device="cpu"), fm.embed(X2, cfg, device="cpu")
    assert not np.allclose(a, b)


def test_expression_encoders():
    values = torch.tensor([[0.0, 1.0, 3.0, 2000.0]])
    log_bins = LogBinEncoder(8)
    idx = torch.floor(torch.log2(values + 1)).long().clamp(0, 10)
    np.testing.assert_array_equal(idx.numpy(), [[0, 1, 2, 10]])
    torch.testing.assert_close(log_bins(values), log_bins.embedding.weight[idx])
    hard = HardBinEncoder(51, 8)
    torch.testing.assert_close(hard(torch.tensor([[0.0, 7.0, 60.0]])), hard.embedding.weight[torch.tensor([[0, 7, 50]])])
    soft = SoftBinEncoder(8, n_bins=20)
    out = soft(values)
    assert out.shape == (1, 4, 8)
    # a convex combination of the 20 bin embeddings
    lo, hi = soft.bins.weight.min(0).values, soft.bins.weight.max(0).values
    assert bool(((out >= lo - 1e-6) & (out <= hi + 1e-6)).all())


def test_cuda_request_without_gpu_raises():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from gpulin import GPUUnavailableError

    with pytest.raises(GPUUnavailableError):
        fm.embed(_atlas(2, 50), "geneformer-v1-10m", device="cuda")


@pytest.mark.parametrize("name", ["geneformer-v2-104m", "transcriptformer-sapiens", "scgpt-human"])
def test_extra_padding_does_not_change_embeddings(name):
    from gpulin.fm.api import _pad_seq, _to_torch

    cfg = _reduced(name)
    net = build_model(cfg, seed=0)
    tb = fm.tokenize(cfg, _atlas(3, 200, seed=6), rng=0)
    with torch.inference_mode():
        a = net(*_to_torch(tb, torch.device("cpu")))
        padded = _pad_seq(tb, tb.seq_len + 5)  # 5 extra padding positions
        assert padded.seq_len == tb.seq_len + 5
        b = net(*_to_torch(padded, torch.device("cpu")))
    if cfg.pooling == "mean_context":  # TranscriptFormer divides by the context length, by definition
        b = b * padded.seq_len / tb.seq_len
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_threaded_tokenization_gives_the_same_result(monkeypatch):
    import gpulin.fm.api as api

    cfg = _reduced("uce-33")
    ad = _atlas(7, 200, seed=8)
    a = fm.embed(ad, cfg, device="cpu", batch_size=2)
    monkeypatch.setattr(api, "_tokenizer_threads", lambda dev: 3)
    b = fm.embed(ad, cfg, device="cpu", batch_size=2)
    np.testing.assert_array_equal(a, b)
    fm.clear_cache()


def test_embed_checks_counts_and_parameters():
    X = sp.csr_matrix(np.array([[1.0, 0.0, 3.0], [0.0, 2.0, 1.0]], dtype=np.float32))
    bad = X.copy()
    bad.data[0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fm.embed(bad, "geneformer-v1-10m", device="cpu")
    bad.data[0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        fm.embed(bad, "geneformer-v1-10m", device="cpu")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fm.embed(X, "geneformer-v1-10m", device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        fm.embed(X, "geneformer-v1-10m", device="tpu")
    with pytest.raises(ValueError, match="hidden_layer=6 is out of range"):
        fm.embed(X, "geneformer-v1-10m", device="cpu", hidden_layer=6)


def test_tokenizer_inputs_are_checked(tiny, tmp_path):
    with pytest.raises(ValueError, match="gene_medians must be positive and finite"):
        tk.tokenize_geneformer(tiny, gene_medians=np.array([-1.0, 1, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="n_sample must be"):
        tk.tokenize_uce(tiny, n_sample=0)
    with pytest.raises(ValueError, match="max_tokens must be"):
        tk.tokenize_scgpt(tiny, max_tokens=1)
    a = anndata.AnnData(tiny)
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        tk.tokenize_transcriptformer(a, layer="counts")
    path = tmp_path / "tiny.h5ad"
    a.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(tk.tokenize_transcriptformer(backed).ids, tk.tokenize_transcriptformer(a).ids)


def test_scgpt_spreads_tied_values_over_their_bins_as_its_default_binning():
    """scGPT's binning(side="both"): a value with R edges below it and L at or below it gets a bin
    drawn from R+1..L, so count data's ties (most of a cell) cover many bins, not one."""
    row = np.array([1] * 60 + [2] * 25 + [3] * 10 + [5, 8, 13, 21, 40], dtype=np.float32)
    tb = fm.tokenize_scgpt(sp.csr_matrix(row[None, :]), rng=0)
    v = tb.values[0, 1: tb.lengths[0]]
    edges = np.quantile(row.astype(np.float64), np.linspace(0, 1, 50))
    left, right = np.digitize(row, edges), np.digitize(row, edges, right=True)
    assert ((v >= np.maximum(right + 1, 1)) | (left == right)).all() and (v <= left).all() and (v >= 1).all()
    assert len(np.unique(v[row == 1])) > 20  # the 60 ones spread over bins 1..30
    again = fm.tokenize_scgpt(sp.csr_matrix(row[None, :]), rng=0)
    np.testing.assert_array_equal(again.values, tb.values)  # seeded


def test_published_block_details_geneformer_relu_and_transcriptformers_normed_residual():
    gf, tf = fm.get_config("geneformer-v1-10m"), fm.get_config("transcriptformer-sapiens")
    assert gf.activation == "relu" and gf.layer_norm_eps == 1e-12
    assert tf.normed_residual and tf.pooling == "mean_context"
    from gpulin.fm.models import Block

    block = Block(_reduced("transcriptformer-sapiens")).eval()
    x = torch.randn(2, 5, block.norm1.normalized_shape[0])
    with torch.inference_mode():
        h = block.norm1(x)
        h = block.attn(h, None) + h
        h = block.norm2(h)
        expected = block.linear2(block.act(block.linear1(h))) + h
        torch.testing.assert_close(block(x, None), expected)


def test_fm_embed_warns_once_for_empty_and_non_integer_cells_and_pads_within_positions():
    from gpulin.fm.api import _pad_seq
    from gpulin.fm.tokenizers import TokenBatch

    a = _atlas(40, 200, seed=9)
    X = a.X.tolil()
    X[0, :] = 0
    a = anndata.AnnData(sp.csr_matrix(X))
    with pytest.warns(UserWarning, match="1 of 40 cells have no counts"):
        fm.embed(a, "geneformer-v1-10m", device="cpu", batch_size=4)
    b = anndata.AnnData(a.X * 0.5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fm.embed(b, "geneformer-v1-10m", device="cpu", batch_size=4)  # 10 batches
    assert sum("non-integer" in str(w.message) for w in record) == 1
    tb = TokenBatch(ids=np.ones((2, 100), dtype=np.int64), lengths=np.array([100, 50]), values=None)
    assert _pad_seq(tb, 16).seq_len == 112 and _pad_seq(tb, 16, max_len=100).seq_len == 100
