"""The streamed texture search/transfer equals the reference TTSR's dense formulation.

The expectations here are written independently of ``napari_refsr.search``: the full relevance
matrix from ``F.unfold`` / ``F.normalize`` / ``torch.max`` and the ``unfold → gather → fold / 9``
texture transfer, exactly as the reference network computes them.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from napari_refsr import search as ts
from napari_refsr.shift_search import plan_steps
from napari_refsr.errors import Cancelled

_spec = importlib.util.spec_from_file_location("refsr_bench_search", Path(__file__).parents[2] / "bench" / "search.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)


# --------------------------------------------------------------------------------------------
# independent dense reference


def dense_relevance(query, keys, normalize_query=True, patch=3):
    """The reference's full relevance matrix R (N_keys, N_query): unfold, L2-normalise, K·Q."""
    r = patch // 2
    q = F.unfold(query[None], kernel_size=(patch, patch), padding=r)[0]  # (C·9, Nq)
    k = torch.cat([F.unfold(key[None], kernel_size=(patch, patch), padding=r)[0] for key in keys], dim=1)
    k = F.normalize(k.t(), dim=1)  # (Nk, C·9): reference patches, L2-normalised
    if normalize_query:
        q = F.normalize(q, dim=0)
    return k @ q


def dense(query, keys, normalize_query=True, patch=3):
    """(S, index) of the reference: max over keys of the full matrix."""
    s, idx = torch.max(dense_relevance(query, keys, normalize_query, patch), dim=0)
    h, w = query.shape[1:]
    return s.view(h, w), idx.view(h, w)


def assert_same_search(got, query, keys, normalize_query=True, atol=1e-5, patch=3, margin=1e-4):
    """Indices equal to the dense argmax wherever the winner is not a near-tie (float64 margin
    above ``margin``, i.e. all but a handful of random positions), S equal to ~1e-5 everywhere."""
    s, idx = got
    s_ref, idx_ref = dense(query, keys, normalize_query, patch)
    assert s.shape == idx.shape == query.shape[1:]
    assert idx.dtype == torch.int64
    torch.testing.assert_close(s, s_ref, atol=atol, rtol=1e-5)
    r64 = dense_relevance(query.double(), [k.double() for k in keys], normalize_query, patch)
    top2 = r64.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > margin).view_as(idx)
    assert clear.float().mean() > 0.95  # random features: a clear winner almost everywhere
    assert torch.equal(idx[clear], idx_ref[clear])
    # near-ties: whichever key was picked is (one of) the best
    chosen = r64.gather(0, idx.reshape(1, -1)).view_as(s)
    torch.testing.assert_close(chosen, top2[0].view_as(s), atol=1e-5, rtol=0, check_dtype=False)


def feats(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# --------------------------------------------------------------------------------------------
# search == dense


def test_search_one_reference_equals_dense():
    q, k = feats(16, 23, 29, seed=1), feats(16, 19, 31, seed=2)
    assert_same_search(ts.search(q, [k]), q, [k])


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize(
    "query_rows,key_rows,query_columns",
    [(None, None, None), (1, 1, None), (2, 3, None), (3, 2, 5), (5, 7, None), (4, None, 1),
     (None, 4, 8), (16, 29, None), (40, 40, 30), (None, None, 6), (2, 3, 2)],
)
def test_search_several_references_any_chunking(query_rows, key_rows, query_columns, fuse):
    """Global index = references concatenated in order, row-major; bands that do not divide the
    query's 17 rows nor any reference's 13, 9, 30 rows, strips that do not divide its 19 columns
    (and bands or strips bigger than the map) change nothing — with the eager passes and with the
    fused kernel."""
    q = feats(16, 17, 19, seed=3)
    keys = [feats(16, 13, 17, seed=4), feats(16, 9, 12, seed=5), feats(16, 30, 7, seed=6)]
    got = ts.search(q, keys, query_rows=query_rows, key_rows=key_rows, query_columns=query_columns, fuse=fuse)
    assert_same_search(got, q, keys)


def test_wide_queries_are_searched_in_strips():
    """A query too wide for tall key bands within the budget is cut into column strips that keep
    the key bands ≥ 32 rows; the answer is the dense one and the whole-width search's, and the
    progress steps are the strips' steps."""
    q, keys = feats(8, 10, 90, seed=70), [feats(8, 40, 50, seed=71)]
    budget = 24 * 5 * 34 * 52 * 40  # a block of 3 (+2) query rows × 32 (+2) key rows on 38 columns
    (_, qr, kr, ws), = plan_steps((10, 90), [(40, 50)], budget_bytes=budget)
    assert (ws, kr) == (30, 33)  # three strips of 30 columns
    (_, _, kr_whole, _), = plan_steps((10, 90), [(40, 50)], budget_bytes=budget, query_columns=90)
    assert kr_whole <= 8  # the whole width would have forced short key bands
    calls = []
    got = ts.search(q, keys, budget_bytes=budget, progress=lambda d, t: calls.append((d, t)))
    total = 3 * math.ceil(10 / qr) * math.ceil(40 / kr)
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert_same_search(got, q, keys)
    whole = ts.search(q, keys, budget_bytes=budget, query_columns=90)
    assert torch.equal(got[1], whole[1])
    torch.testing.assert_close(got[0], whole[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("budget", [1_000, 4_096, 20_000, 150_000])
def test_search_tiny_budgets(budget):
    """Budgets far below one score block force one-row bands (the minimum); the answer does
    not change."""
    q = feats(4, 9, 11, seed=7)
    keys = [feats(4, 7, 8, seed=8), feats(4, 5, 13, seed=9)]
    assert_same_search(ts.search(q, keys, budget_bytes=budget), q, keys)


def test_search_one_query_row_at_a_time():
    q = feats(4, 9, 11, seed=7)
    keys = [feats(4, 7, 8, seed=8), feats(4, 5, 13, seed=9)]
    assert_same_search(ts.search(q, keys, query_rows=1, key_rows=7), q, keys)
    assert_same_search(ts.search(q, keys, query_rows=1), q, keys)


@pytest.mark.parametrize("chunks", [dict(), dict(query_rows=5, key_rows=3), dict(budget_bytes=8_000)])
def test_search_without_query_normalisation(chunks):
    """SRNTT's matching: only the key patches are normalised, S is an unnormalised product."""
    q = 3.0 * feats(8, 13, 10, seed=10)
    keys = [feats(8, 11, 12, seed=11), feats(8, 6, 9, seed=12)]
    got = ts.search(q, keys, normalize_query=False, **chunks)
    assert got[0].max() > 2.0  # really not normalised
    assert_same_search(got, q, keys, normalize_query=False, atol=1e-4)


@pytest.mark.parametrize("normalize_query", [True, False])
def test_search_finds_a_cropped_reference(normalize_query):
    """The query is a crop of the second reference: every query patch that lies inside the crop
    is found at the crop's position in that reference, with S = 1 (or |q| without
    normalisation, the Cauchy-Schwarz maximum)."""
    keys = [feats(12, 15, 14, seed=13), feats(12, 20, 25, seed=14), feats(12, 8, 8, seed=15)]
    dy, dx, h, w = 4, 9, 11, 13
    q = keys[1][:, dy : dy + h, dx : dx + w].clone()
    s, idx = ts.search(q, keys, normalize_query=normalize_query, query_rows=4, key_rows=6)
    inner = (slice(1, h - 1), slice(1, w - 1))  # patches not touching the crop's border
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expected = 15 * 14 + (ys + dy) * 25 + (xs + dx)
    assert torch.equal(idx[inner], expected[inner])
    if normalize_query:
        torch.testing.assert_close(s[inner], torch.ones(h - 2, w - 2), atol=1e-5, rtol=0)
    else:
        qnorm = F.unfold(q[None], 3, padding=1)[0].norm(dim=0).view(h, w)
        torch.testing.assert_close(s[inner], qnorm[inner], atol=1e-4, rtol=1e-5)
    decoded = ts.decode_index(idx, [(15, 14), (20, 25), (8, 8)])
    assert (decoded[inner][..., 0] == 1).all()
    np.testing.assert_array_equal(decoded[inner][..., 1], (ys + dy)[inner].numpy())
    np.testing.assert_array_equal(decoded[inner][..., 2], (xs + dx)[inner].numpy())


@pytest.mark.parametrize("fuse", [False, True])
def test_search_lowest_index_wins_exact_ties(fuse):
    """Identical references tie exactly everywhere: the first one wins, as torch.max does; so
    does the first of tied positions inside one reference (a constant key map)."""
    q, k = feats(4, 6, 7, seed=16), feats(4, 5, 5, seed=17)
    s, idx = ts.search(q, [k, k.clone(), k.clone()], key_rows=2, fuse=fuse)
    s1, idx1 = ts.search(q, [k], fuse=fuse)
    assert torch.equal(idx, idx1)
    torch.testing.assert_close(s, s1)
    # constant maps: every interior key patch matches an interior query patch exactly (S = 1, the
    # same sums in the same order); the first of them (row 1, column 1 of a 10-wide map) wins
    s, idx = ts.search(torch.ones(4, 6, 7), [torch.ones(4, 9, 10)], fuse=fuse)
    assert (idx[1:-1, 1:-1] == 11).all()
    torch.testing.assert_close(s[1:-1, 1:-1], torch.ones(4, 5))


def test_fused_kernel_equals_the_eager_passes():
    """The compiled kernel (the CPU default for big searches) builds here, and gives the eager
    passes' index exactly and their S to float rounding, with and without query normalisation."""
    from napari_refsr import shift_search

    q = feats(32, 37, 41, seed=70)
    keys = [feats(32, 50, 45, seed=71), feats(32, 20, 61, seed=72)]
    for normalize_query in (True, False):
        eager = ts.search(q, keys, fuse=False, normalize_query=normalize_query, query_rows=6, key_rows=9)
        fused = ts.search(q, keys, fuse=True, normalize_query=normalize_query, query_rows=6, key_rows=9)
        assert shift_search.fused_available() is None  # compiled and used, not the eager fallback
        assert torch.equal(fused[1], eager[1])
        torch.testing.assert_close(fused[0], eager[0], atol=1e-6, rtol=1e-6)
    assert_same_search(fused, q, keys, normalize_query=False, atol=1e-4)
    # the default picks it only for searches big enough to repay the compilation, and only on a CPU
    assert not shift_search.use_fused(None, torch.device("cpu"), 1e9)
    assert shift_search.use_fused(None, torch.device("cpu"), 1e13)
    assert not shift_search.use_fused(True, torch.device("cuda"), 1e13)


def test_search_larger_patches_equal_dense():
    """The shift-sum is written for any odd patch: 5×5 patches sum 25 shifted views."""
    q = feats(6, 11, 13, seed=60)
    keys = [feats(6, 9, 10, seed=61), feats(6, 14, 5, seed=62)]
    assert_same_search(ts.search(q, keys, patch=5, query_rows=3, key_rows=4), q, keys, patch=5)


@pytest.mark.parametrize("rows", [(0, 17), (0, 6), (5, 12), (11, 17), (8, 9)])
def test_search_of_a_band_with_its_ring_equals_the_whole_map(rows):
    """A band of query rows searched with the neighbours' features as its 1-pixel ring gives
    exactly the rows of the whole map's search (how the pipeline searches an image in pieces)."""
    q = feats(16, 17, 19, seed=63)
    keys = [feats(16, 13, 17, seed=64), feats(16, 9, 12, seed=65)]
    s_all, idx_all = ts.search(q, keys)
    a, b = rows
    band = F.pad(q, (1, 1, 1, 1))[:, a : b + 2]
    s, idx = ts.search_padded(band, keys)
    assert torch.equal(idx, idx_all[a:b])
    torch.testing.assert_close(s, s_all[a:b], atol=1e-6, rtol=1e-6)


def test_search_reports_every_step_and_cancels_between_steps():
    q = feats(8, 10, 9, seed=66)
    keys = [feats(8, 7, 8, seed=67), feats(8, 5, 6, seed=68)]
    calls = []
    got = ts.search(q, keys, query_rows=3, key_rows=2, progress=lambda d, t: calls.append((d, t)))
    total = 4 * 4 + 4 * 3  # ⌈10/3⌉ query bands × (⌈7/2⌉ + ⌈5/2⌉) key bands
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert_same_search(got, q, keys)
    checks = []
    with pytest.raises(Cancelled):
        ts.search(q, keys, query_rows=3, key_rows=2, progress=lambda d, t: calls.append(d),
                  cancel=lambda: checks.append(1) or len(checks) > 5)
    assert len(checks) == 6  # checked before every step, stopped at the first True
    with pytest.raises(Cancelled):
        ts.search(q, keys, cancel=lambda: True)


@pytest.mark.parametrize("dtype,agree,s_tol", [(torch.float16, 0.99, 1e-3), (torch.bfloat16, 0.97, 5e-3)])
def test_search_low_precision_products(dtype, agree, s_tol):
    """The GPU path's operand types (run here on the CPU): pixel products in float16/bfloat16
    (each map scaled by its max so float16 cannot overflow, here features up to ~400), sums and
    running max in float32: nearly every index agrees and S is close; the float32 default agrees
    exactly where the winner is clear."""
    q, k = 100 * feats(32, 20, 21, seed=69).relu(), 100 * feats(32, 23, 19, seed=70).relu()
    s_ref, idx_ref = dense(q, [k])
    s, idx = ts.search(q, [k], product_dtype=dtype, query_rows=4, key_rows=5)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    assert (idx == idx_ref).float().mean() >= agree
    assert (s - s_ref).abs().max() <= s_tol


# --------------------------------------------------------------------------------------------
# transfer == unfold → gather → fold / 9


def dense_transfer(index, values, scale, average_overlaps=False):
    """The reference: unfold every reference's value map (kernel 3s, stride s, padding s),
    gather the columns of ``index``, fold them back to (C, H·s, W·s) and divide by 9 (TTSR) or
    by the number of patches folded onto each pixel (SRNTT: fold of ones)."""
    k = 3 * scale
    cols = torch.cat([F.unfold(v[None], kernel_size=k, padding=scale, stride=scale)[0] for v in values], 1)
    gathered = cols[:, index.reshape(-1)]
    h, w = index.shape
    fold = dict(output_size=(h * scale, w * scale), kernel_size=k, padding=scale, stride=scale)
    summed = F.fold(gathered[None], **fold)[0]
    if average_overlaps:
        return summed / F.fold(torch.ones_like(gathered)[None], **fold)[0]
    return summed / 9.0


LEVELS = [(1, 16), (2, 8), (4, 4)]  # (scale, channels): levels 3, 2, 1 (k = 3, 6, 12)


@pytest.fixture(params=["fold", "offsets"])
def transfer_path(request, monkeypatch):
    """Run a test through both implementations of transfer (unfold-fold for small problems,
    offset by offset for large ones) and check the intended one really ran."""
    use_fold = request.param == "fold"
    monkeypatch.setattr(ts, "FOLD_BYTES", 1 << 40 if use_fold else 0)
    calls = []
    for name in ("_transfer_fold", "_transfer_offsets"):
        original = getattr(ts, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ts, name, spy)
    yield request.param
    assert calls and set(calls) == {"_transfer_fold" if use_fold else "_transfer_offsets"}


@pytest.mark.parametrize("average_overlaps", [False, True])
@pytest.mark.parametrize("scale,channels", LEVELS)
def test_transfer_equals_unfold_gather_fold(scale, channels, average_overlaps, transfer_path):
    grids = [(7, 9), (4, 5), (6, 3)]  # key grids of three references
    values = [feats(channels, h * scale, w * scale, seed=20 + i) for i, (h, w) in enumerate(grids)]
    n_keys = sum(h * w for h, w in grids)
    g = torch.Generator().manual_seed(30)
    index = torch.randint(0, n_keys, (5, 8), generator=g)
    index[0, 0], index[-1, -1] = 0, n_keys - 1  # both ends of the global numbering
    got = ts.transfer(index, values, scale, average_overlaps=average_overlaps)
    assert got.shape == (channels, 5 * scale, 8 * scale)
    want = dense_transfer(index, values, scale, average_overlaps)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale,channels", LEVELS)
def test_transfer_offsets_bit_identical_to_fold(scale, channels):
    """The offset-by-offset sum (grouped by output phase) adds in the fold's order: same bits."""
    grids = [(7, 9), (4, 5)]
    values = [feats(channels, h * scale, w * scale, seed=40 + i) for i, (h, w) in enumerate(grids)]
    index = torch.randint(0, 83, (9, 6), generator=torch.Generator().manual_seed(41))
    assert torch.equal(ts._transfer_offsets(index, values, scale), ts._transfer_fold(index, values, scale))


@pytest.mark.parametrize("scale,channels", LEVELS)
def test_transfer_border_attenuation(scale, channels, transfer_path):
    """With constant value maps and interior key patches, T is the constant inside, ×6/9 on the
    edges (bands ``scale`` wide) and ×4/9 in the corners: the reference's fold divides by 9
    whatever the number of overlapping patches. ``average_overlaps`` (SRNTT) has no such
    attenuation."""
    grids = [(6, 7), (5, 5)]
    values = [torch.full((channels, h * scale, w * scale), 2.5) for h, w in grids]
    # key patches that do not touch their reference's border (no zero padding inside)
    interior = [y * 7 + x for y in range(1, 5) for x in range(1, 6)]
    interior += [42 + y * 5 + x for y in range(1, 4) for x in range(1, 4)]
    g = torch.Generator().manual_seed(31)
    pick = torch.randint(0, len(interior), (6, 5), generator=g)
    index = torch.tensor(interior)[pick]
    t = ts.transfer(index, values, scale)
    edge = torch.ones(6 * scale)
    edge[:scale] = edge[-scale:] = 2 / 3
    edge_x = torch.ones(5 * scale)
    edge_x[:scale] = edge_x[-scale:] = 2 / 3
    expected = 2.5 * edge[:, None] * edge_x[None, :]
    torch.testing.assert_close(t, expected.expand_as(t), atol=1e-5, rtol=1e-5)
    assert t[0, 0, 0].item() == pytest.approx(2.5 * 4 / 9)
    assert t[0, 0, 3 * scale].item() == pytest.approx(2.5 * 6 / 9)
    assert t[0, 3 * scale, 2 * scale].item() == pytest.approx(2.5)
    averaged = ts.transfer(index, values, scale, average_overlaps=True)
    torch.testing.assert_close(averaged, torch.full_like(averaged, 2.5), atol=1e-5, rtol=1e-5)


def test_transfer_is_differentiable_in_values(transfer_path):
    values = [feats(2, 8, 6, seed=32).double().requires_grad_(), feats(2, 4, 8, seed=33).double().requires_grad_()]
    index = torch.tensor([[0, 5, 11], [12, 7, 19]])  # key grids 4×3 and 2×4: 20 keys
    assert torch.autograd.gradcheck(lambda a, b: ts.transfer(index, [a, b], 2), values)


# --------------------------------------------------------------------------------------------
# relevance


@pytest.mark.parametrize("normalize_query", [True, False])
def test_relevance_equals_search_s(normalize_query):
    q = feats(8, 12, 10, seed=40)
    keys = [feats(8, 9, 11, seed=41), feats(8, 5, 6, seed=42)]
    s, idx = ts.search(q, keys, normalize_query=normalize_query)
    rel = ts.relevance(q, keys, idx, normalize_query=normalize_query)
    torch.testing.assert_close(rel, s, atol=1e-5, rtol=1e-5)
    # and for arbitrary indices: the entries of the dense matrix
    g = torch.Generator().manual_seed(43)
    other = torch.randint(0, 9 * 11 + 30, (12, 10), generator=g)
    r = dense_relevance(q, keys, normalize_query)
    expected = r.gather(0, other.reshape(1, -1)).view(12, 10)
    torch.testing.assert_close(ts.relevance(q, keys, other, normalize_query=normalize_query), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize_query", [True, False])
def test_relevance_gradients_reach_query_and_keys(normalize_query):
    q = feats(2, 3, 4, seed=44).double().requires_grad_()
    k0 = feats(2, 3, 3, seed=45).double().requires_grad_()
    k1 = feats(2, 2, 4, seed=46).double().requires_grad_()
    index = torch.tensor([[0, 8, 9, 16], [3, 4, 12, 1], [10, 5, 2, 15]])

    def fn(a, b, c):
        return ts.relevance(a, [b, c], index, normalize_query=normalize_query)

    assert torch.autograd.gradcheck(fn, (q, k0, k1))
    fn(q, k0, k1).sum().backward()
    for t in (q, k0, k1):
        assert t.grad is not None and t.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# decode_index, validation


def test_decode_index_round_trip():
    shapes = [(3, 4), (2, 5), (1, 1), (5, 2)]  # 33 keys
    expected = [(r, y, x) for r, (h, w) in enumerate(shapes) for y in range(h) for x in range(w)]
    n = len(expected)
    flat = ts.decode_index(torch.arange(n), shapes)
    assert flat.shape == (n, 3) and flat.dtype == np.int64
    assert [tuple(row) for row in flat.tolist()] == expected
    grid = np.arange(n)[::-1].reshape(3, 11).copy()
    dec = ts.decode_index(grid, shapes)
    assert dec.shape == (3, 11, 3)
    ref, y, x = dec[..., 0], dec[..., 1], dec[..., 2]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    widths = np.array([w for _, w in shapes])
    np.testing.assert_array_equal(starts[ref] + y * widths[ref] + x, grid)  # encode back


@pytest.mark.parametrize(
    "query,keys",
    [
        (torch.zeros(4, 5), [torch.zeros(4, 5, 5)]),  # 2-D query
        (torch.zeros(1, 4, 5, 5), [torch.zeros(4, 5, 5)]),  # batched query
        (torch.zeros(4, 5, 5), []),  # no reference
        (torch.zeros(4, 5, 5), [torch.zeros(3, 5, 5)]),  # channel mismatch
        (torch.zeros(4, 5, 5), [torch.zeros(4, 5, 5), torch.zeros(1, 4, 5, 5)]),  # batched key
    ],
)
def test_search_rejects_bad_shapes(query, keys):
    with pytest.raises(ValueError, match="search expects"):
        ts.search(query, keys)


# --------------------------------------------------------------------------------------------
# memory bound


def peak_cpu_bytes(fn):
    """Peak of CPU-allocator bytes allocated during ``fn()`` (allocations minus frees, every
    tensor including kernels' internal buffers): the bench's meter, from profiler events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return _bench.allocator_peak(prof), out


def test_memory_meter_sees_allocations():
    """The meter is not blind: the dense formulation's matrix shows up in full."""
    q, k = feats(16, 30, 30, seed=50), feats(16, 40, 40, seed=51)
    peak, _ = peak_cpu_bytes(lambda: dense(q, [k]))
    assert peak >= 900 * 1600 * 4  # R alone
    peak, _ = peak_cpu_bytes(lambda: torch.empty(12345, dtype=torch.uint8).fill_(1))
    assert 12345 <= peak < 12345 + 4096


@pytest.mark.parametrize("budget", [160 * 2**10, 320 * 2**10, 640 * 2**10])
def test_search_scratch_memory_within_budget(budget):
    """Beyond fixed-size buffers (the zero-padded feature copies, per-pixel norm maps and the
    (H·W) outputs), the memory held during a search never exceeds ``budget_bytes``, while the
    dense matrix alone would be many times the budget."""
    q = feats(8, 32, 30, seed=52)
    keys = [feats(8, 40, 36, seed=53), feats(8, 7, 9, seed=54)]
    padded = [F.pad(t, (1, 1, 1, 1)) for t in [q, *keys]]
    fixed = sum(t.nbytes for t in padded) + sum(4 * 4 * t[0].numel() for t in padded) + 32 * 30 * (4 + 8)
    dense_bytes = 32 * 30 * (40 * 36 + 63) * 4  # the matrix R alone
    peak, got = peak_cpu_bytes(lambda: ts.search(q, keys, budget_bytes=budget))
    assert peak - fixed <= budget, f"search held {peak - fixed} bytes of scratch, budget {budget}"
    assert peak > fixed  # it did allocate: the meter works here
    assert budget < dense_bytes / 8
    assert_same_search(got, q, keys)
