"""Out of core (napari_refsr.large): dask/zarr/TIFF input chunk by chunk with halos equals the
in-memory result; OME-Zarr output with a pyramid, validated; a real LocalCluster with 2 worker
processes; progress, cancel, no half-written store, one-line errors; the core without the extra."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_refsr
from napari_refsr import Cancelled, RefSRError
from napari_refsr.archs.ttsr import TTSR, TTSRConfig
from napari_refsr.cli import main

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")
pytest.importorskip("ome_zarr")
from napari_refsr import large  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TILE, OVERLAP, CHUNK = 32, 8, 40  # halo 35: 40-pixel chunks that do not divide the images
RNG = np.random.default_rng(13)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread for the whole module: the expected results (module fixtures) and the
    chunked runs then sum convolutions in the same order, so they agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1))).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return napari_refsr.load_model(ckpt, device="cpu", cache=False)


def _textured(shape, top):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    extra = shape[2:]
    img = np.sin(yy / 3.0) * np.cos(xx / 4.0)
    img = img.reshape(img.shape + (1,) * len(extra)) + 0.4 * RNG.standard_normal(shape)
    img = (img - img.min()) / (img.max() - img.min())
    return img * top


@pytest.fixture(scope="module")
def stack():
    """A uint16 (Z, Y, X) stack and its reference: 2×2 chunks of 40 + 43 by 40 + 37 pixels per slice."""
    lr = np.stack([_textured((83, 77), 50000), _textured((83, 77), 30000)]).astype(np.uint16)
    ref = _textured((40, 44), 50000).astype(np.uint16)
    return lr, ref


@pytest.fixture(scope="module")
def stack_expected(model, stack):
    lr, ref = stack
    return napari_refsr.upscale_nd(model, lr, ref, tile=TILE, overlap=OVERLAP).image


def _upscale_dask(model, data, ref, **kw):
    return large.upscale_dask(model, data, ref, tile=TILE, overlap=OVERLAP, chunk=CHUNK, **kw)


def _no_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".refsr-" in p.name]


# ------------------------------------------------------------------------------ equal to in memory


def test_dask_uint16_stack_equals_in_memory(model, stack, stack_expected):
    lr, ref = stack
    data = da.from_array(lr, chunks=(1, 30, 50))  # storage chunks unlike the processing chunks
    out = _upscale_dask(model, data, ref)
    assert isinstance(out, da.Array) and out.shape == (2, 332, 308) and out.dtype == np.uint16
    assert out.numblocks == (2, 2, 2) and out.chunks[1] == (160, 172) and out.chunks[2] == (160, 148)
    got = out.compute()
    np.testing.assert_array_equal(got, stack_expected)  # exact: same tiles, weights and window


def test_dask_coarse_search_equals_in_memory(model, stack, stack_expected):
    """The approximate search out of core: the chunks search the in-memory run's cells, so
    ``search="coarse"`` gives the in-memory coarse result exactly (and not the exact search's)."""
    lr, ref = stack
    expected = napari_refsr.upscale_nd(model, lr, ref, tile=TILE, overlap=OVERLAP, search="coarse").image
    got = _upscale_dask(model, da.from_array(lr, chunks=(1, 30, 50)), ref, search="coarse").compute()
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, stack_expected)


def test_rgba_channels_first_axis_order_equals_in_memory(model):
    lr = _textured((77, 81, 4), 255).astype(np.uint8)  # 2×2 chunks: 40 + 37 rows (halo 37)
    ref = _textured((36, 40, 3), 255).astype(np.uint8)
    expected = napari_refsr.upscale_nd(model, lr, ref, spatial_axes=(0, 1), channel_axis=2, tile=TILE,
                                       overlap=OVERLAP).image
    cyx = da.from_array(np.moveaxis(lr, -1, 0), chunks=(4, 64, 64))
    out = _upscale_dask(model, cyx, ref, spatial_axes=(1, 2), channel_axis=0)
    assert out.numblocks == (1, 2, 2)
    np.testing.assert_array_equal(np.moveaxis(out.compute(), 0, -1), expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int8])
def test_whole_window_is_numpys_percentile_exactly(dtype):
    info = np.iinfo(dtype)
    for n in (7, 1000, 4099):
        a = RNG.integers(info.min, info.max, size=(3, n), endpoint=True).astype(dtype)
        want = napari_refsr.normalize.intensity_window(a)
        assert large.whole_window(da.from_array(a, chunks=(2, max(1, n // 3)))) == want


def test_whole_window_of_floats_is_within_a_bin():
    a = RNG.standard_normal((200, 300)).astype(np.float32)
    lo, hi = napari_refsr.normalize.intensity_window(a)
    got = large.whole_window(da.from_array(a, chunks=64))
    width = (a.max() - a.min()) / 2**16
    assert abs(got[0] - lo) <= width and abs(got[1] - hi) <= width
    a[3, 4] = np.nan
    with pytest.raises(RefSRError, match="NaN"):
        large.whole_window(da.from_array(a, chunks=64))


# ------------------------------------------------------------------------------ OME-Zarr files


def _write_tiff(path: Path, lr: np.ndarray) -> None:
    tifffile.imwrite(path, lr, tile=(32, 32), resolution=(2.0, 2.0), resolutionunit="CENTIMETER",
                     metadata={"axes": "ZYX"})


def test_tiff_to_ome_zarr_validates_reopens_and_equals_in_memory(tmp_path, model, stack, stack_expected):
    from ome_zarr_models import open_ome_zarr

    lr, ref = stack
    _write_tiff(tmp_path / "big.tif", lr)
    seen = []
    out = large.upscale_file(model, tmp_path / "big.tif", [ref], tmp_path / "out.ome.zarr", tile=TILE,
                             overlap=OVERLAP, chunk=CHUNK, progress=lambda d, t: seen.append((d, t)))
    assert out == tmp_path / "out.ome.zarr" and _no_leftovers(tmp_path) == []
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == list(range(1, 9))  # 2 slices × 2 × 2 chunks

    image = open_ome_zarr(zarr.open_group(str(out), mode="r"))  # validates the metadata (0.5)
    ms = image.ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["z", "y", "x"] and ms.axes[1].unit == "micrometer"
    levels, names, scales = large.open_levels(out)
    assert names == "zyx" and len(levels) == 2  # halved while the larger side stays >= 128 px
    assert scales[0] == pytest.approx([1.0, 5000 / 4, 5000 / 4])  # 2 px/cm = 5000 µm, ÷ 4
    assert scales[1] == pytest.approx([1.0, 5000 / 2, 5000 / 2]) and levels[1].shape == (2, 166, 154)
    np.testing.assert_array_equal(levels[0].compute(), stack_expected)

    reopened = large.open_image(out)  # the output is a valid input too
    assert reopened.axes == "ZYX" and reopened.scale["Y"] == pytest.approx(1250.0)


def test_cli_runs_out_of_core_with_a_bar_over_chunks_and_one_line_errors(tmp_path, ckpt, stack, capsys,
                                                                         on_terminal):
    lr, ref = stack
    _write_tiff(tmp_path / "big.tif", lr)
    tifffile.imwrite(tmp_path / "ref.tif", ref)
    base = ["upscale", str(tmp_path / "big.tif"), str(tmp_path / "ref.tif"), "--model", str(ckpt),
            "--device", "cpu", "--tile", str(TILE)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc, tty_text = on_terminal(lambda fd: subprocess.run(
        [sys.executable, "-m", "napari_refsr", *base, "-o", str(tmp_path / "out.ome.zarr"), "--chunk", str(CHUNK)],
        env=env, stderr=fd, stdout=subprocess.PIPE, timeout=600))
    assert proc.returncode == 0, tty_text
    assert "chunk" in tty_text and "8/8" in tty_text and "wrote" in tty_text, tty_text
    base.append("-q")
    got = zarr.open_array(str(tmp_path / "out.ome.zarr" / "s0"), mode="r")[:]
    # the CLI uses the default overlap (16): compare with the same in memory
    want = napari_refsr.upscale_nd(napari_refsr.load_model(ckpt, device="cpu"), lr, ref, tile=TILE).image
    np.testing.assert_array_equal(got, want)
    capsys.readouterr()

    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "mine.ome.zarr").mkdir()
    (tmp_path / "mine.ome.zarr" / "keep.txt").write_text("mine")
    cases = {
        "halo": (base + ["-o", str(tmp_path / "a.ome.zarr"), "--chunk", "20"], "smaller than the halo"),
        "store": (["upscale", str(tmp_path / "empty.zarr"), str(tmp_path / "ref.tif"), "-o",
                   str(tmp_path / "b.ome.zarr"), "--model", str(ckpt)], "not a readable zarr store"),
        "axes": (base + ["-o", str(tmp_path / "c.ome.zarr"), "--channels", "colour"], "no C or S axis"),
        "format": (base + ["-o", str(tmp_path / "d.tif"), "--scheduler", "processes"], "OME-Zarr"),
        "target": (base + ["-o", str(tmp_path / "mine.ome.zarr")], "not a zarr store; refusing"),
        "address": (base + ["-o", str(tmp_path / "e.ome.zarr"), "--scheduler", "nowhere"], "scheduler must be"),
    }
    for name, (argv, message) in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refsr: error: ") and message in err[0], (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "empty.zarr", "mine.ome.zarr",
                                                           "out.ome.zarr", "ref.tif"]
    assert [p.name for p in (tmp_path / "mine.ome.zarr").iterdir()] == ["keep.txt"]


def test_axes_errors_are_one_line(model, stack):
    lr, ref = stack
    with pytest.raises(RefSRError, match="distinct axes"):
        large.upscale_dask(model, da.from_array(lr), ref, spatial_axes=(1, 1))
    with pytest.raises(RefSRError, match="channels"):
        large.upscale_dask(model, da.from_array(lr), ref, channel_axis=0)  # 2 "channels"
    with pytest.raises(RefSRError, match="grayscale"):
        _upscale_dask(model, da.from_array(lr), np.zeros((40, 40, 3), np.uint8))
    src = large.Source(da.from_array(lr), "ZQX")
    with pytest.raises(RefSRError, match="one Y and one X"):
        large.layout(src)


# ------------------------------------------------------------------------------ bounded memory


@pytest.mark.parametrize("blocks", [3, 9])
def test_the_writer_holds_about_one_output_chunk_per_thread_whatever_the_size(tmp_path, blocks):
    """Output chunks are stored as they are made: at no time are more than ``threads`` + 1 computed
    and not yet written, for 9 or 81 chunks alike (so memory does not grow with the image)."""
    from dask.callbacks import Callback

    n, depth = 24, 5
    lr = da.from_array(RNG.integers(0, 255, (n * blocks, n * blocks), dtype=np.uint8), chunks=n)
    haloed = da.overlap.overlap(lr, depth=depth, boundary="none")
    live, most, lock = [0], [0], threading.Lock()

    def make(block, block_id=None):  # counts chunks made (the store task counts them written)
        out = _cut_x4(block, depth, block_id, lr.numblocks)
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        return out

    image = da.map_blocks(make, haloed, dtype=np.uint8, chunks=tuple(tuple(4 * c for c in cs) for cs in lr.chunks))

    def posttask(key, result, dsk, state, worker_id):
        if str(key[0] if isinstance(key, tuple) else key).startswith("refsr-store-"):
            with lock:
                live[0] -= 1

    threads = 2
    with Callback(posttask=posttask):
        large.write_ome_zarr(image, tmp_path / "out.ome.zarr", "YX", workers=threads, pyramid_min=1 << 30)
    got = zarr.open_array(str(tmp_path / "out.ome.zarr" / "s0"), mode="r")[:]
    np.testing.assert_array_equal(got, np.repeat(np.repeat(lr.compute(), 4, 0), 4, 1))
    assert live[0] == 0 and 1 <= most[0] <= threads + 1, most[0]


def _cut_x4(block, depth, block_id, numblocks):
    """The core of a haloed block (``boundary="none"``: no halo at the image border), ×4."""
    y0 = depth if block_id[0] > 0 else 0
    x0 = depth if block_id[1] > 0 else 0
    y1 = block.shape[0] - (depth if block_id[0] < numblocks[0] - 1 else 0)
    x1 = block.shape[1] - (depth if block_id[1] < numblocks[1] - 1 else 0)
    return np.repeat(np.repeat(block[y0:y1, x0:x1], 4, 0), 4, 1)


# ------------------------------------------------------------------------------ cancel and failure


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_cancel_between_chunks_leaves_no_store_and_keeps_the_old_one(tmp_path, model, stack, where, request):
    client = request.getfixturevalue("cluster")[1] if where == "cluster" else None
    lr, ref = stack
    target = tmp_path / "out.ome.zarr"
    zarr.open_group(str(target), mode="w").attrs["mine"] = True  # an earlier result stays untouched
    seen = []
    with pytest.raises(Cancelled):
        large.upscale_to_ome_zarr(model, da.from_array(lr), ref, target, axes="ZYX", spatial_axes=(1, 2),
                                  tile=TILE, overlap=OVERLAP, chunk=CHUNK, workers=1, client=client,
                                  progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 1)
    assert seen == [1]  # stopped after the first of eight chunks
    if client is not None:  # it returned only once nothing of the run still ran on a worker
        assert not any(client.processing().values())
    assert dict(zarr.open_group(str(target), mode="r").attrs) == {"mine": True}
    assert _no_leftovers(tmp_path) == []


def test_cancel_while_the_pyramid_is_written_leaves_nothing(tmp_path):
    image = da.from_array(np.arange(3 * 300 * 280, dtype=np.uint32).reshape(3, 300, 280) % 251, chunks=(1, 128, 128))
    seen, asked_after = [], []

    def cancel():  # False through the last chunk's own check, True from the pyramid's first task on
        if seen and seen[-1][0] == seen[-1][1]:
            asked_after.append(1)
        return len(asked_after) > 1

    with pytest.raises(Cancelled):  # every chunk stored, then cancelled inside ome-zarr-py's pyramid
        large.write_ome_zarr(image.astype(np.uint8), tmp_path / "out.ome.zarr", "ZYX",
                             progress=lambda d, t: seen.append((d, t)), cancel=cancel)
    assert seen[-1] == (27, 27) and len(asked_after) == 2 and list(tmp_path.iterdir()) == []


def test_failure_mid_run_leaves_nothing(tmp_path, model, stack, monkeypatch):
    from napari_refsr.pipeline import RegionUpscaler

    lr, ref = stack
    calls = []
    real = RegionUpscaler.__call__

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RegionUpscaler, "__call__", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        large.upscale_to_ome_zarr(model, da.from_array(lr), ref, tmp_path / "out.ome.zarr", axes="ZYX",
                                  spatial_axes=(1, 2), tile=TILE, overlap=OVERLAP, chunk=CHUNK, workers=1)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ a real cluster


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster of 2 worker processes (one thread each, one torch thread each)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(torch.set_num_threads, 1)
        yield cluster, client


def test_local_cluster_with_two_processes_equals_threads(tmp_path, model, stack, stack_expected, cluster):
    cluster, client = cluster
    lr, ref = stack
    _write_tiff(tmp_path / "big.tif", lr)
    def encoded():  # each worker's ENCODED counter (job token -> encodings)
        return client.run(lambda: dict(__import__("napari_refsr.large.chunks", fromlist=["ENCODED"]).ENCODED))

    before, seen = encoded(), []
    with large.scheduler(cluster.scheduler_address) as remote:  # an existing cluster, by address
        assert remote.scheduler_info()["address"] == cluster.scheduler_address
        source = large.open_image(tmp_path / "big.tif")
        large.upscale_to_ome_zarr(model, source.data, ref, tmp_path / "out.ome.zarr", axes=source.axes,
                                  spatial_axes=(1, 2), tile=TILE, overlap=OVERLAP, chunk=CHUNK,
                                  client=remote, progress=lambda d, t: seen.append(d))
    after = encoded()  # this run's job only (the module's cluster also runs other tests' jobs)
    runs = {w: {t: n - before.get(w, {}).get(t, 0) for t, n in e.items()} for w, e in after.items()}
    runs = {w: {t: n for t, n in e.items() if n} for w, e in runs.items()}
    assert len(runs) == 2 and seen[-1] == 8
    assert len({t for e in runs.values() for t in e}) == 1  # one job
    # each worker process encoded the references at most once for the 8 chunks (model shipped once)
    assert sum(sum(e.values()) for e in runs.values()) <= 2
    assert all(count == 1 for e in runs.values() for count in e.values())
    got = zarr.open_array(str(tmp_path / "out.ome.zarr" / "s0"), mode="r")[:]
    np.testing.assert_array_equal(got, stack_expected)


def test_threads_while_a_client_is_active(tmp_path, model, stack, stack_expected, cluster):
    """client=None runs on threads even while a distributed client is the default one (the job is
    not scattered to it, the intensity window is not computed on it)."""
    _, client = cluster
    from distributed import default_client

    assert default_client() is client
    lr, ref = stack
    out = large.upscale_to_ome_zarr(model, da.from_array(lr), ref, tmp_path / "out.ome.zarr", axes="ZYX",
                                    spatial_axes=(1, 2), tile=TILE, overlap=OVERLAP, chunk=CHUNK, workers=1)
    np.testing.assert_array_equal(zarr.open_array(str(out / "s0"), mode="r")[:], stack_expected)


# ------------------------------------------------------------------------------ without the extra


def test_core_imports_without_the_extra(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'zarr', 'distributed', 'ome_zarr'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import napari_refsr, napari_refsr.cli, napari_refsr.large\n"
        "assert napari_refsr.large.is_zarr_path('x.ome.zarr')\n"
        "try:\n"
        "    napari_refsr.large.upscale_dask\n"
        "except napari_refsr.RefSRError as err:\n"
        "    print(err)\n"
        "sys.exit(napari_refsr.cli.main(['upscale', 'a.tif', 'r.tif', '-o', 'o.ome.zarr']))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "needs the 'large' extra" in proc.stdout and "pip install 'napari-refsr[large]'" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("refsr: error: out-of-core upscaling needs")
