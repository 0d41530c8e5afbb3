"""The inference pipeline: equality with a direct network call, tiling seams, dtypes and channels,
several references, nD stacks, progress/cancel, out-of-memory retry and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import napari_refsr as rs
from napari_refsr import pipeline
from napari_refsr.errors import Cancelled, RefSRError


def psnr(a, b, peak):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(peak**2 / max(mse, 1e-20))


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


def test_uint8_rgb_equals_reference_procedure(tiny_model, astronaut, reference_test_inputs):
    """The reference's test(): PIL bicubic LR↑, Ref cropped to ×4 and PIL ↓↑, /127.5-1, round."""
    lr = np.ascontiguousarray(astronaut[::8, ::8][:40, :36])
    ref = astronaut[200:350, 210:371]  # 150×161: cropped to 148×160 inside
    with torch.no_grad():
        sr = tiny_model.network(*reference_test_inputs(lr, ref))[0]
    expected = np.round(((sr[0] + 1) * 127.5).permute(1, 2, 0).numpy()).astype(np.uint8)
    out = rs.upscale(tiny_model, lr, ref, tile=256, device="cpu")
    assert out.dtype == np.uint8 and out.shape == (160, 144, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert (out != expected).mean() < 1e-3


def test_tiles_blend_without_seams(tiny_model, astronaut):
    """S and the index come from one search of the whole image's features, so they depend on the
    tiling only through float rounding (the search cells follow the tiles); the blended image
    differs from one big tile only by the network's own context at the tile borders."""
    lr = np.ascontiguousarray(astronaut[::4, ::4][:88, :72])
    ref = astronaut[:200, 300:]
    whole = rs.upscale_detailed(tiny_model, lr, ref, tile=512, device="cpu")
    tiled = rs.upscale_detailed(tiny_model, lr, ref, tile=40, overlap=16, device="cpu")
    assert len(pipeline.plan_tiles(88, 72, 40, 16)) > 4
    assert psnr(whole.image, tiled.image, 255) >= 50
    np.testing.assert_allclose(whole.confidence, tiled.confidence, atol=1e-5)
    np.testing.assert_array_equal(whole.source, tiled.source)


def _prepared(lr):
    from napari_refsr.normalize import prepare

    return prepare(lr, "image")


@pytest.mark.parametrize("tile,overlap,budget", [(20, 6, 2**20), (16, 4, 256 * 2**20), (64, 16, 256 * 2**20)])
def test_search_cells_equal_the_whole_images_search(tiny_model, astronaut, tile, overlap, budget):
    """Cells (thin strips and corners included) with their feature margins and 1-pixel rings give
    the search of the whole image's level-3 features: the same index, S up to float rounding."""
    from napari_refsr import search
    from napari_refsr.tiling import plan_cells

    lr = _prepared(np.ascontiguousarray(astronaut[::4, ::4][:37, :40]))
    engine = pipeline._Engine(tiny_model, [_prepared(astronaut[:160, 200:360])], "cpu", False)
    engine.encode()
    cells = plan_cells(37, 40, tile, overlap)
    s, idx = pipeline.search_cells(engine, lr, cells, budget_bytes=budget)
    _, up = pipeline._lr_and_up(lr, pipeline.Tile(0, 37, 0, 40), "cpu", torch.float32)
    with torch.no_grad():
        query = tiny_model.network.extract(up)[2][0]
    s_ref, idx_ref = search.search(query, engine.bank.keys)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(s, s_ref, atol=1e-6, rtol=1e-6)
    covered = np.zeros((37, 40), int)
    for c in cells:
        covered[c.y0 : c.y1, c.x0 : c.x1] += 1
    assert (covered == 1).all() and (len(cells) > 9 or tile > 40)


@pytest.mark.parametrize("n,tile,overlap", [(37, 20, 6), (256, 128, 16), (300, 128, 16), (90, 32, 8), (30, 32, 8)])
def test_tiles_with_their_ring_are_whole_cells(n, tile, overlap):
    """Every run of consecutive tiles, grown by one pixel, is a union of search cells: what a
    region of an out-of-core image searches is what the whole image searched there."""
    from napari_refsr.tiling import plan_cells

    tiles = sorted({(t.y0, t.y1) for t in pipeline.plan_tiles(n, n, tile, overlap)})
    edges = {c.y0 for c in plan_cells(n, n, tile, overlap)} | {n}
    for i in range(len(tiles)):
        for j in range(i, len(tiles)):
            lo, hi = max(0, tiles[i][0] - 1), min(n, tiles[j][1] + 1)
            assert lo in edges and hi in edges, (tiles[i], tiles[j])


@pytest.mark.parametrize(
    "shape,dtype",
    [((24, 20), np.uint8), ((24, 20, 1), np.uint8), ((24, 20, 3), np.uint8), ((24, 20, 4), np.uint8),
     ((24, 20), np.uint16), ((24, 20, 3), np.uint16), ((24, 20), np.float32), ((24, 20, 3), np.float64)],
)
def test_dtypes_and_channels_round_trip(tiny_model, astronaut, shape, dtype):
    gray = astronaut[..., 1]
    base = astronaut[::8, ::8][:24, :20] if len(shape) == 3 and shape[2] >= 3 else gray[::8, ::8][:24, :20]
    if dtype == np.uint16:
        lr = base.astype(np.uint16) * 40 + 1000
    elif dtype == np.uint8:
        lr = base.astype(np.uint8)
    else:
        lr = base.astype(dtype) / 255.0 * 3.0 - 1.0  # arbitrary float range
    if len(shape) == 3 and shape[2] == 1:
        lr = lr[..., None]
    if len(shape) == 3 and shape[2] == 4:
        alpha = np.full(lr.shape[:2] + (1,), 200, np.uint8)
        lr = np.concatenate([lr, alpha], axis=-1)
    ref_src = astronaut[100:180, 150:230]
    ref = ref_src if lr.ndim == 3 and lr.shape[2] >= 3 else ref_src[..., 1]
    out = rs.upscale(tiny_model, lr, ref, device="cpu")
    assert out.dtype == lr.dtype
    assert out.shape == (lr.shape[0] * 4, lr.shape[1] * 4) + lr.shape[2:]
    colour = out[..., :3] if out.ndim == 3 and out.shape[-1] == 4 else out
    lo, hi = float(lr.min()), float(lr.max())
    span = hi - lo
    assert colour.min() >= lo - 0.05 * span and colour.max() <= hi + 0.05 * span
    if lr.ndim == 3 and lr.shape[2] == 4:
        assert np.all(np.abs(out[..., 3].astype(int) - 200) <= 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [0, 1, 3, 4])
def test_restore_maps_back_to_the_input_window(dtype, channels, rng):
    """prepare → (what a perfect network returns: LR↑ in [-1, 1]) → restore ≈ bicubic of the input."""
    from napari_refsr.normalize import prepare, restore
    from napari_refsr.resize import resize_bicubic

    h, w = 12, 10
    shape = (h, w) if channels == 0 else (h, w, channels)
    peak = {np.uint8: 255, np.uint16: 9000, np.float32: 2.5}[dtype]
    from skimage.filters import gaussian

    smooth = gaussian(rng.random(shape), sigma=2, channel_axis=-1 if channels else None)
    img = ((smooth - smooth.min()) / np.ptp(smooth) * peak).astype(dtype)  # no clipping overshoot
    if channels == 4:
        img[..., 3] = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    p = prepare(img, percentiles=(0, 100))
    up = resize_bicubic(p.pixels, (4 * h, 4 * w), quantize=p.quantize).div(127.5).sub(1).clamp(-1, 1)  # the network clamps
    out = restore(up.numpy(), p)
    assert out.dtype == img.dtype and out.shape == (4 * h, 4 * w) + shape[2:]
    colour = img if channels == 0 else img[..., : min(3, channels)]
    direct = resize_bicubic(torch.from_numpy(np.moveaxis(np.atleast_3d(colour).astype(np.float64), -1, 0)), (4 * h, 4 * w))
    direct = np.moveaxis(direct.numpy(), 0, -1).clip(*p.window)
    got = out if channels == 0 else out[..., : min(3, channels)]
    got = np.atleast_3d(got).astype(np.float64)
    tol = 3.0 if dtype == np.uint8 else 1e-3 * peak + 1  # uint8: PIL rounds after each pass
    assert np.abs(got - direct).max() <= tol
    if channels == 4:
        np.testing.assert_allclose(out[..., 3], img[..., 3].max(), rtol=1e-5)


def test_several_references_source_points_to_the_matching_one(tiny_model, astronaut):
    gray = astronaut[..., 0]
    decoy = np.full((96, 96), 128, np.uint8)
    lr = np.ascontiguousarray(gray[::4, ::4][20:52, 20:52])
    match = gray[80:208, 80:208]  # the same content at high resolution
    res = rs.upscale_detailed(tiny_model, lr, [decoy, match], device="cpu")
    assert res.source.shape == (32, 32, 3)
    assert (res.source[..., 0] == 1).mean() > 0.9
    rows, cols = res.source[..., 1], res.source[..., 2]
    assert rows.min() >= 0 and rows.max() < 128 and cols.max() < 128
    # texture comes from where the LR content sits in the reference (up to a few pixels)
    yy, xx = np.mgrid[0:32, 0:32] * 4 + 2
    assert np.median(np.abs(rows - yy)) <= 4 and np.median(np.abs(cols - xx)) <= 4
    assert res.confidence.shape == (128, 128) and res.confidence.dtype == np.float32


def test_stack_and_axes(tiny_model):
    rng = np.random.default_rng(1)
    stack = (rng.random((3, 20, 24)) * 4000 + 100).astype(np.uint16)
    ref = (rng.random((64, 64)) * 4000).astype(np.uint16)
    res = rs.upscale_nd(tiny_model, stack, ref, device="cpu")
    assert res.image.shape == (3, 80, 96) and res.image.dtype == np.uint16
    assert res.confidence.shape == (3, 80, 96) and res.source.shape == (3, 20, 24, 3)
    # Y on axis 0, a looped axis in the middle, X last: same as moving the axes first
    moved = rs.upscale_nd(tiny_model, np.transpose(stack, (1, 0, 2)), ref, spatial_axes=(0, 2), device="cpu")
    assert moved.image.shape == (80, 3, 96)
    np.testing.assert_array_equal(np.transpose(moved.image, (1, 0, 2)), res.image)
    # channels on an axis of their own
    rgb = np.stack([stack] * 3, axis=1).astype(np.uint16)  # (Z, C, Y, X)
    out = rs.upscale_nd(tiny_model, rgb, np.stack([ref] * 3, -1), channel_axis=1, device="cpu")
    assert out.image.shape == (3, 3, 80, 96)


def test_progress_phases_and_cancel(tiny_model, astronaut):
    """progress(done, total) counts the whole job (encoding: keys and values of each reference
    copy, every search step, every tile) with the total known from the first call;
    phase(name, done, total) starts each phase at 0."""
    lr = np.ascontiguousarray(astronaut[::4, ::4][:48, :48])
    ref = astronaut[:128, :128]
    calls, phases = [], []
    rs.upscale(tiny_model, lr, ref, tile=32, progress=lambda d, t: calls.append((d, t)), device="cpu",
               phase=lambda *a: phases.append(a))
    n_tiles = len(pipeline.plan_tiles(48, 48, 32, pipeline.DEFAULT_OVERLAP))
    names = [p[0] for p in phases]
    n_search = names.count("searching") - 1
    assert n_search >= 4  # a small budget: the search reports several steps
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1))
    assert {t for _, t in calls} == {2 + n_search + n_tiles}
    expected = [("encoding references", i, 2) for i in range(3)]
    expected += [("searching", i, n_search) for i in range(n_search + 1)]
    expected += [("running tiles", i, n_tiles) for i in range(n_tiles + 1)]
    assert phases == expected
    for stop_after in (0, 1, 4, 2 + n_search + 2):  # before anything, while encoding, searching, between tiles
        seen = []
        with pytest.raises(Cancelled):
            rs.upscale(tiny_model, lr, ref, tile=32, progress=lambda d, t: seen.append(d),
                       cancel=lambda: len(seen) >= stop_after, device="cpu")
        assert len(seen) == stop_after


def test_cancel_acts_inside_a_tile(tiny_model, astronaut):
    """The cancel check also runs inside the network's forward pass (a big tile of the published
    network takes tens of seconds on a CPU): it stops before the first tile is done."""
    lr = np.ascontiguousarray(astronaut[::4, ::4][:64, :64])
    phases, polls = [], []

    def cancel():
        polls.append(phases[-1] if phases else None)
        return sum(p == ("running tiles", 0, 1) for p in polls) > 8  # the 9th poll inside the tile

    with pytest.raises(Cancelled):
        rs.upscale(tiny_model, lr, astronaut[:128, :128], tile=128, device="cpu",
                   phase=lambda *a: phases.append(a), cancel=cancel)
    assert phases[-1] == ("running tiles", 0, 1)  # the single tile never finished
    assert sum(p == ("running tiles", 0, 1) for p in polls) == 9  # polled again and again inside it
    assert sum(p is not None and p[0] == "encoding references" for p in polls) > 5  # and inside the encoder
    # the hooks are gone afterwards: a run without cancel is untouched
    assert not any(m._forward_pre_hooks for m in tiny_model.network.modules())


def test_out_of_memory_halves_the_tile_and_retries(tiny_model, astronaut, monkeypatch):
    lr = np.ascontiguousarray(astronaut[::4, ::4][:64, :64])
    ref = astronaut[:128, :128]
    expected = rs.upscale_detailed(tiny_model, lr, ref, tile=32, device="cpu")
    real = type(tiny_model.network).decode
    sizes = []

    def flaky(self, lr_t, *args):
        sizes.append(lr_t.shape[-1])
        if lr_t.shape[-1] > 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, lr_t, *args)

    monkeypatch.setattr(type(tiny_model.network), "decode", flaky)
    calls = []
    got = rs.upscale_detailed(tiny_model, lr, ref, tile=128, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert got.tile == 32 and sizes[0] == 64
    np.testing.assert_array_equal(got.image, expected.image)
    assert calls[-1][0] == calls[-1][1]  # the re-planned total is reached exactly


def test_out_of_memory_in_the_search_halves_its_budget(tiny_model, astronaut, monkeypatch):
    lr = np.ascontiguousarray(astronaut[::4, ::4][:40, :40])
    ref = astronaut[:128, :128]
    expected = rs.upscale_detailed(tiny_model, lr, ref, device="cpu")
    real = type(tiny_model.network).attend
    budgets = []

    def flaky(self, q, bank, *, budget_bytes, **kw):
        budgets.append(budget_bytes)
        if budget_bytes > 64 * 2**20:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, q, bank, budget_bytes=budget_bytes, **kw)

    monkeypatch.setattr(type(tiny_model.network), "attend", flaky)
    got = rs.upscale_detailed(tiny_model, lr, ref, device="cpu", search_budget=256 * 2**20)
    assert budgets[:3] == [256 * 2**20, 128 * 2**20, 64 * 2**20]
    np.testing.assert_array_equal(got.source, expected.source)
    np.testing.assert_array_equal(got.image, expected.image)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(tiny_model, astronaut, monkeypatch):
    def always(self, *a, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(type(tiny_model.network), "decode", always)
    with pytest.raises(RefSRError, match="out of memory"):
        rs.upscale(tiny_model, astronaut[::8, ::8], astronaut[:64, :64], tile=32, device="cpu")


@pytest.mark.parametrize(
    "lr,ref,match",
    [
        (np.full((16, 16), np.nan, np.float32), np.zeros((32, 32), np.float32), "NaN"),
        (np.zeros((16, 16, 5), np.uint8), np.zeros((32, 32, 3), np.uint8), "shape"),
        (np.zeros((3, 16, 16), np.uint8), np.zeros((32, 32, 3), np.uint8), "channels-first"),
        (np.zeros((0, 16), np.uint8), np.zeros((32, 32), np.uint8), "too small"),
        (np.zeros((2, 2), np.uint8), np.zeros((32, 32), np.uint8), "too small"),
        (np.zeros((16, 16), np.uint8), np.zeros((8, 8), np.uint8), "reference 1"),
        (np.zeros((16, 16), np.uint8), np.zeros((32, 32, 3), np.uint8), "grayscale"),
        (np.zeros((16, 16), np.complex64), np.zeros((32, 32), np.uint8), "dtype"),
        (np.zeros((16, 16), np.uint8), [], "at least one reference"),
        (np.zeros((16, 16), np.uint8), None, "missing"),
    ],
)
def test_bad_input_names_the_problem(tiny_model, lr, ref, match):
    with pytest.raises(RefSRError, match=match):
        rs.upscale(tiny_model, lr, ref, device="cpu")


def test_bad_options(tiny_model):
    img = np.zeros((16, 16), np.uint8)
    with pytest.raises(RefSRError, match="tile"):
        rs.upscale(tiny_model, img, np.zeros((32, 32), np.uint8), tile=4, device="cpu")
    with pytest.raises(RefSRError, match="axes"):
        rs.upscale_nd(tiny_model, np.zeros((2, 16, 16), np.uint8), np.zeros((32, 32), np.uint8),
                      spatial_axes=(1, 1), device="cpu")
    with pytest.raises(RefSRError, match="device"):
        rs.upscale(tiny_model, img, np.zeros((32, 32), np.uint8), device="tpu")


def test_load_model_caches_and_infers_config(tiny_checkpoint):
    a = rs.load_model(tiny_checkpoint, device="cpu")
    b = rs.load_model(str(tiny_checkpoint), device="auto" if not torch.cuda.is_available() else "cpu")
    assert a is b
    assert a.config["n_feats"] == 8 and list(a.config["num_res_blocks"]) == [1, 1, 1, 1]
    assert isinstance(a.network, torch.nn.Module) and a.device.type == "cpu"


def test_coarse_search_mode(tiny_model, astronaut):
    """``search="coarse"`` runs the approximate coarse-to-fine search: on a natural image whose
    scene the reference holds, nearly the exact result; its progress counts to the announced
    total; a bad mode is one error naming it."""
    lr = np.ascontiguousarray(astronaut[::4, ::4][:48, :48])
    ref = astronaut[:256, :256]
    exact = rs.upscale_detailed(tiny_model, lr, ref, device="cpu")
    calls = []
    approx = rs.upscale_detailed(tiny_model, lr, ref, device="cpu", search="coarse",
                                 progress=lambda d, t: calls.append((d, t)))
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1)) and {t for _, t in calls} == {len(calls)}
    assert approx.image.shape == exact.image.shape and approx.image.dtype == np.uint8
    assert (approx.source == exact.source).all(axis=-1).mean() > 0.5  # most pixels: the exact patch
    assert psnr(exact.image, approx.image, 255) >= 35
    assert not np.array_equal(exact.image, approx.image)  # a different search ran
    with pytest.raises(RefSRError, match="search must be one of exact, coarse"):
        rs.upscale(tiny_model, lr, ref, device="cpu", search="fast")
