"""The approximate coarse-to-fine search: exact where its window holds the best patch, the exact S
of whatever patch it picks, the exact search's numbering, progress and cancel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_refsr import search as ts
from napari_refsr.coarse_search import coarse_search_padded, coarse_steps, prepare_coarse_keys
from napari_refsr.errors import Cancelled
from napari_refsr.shift_search import prepare_keys

from test_search import assert_same_search, dense_relevance, feats


def coarse(query, keys, **options):
    return coarse_search_padded(F.pad(query, (1, 1, 1, 1)), keys, **options)


def smooth(*shape, seed):
    """Spatially correlated features (like an image's), so that pooled maps still match."""
    return F.avg_pool2d(feats(*shape, seed=seed)[None], 5, 1, 2)[0]


QUERY = (16, 17, 19)
KEYS = [(16, 13, 17), (16, 9, 12), (16, 30, 7)]


@pytest.mark.parametrize("normalize_query", [True, False])
def test_factor_one_is_the_exact_search(normalize_query):
    """Without pooling the coarse winner is the exact one and the refinement keeps it: the dense
    answer, over several references whose sizes the cells do not divide."""
    q = feats(*QUERY, seed=3)
    keys = [feats(*s, seed=4 + i) for i, s in enumerate(KEYS)]
    got = coarse(q, keys, factor=1, margin=0, normalize_query=normalize_query)
    assert_same_search(got, q, keys, normalize_query=normalize_query)


@pytest.mark.parametrize("factor,margin", [(2, 1), (3, 1), (2, 0), (4, 2)])
def test_s_is_the_exact_relevance_of_the_chosen_patch(factor, margin):
    """On features without spatial structure the coarse search often misses the best patch, but
    what it returns is consistent: a valid global index, S its exact relevance, never above the best."""
    q = feats(*QUERY, seed=3)
    keys = [feats(*s, seed=4 + i) for i, s in enumerate(KEYS)]
    s, idx = coarse(q, keys, factor=factor, margin=margin)
    r = dense_relevance(q, keys)  # (N_keys, N_query)
    assert idx.shape == s.shape == QUERY[1:] and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < r.shape[0]
    chosen = r.gather(0, idx.reshape(1, -1)).view_as(s)
    torch.testing.assert_close(s, chosen, atol=1e-5, rtol=1e-5)
    assert bool((s <= r.max(dim=0).values.view_as(s) + 1e-5).all())


def test_finds_the_exact_patches_of_a_shifted_crop():
    """Image-like features, the reference a larger crop at an odd offset: the coarse search
    lands every cell near its true match, and the refinement finds the exact index everywhere."""
    scene = smooth(16, 80, 80, seed=9)
    q, k = scene[:, 11:50, 13:52], scene[:, 4:71, 3:66]
    exact = ts.search(q, [k])
    got = coarse(q, [k])
    assert torch.equal(got[1], exact[1])
    torch.testing.assert_close(got[0], exact[0], atol=1e-5, rtol=1e-5)


def test_prepared_keys_give_the_same_answer():
    scene = smooth(8, 60, 60, seed=10)
    q, keys = scene[:, 5:30, 7:33], [scene[:, 20:58, 2:40], scene[:, :25, 30:]]
    plain = coarse(q, keys)
    prepared = coarse(q, prepare_keys(keys))
    assert torch.equal(plain[1], prepared[1])
    torch.testing.assert_close(plain[0], prepared[0], atol=1e-6, rtol=1e-6)


def test_progress_counts_every_step_and_cancel_stops_it():
    q = smooth(8, 40, 36, seed=11)
    keys = [smooth(8, 50, 44, seed=12)]
    budget = 2 * 2**20  # a few refinement chunks
    total = coarse_steps((40, 36), [(50, 44)], channels=8, budget_bytes=budget)
    calls = []
    coarse(q, keys, budget_bytes=budget, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, total) for i in range(1, total + 1)]
    checks = []
    with pytest.raises(Cancelled):
        coarse(q, keys, budget_bytes=budget, cancel=lambda: checks.append(1) or len(checks) > total - 1)
    assert len(checks) == total  # polled before every step, the last one stopped it


@pytest.mark.parametrize("options,match", [(dict(factor=0), "factor"), (dict(margin=-1), "margin")])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        coarse(feats(4, 8, 8, seed=1), [feats(4, 8, 8, seed=2)], **options)


def test_other_patch_sizes_are_refused():
    with pytest.raises(ValueError, match="3×3"):
        coarse_search_padded(torch.zeros(4, 10, 10), prepare_keys([torch.ones(4, 8, 8)], patch=5))


def test_nan_queries_keep_a_valid_index():
    """A query patch with NaN scores everywhere keeps its cell's coarse winner: a valid index on the
    map (the texture transfer must not read outside the references); the pipeline reports NaN later."""
    q = smooth(4, 6, 6, seed=13)
    q[:, 2, 2] = float("nan")
    keys = [smooth(4, 8, 8, seed=14), smooth(4, 8, 8, seed=15)]
    _, idx = coarse(q, keys)
    assert int(idx.min()) >= 0 and int(idx.max()) < 2 * 64


def test_prepared_coarse_keys_are_reused():
    """Keys made ready once (what the pipeline does per job) give the same answer for every piece."""
    scene = smooth(8, 60, 60, seed=16)
    keys = [scene[:, 20:58, 2:40], scene[:, :25, 30:]]
    ready = prepare_coarse_keys(keys)
    for q in (scene[:, 5:30, 7:33], scene[:, 30:41, 0:17]):
        once, fresh = coarse(q, ready), coarse(q, keys)
        assert torch.equal(once[1], fresh[1])
        torch.testing.assert_close(once[0], fresh[0], atol=1e-6, rtol=1e-6)
