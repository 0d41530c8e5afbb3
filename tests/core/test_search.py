"""The streamed texture search/transfer equals the reference TTSR's dense formulation.

The expectations here are written independently of ``napari_refsr.search``: the full relevance
matrix from ``F.unfold`` / ``F.normalize`` / ``torch.max`` and the ``unfold → gather → fold / 9``
texture transfer, exactly as the reference network computes them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from napari_refsr import search as ts

_spec = importlib.util.spec_from_file_location("refsr_bench_search", Path(__file__).parents[2] / "bench" / "search.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)


# --------------------------------------------------------------------------------------------
# independent dense reference


def dense_relevance(query, keys, normalize_query=True):
    """The reference's full relevance matrix R (N_keys, N_query): unfold, L2-normalise, K·Q."""
    q = F.unfold(query[None], kernel_size=(3, 3), padding=1)[0]  # (C·9, Nq)
    k = torch.cat([F.unfold(key[None], kernel_size=(3, 3), padding=1)[0] for key in keys], dim=1)
    k = F.normalize(k.t(), dim=1)  # (Nk, C·9): reference patches, L2-normalised
    if normalize_query:
        q = F.normalize(q, dim=0)
    return k @ q


def dense(query, keys, normalize_query=True):
    """(S, index) of the reference: max over keys of the full matrix."""
    s, idx = torch.max(dense_relevance(query, keys, normalize_query), dim=0)
    h, w = query.shape[1:]
    return s.view(h, w), idx.view(h, w)


def assert_same_search(got, query, keys, normalize_query=True, atol=1e-5):
    """Indices equal to the dense argmax wherever the winner is not a near-tie (float64 margin
    above 1e-4, i.e. all but a handful of random positions), S equal to ~1e-5 everywhere."""
    s, idx = got
    s_ref, idx_ref = dense(query, keys, normalize_query)
    assert s.shape == idx.shape == query.shape[1:]
    assert idx.dtype == torch.int64
    torch.testing.assert_close(s, s_ref, atol=atol, rtol=1e-5)
    r64 = dense_relevance(query.double(), [k.double() for k in keys], normalize_query)
    top2 = r64.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).view_as(idx)
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


@pytest.mark.parametrize(
    "query_chunk,key_chunk",
    [(None, None), (7, 13), (13, 7), (None, 1), (997, 101), (323, 539)],
)
def test_search_several_references_any_chunking(query_chunk, key_chunk):
    """Global index = references concatenated in order, row-major; chunk sizes that do not
    divide the query (17·19 = 323) nor any reference size (221, 108, 210) change nothing."""
    q = feats(16, 17, 19, seed=3)
    keys = [feats(16, 13, 17, seed=4), feats(16, 9, 12, seed=5), feats(16, 30, 7, seed=6)]
    got = ts.search(q, keys, query_chunk=query_chunk, key_chunk=key_chunk)
    assert_same_search(got, q, keys)


@pytest.mark.parametrize("budget", [1_000, 4_096, 20_000, 150_000])
def test_search_tiny_budgets(budget):
    """Budgets far below one patch matrix (here 99 queries × 36 floats = 14 kB) force many
    query and key chunks; the answer does not change."""
    q = feats(4, 9, 11, seed=7)
    keys = [feats(4, 7, 8, seed=8), feats(4, 5, 13, seed=9)]
    assert_same_search(ts.search(q, keys, budget_bytes=budget), q, keys)


def test_search_one_query_at_a_time():
    q = feats(4, 9, 11, seed=7)
    keys = [feats(4, 7, 8, seed=8), feats(4, 5, 13, seed=9)]
    assert_same_search(ts.search(q, keys, query_chunk=1, key_chunk=7), q, keys)
    assert_same_search(ts.search(q, keys, query_chunk=1), q, keys)


@pytest.mark.parametrize("chunks", [dict(), dict(query_chunk=5, key_chunk=11), dict(budget_bytes=8_000)])
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
    s, idx = ts.search(q, keys, normalize_query=normalize_query, query_chunk=17, key_chunk=29)
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


def test_search_lowest_index_wins_exact_ties():
    """Identical references tie exactly everywhere: the first one wins, as torch.max does."""
    q, k = feats(4, 6, 7, seed=16), feats(4, 5, 5, seed=17)
    s, idx = ts.search(q, [k, k.clone(), k.clone()], key_chunk=3)
    s1, idx1 = ts.search(q, [k])
    assert torch.equal(idx, idx1)
    torch.testing.assert_close(s, s1)


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


@pytest.mark.parametrize("budget", [16 * 2**10, 64 * 2**10, 160 * 2**10])
def test_search_scratch_memory_within_budget(budget):
    """Beyond fixed-size buffers (the zero-padded feature copies and the (H·W) outputs), the
    memory held during a search never exceeds ``budget_bytes``, while the dense matrix alone
    would be many times the budget."""
    q = feats(8, 16, 15, seed=52)
    keys = [feats(8, 14, 20, seed=53), feats(8, 7, 9, seed=54)]
    fixed = sum(F.pad(t, (1, 1, 1, 1)).nbytes for t in [q, *keys]) + 16 * 15 * (4 + 8)
    dense_bytes = 16 * 15 * (280 + 63) * 4  # the matrix R alone
    peak, got = peak_cpu_bytes(lambda: ts.search(q, keys, budget_bytes=budget))
    assert peak - fixed <= budget, f"search held {peak - fixed} bytes of scratch, budget {budget}"
    assert peak > fixed  # it did allocate: the meter works here
    assert budget < dense_bytes / 2
    assert_same_search(got, q, keys)
