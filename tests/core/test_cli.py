"""The ``refsr`` command end to end (``python -m napari_refsr`` in a subprocess) and its errors.

A tiny TTSR checkpoint in the reference format is written by the tests; outputs are compared with
the core called in-process on the same files, so the CLI is checked for passing the right data
(axes, references, dtype) and writing it back faithfully.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import napari_refsr
from napari_refsr import cli, confidence, imageio, weights
from napari_refsr.archs.ttsr import TTSR, TTSRConfig

REPO = Path(napari_refsr.__file__).resolve().parent.parent
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = TTSR(TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1)))
    path = tmp_path_factory.mktemp("ckpt") / "tiny_ttsr.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return napari_refsr.load_model(ckpt, device="cpu")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env[weights.CACHE_ENV] = str(tmp_path / "cache")
    env.pop(weights.BASE_URL_ENV, None)
    return env


def run_cli(tmp_path: Path, *args, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_refsr", *map(str, args)], cwd=tmp_path,
                          env=_env(tmp_path), stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300)


def _smooth(h, w, channels=0, dtype=np.uint8):
    """Textured but structured test images (random noise would make every match a near-tie)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [np.sin(yy / (2.0 + c)) * np.cos(xx / (3.0 + c)) + 0.3 * RNG.standard_normal((h, w))
              for c in range(max(channels, 1))]
    img = np.stack(planes, axis=-1) if channels else planes[0]
    img = (img - img.min()) / (img.max() - img.min())
    top = 255 if dtype == np.uint8 else 60000
    return (img * top).round().astype(dtype)


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.iterdir())


# ----------------------------------------------------------------------------------- success


def test_uint16_gray_with_two_references_confidence_and_source(tmp_path, ckpt, model):
    lr = _smooth(20, 24, dtype=np.uint16)
    ref_a = _smooth(48, 64, dtype=np.uint16)
    ref_b = _smooth(40, 44, dtype=np.uint16)
    imageio.write_image(tmp_path / "lr.png", lr)  # 16-bit grayscale PNG
    imageio.write_image(tmp_path / "ref_a.tif", ref_a)
    imageio.write_image(tmp_path / "ref_b.png", ref_b)

    proc = run_cli(tmp_path, "upscale", "lr.png", "ref_a.tif", "ref_b.png", "-o", "out.png",
                   "--model", ckpt, "--device", "cpu",
                   "--confidence", "conf.png", "--source", "src.tif")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    out = imageio.read_image(tmp_path / "out.png")
    assert out.shape == (80, 96) and out.dtype == np.uint16
    expected = napari_refsr.upscale_nd(model, lr, [ref_a, ref_b], spatial_axes=(0, 1), device="cpu")
    np.testing.assert_allclose(out.astype(np.int64), expected.image.astype(np.int64), atol=2)

    conf = imageio.read_image(tmp_path / "conf.png")
    assert conf.shape == (80, 96) and conf.dtype == np.uint8
    want, window = confidence.to_uint8(expected.confidence)
    np.testing.assert_allclose(conf, want, atol=1)
    assert conf.min() <= 1 and conf.std() > 0  # black at the map's lowest S (white is S = 1)
    with Image.open(tmp_path / "conf.png") as im:  # the mapping travels with the file
        assert im.info["Description"] == window.describe()
    # every file written is reported, the confidence with its mapping
    wrote = [line for line in proc.stderr.splitlines() if line.startswith("refsr: wrote ")]
    assert [line.split()[2] for line in wrote] == ["out.png", "conf.png", "src.tif"], proc.stderr
    assert wrote[1].endswith(window.describe()) and "(80, 96) uint8" in wrote[1]

    src = imageio.read_image(tmp_path / "src.tif")
    assert src.shape == (20, 24, 3) and src.dtype == np.int32
    np.testing.assert_array_equal(src, expected.source)
    assert set(np.unique(src[..., 0])) <= {0, 1}
    for k, ref in enumerate((ref_a, ref_b)):
        rows, cols = src[..., 1][src[..., 0] == k], src[..., 2][src[..., 0] == k]
        assert (rows >= 0).all() and (rows < ref.shape[0]).all()
        assert (cols >= 0).all() and (cols < ref.shape[1]).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "conf.png", "lr.png", "out.png", "ref_a.tif", "ref_b.png", "src.tif"]


def test_multipage_rgb_tiff_stack_with_progress_bar(tmp_path, ckpt, model, on_terminal):
    pages = np.stack([_smooth(20, 24, 3), _smooth(20, 24, 3)])
    ref = _smooth(48, 52, 3)
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="rgb", resolution=(3.0, 3.0),
                     resolutionunit="CENTIMETER")
    imageio.write_image(tmp_path / "ref.png", ref)

    # stderr on a pseudo-terminal, so the progress bar is drawn
    proc, tty_text = on_terminal(lambda fd: run_cli(
        tmp_path, "upscale", "stack.tif", "ref.png", "-o", "out.tif", "--model", ckpt, "--device", "cpu",
        "--tile", "64", "--confidence", "conf.tif", stderr=fd))
    assert proc.returncode == 0, tty_text
    # every phase says what it does; each slice's single tile gets a bar that starts at 0/1 (so
    # no bogus first rate) and ends at 1/1; the slice is named
    for text in ("loading model", "encoding references", "searching", "running tiles", "0/1", "1/1",
                 "slice 1 of 2", "slice 2 of 2"):
        assert text in tty_text, (text, tty_text)
    first_tiles = tty_text[tty_text.index("running tiles"):][:120]
    assert "0/1" in first_tiles and "1/1" not in first_tiles, first_tiles

    out, meta = imageio.read_image_with_meta(tmp_path / "out.tif")
    assert out.shape == (2, 80, 96, 3) and out.dtype == np.uint8
    assert meta["is_stack"] and meta["resolution"] == pytest.approx((12.0, 12.0))
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert len(tif.pages) == 2
    for z in range(2):  # uint8 slices are independent: each page equals upscaling that page alone
        alone = napari_refsr.upscale(model, pages[z], ref, device="cpu")
        np.testing.assert_allclose(out[z].astype(int), alone.astype(int), atol=1)
    conf = imageio.read_image(tmp_path / "conf.tif")
    assert conf.shape == (2, 80, 96) and conf.dtype == np.float32
    raw = napari_refsr.upscale_nd(model, pages, ref, spatial_axes=(1, 2), channel_axis=3, tile=64, device="cpu")
    np.testing.assert_allclose(conf, raw.confidence, atol=1e-6)  # TIFF keeps the raw S
    assert conf.max() <= 1.0


def test_help_does_not_import_torch(tmp_path):
    """``refsr --help`` (and every usage error) stays quick: the parser needs no torch or numpy."""
    code = ("import sys\nfrom napari_refsr.cli import main\ntry:\n    main(['upscale', '--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(tmp_path),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert "--tile" in proc.stdout


def test_weights_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    assert cli.main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, spec in weights.REGISTRY.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert ("packaged" if spec.packaged else "not downloaded") in row
    # a file in the cache (of any content: listing does not verify) shows as cached, with its path
    first = next(name for name, spec in weights.REGISTRY.items() if spec.packaged is None)
    cached = weights.weights_path(first)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"x")
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(first + " "))
    assert "cached" in row and "not downloaded" not in row
    assert str(cached) in out


def test_failure_in_a_real_process_is_one_line_and_non_zero(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"this is not a checkpoint" * 10)
    imageio.write_image(tmp_path / "lr.png", _smooth(20, 20))
    imageio.write_image(tmp_path / "ref.png", _smooth(40, 40))
    proc = run_cli(tmp_path, "upscale", "lr.png", "ref.png", "-o", "out.png", "--model", "bad.pt",
                   "--device", "cpu")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refsr: error: ") and "bad.pt" in lines[0], proc.stderr
    assert not (tmp_path / "out.png").exists()


# ----------------------------------------------------------------------------------- bad input


def _prepare_bad(tmp_path: Path, case: str, ckpt: Path) -> tuple[list[str], str]:
    """Files for one bad-input case; returns (arguments after 'upscale', word the message must contain)."""
    good_lr, good_ref = _smooth(20, 20), _smooth(40, 40)
    imageio.write_image(tmp_path / "lr.png", good_lr)
    imageio.write_image(tmp_path / "ref.png", good_ref)
    lr, ref, extra, word = "lr.png", "ref.png", [], None
    if case == "missing LR":
        lr, word = "nope.png", "nope.png"
    elif case == "missing reference":
        ref, word = "gone.png", "gone.png"
    elif case == "corrupt image":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
        lr, word = "broken.png", "broken.png"
    elif case == "wrong channel count":
        tifffile.imwrite(tmp_path / "two.tif", np.zeros((20, 20, 2), np.uint8), photometric="minisblack",
                         planarconfig="contig")
        lr, word = "two.tif", "two.tif must be (H, W)"
    elif case == "NaN float TIFF":
        data = _smooth(20, 20).astype(np.float32)
        data[3, 4] = np.nan
        imageio.write_image(tmp_path / "nan.tif", data)
        lr, word = "nan.tif", "nan.tif contains NaN"
    elif case == "tiny image":
        imageio.write_image(tmp_path / "tiny.png", np.zeros((3, 3), np.uint8))
        lr, word = "tiny.png", "too small"
    elif case == "tiny reference":
        imageio.write_image(tmp_path / "tinyref.png", np.zeros((6, 6), np.uint8))
        ref, word = "tinyref.png", "small"
    elif case == "stack as reference":
        imageio.write_image(tmp_path / "refs.tif", np.stack([good_ref, good_ref]))
        ref, word = "refs.tif", "stack"
    elif case == "corrupt checkpoint":
        (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
        extra, word = ["--model", "bad.pt"], "bad.pt"
    elif case == "unknown model name":
        extra, word = ["--model", "no-such-model"], "no-such-model"
    elif case == "float LR to PNG":
        imageio.write_image(tmp_path / "f.tif", good_lr.astype(np.float32))
        lr, word = "f.tif", ".tif"
    elif case == "source map to PNG":
        extra, word = ["--source", "src.png"], "src.png"
    elif case == "output directory missing":
        return [lr, ref, "-o", "no_dir/out.png", "--model", str(ckpt), "--device", "cpu"], "does not exist"
    if not any(a == "--model" for a in extra):
        extra += ["--model", str(ckpt)]
    return [lr, ref, "-o", "out.png", "--device", "cpu", *extra], word


BAD_CASES = ["missing LR", "missing reference", "corrupt image", "wrong channel count", "NaN float TIFF",
             "tiny image", "tiny reference", "stack as reference", "corrupt checkpoint", "unknown model name",
             "float LR to PNG", "source map to PNG", "output directory missing"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, ckpt, case):
    args, word = _prepare_bad(tmp_path, case, ckpt)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    before = {p.name for p in tmp_path.iterdir()}
    status = cli.main(["upscale", *args])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("refsr: error: ") and word in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert {p.name for p in tmp_path.iterdir()} == before  # no output, no temp file


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["upscale", "lr.png"])  # no reference, no -o
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refsr: error: ")
    with pytest.raises(SystemExit) as info:
        cli.main(["upscale", "a.png", "b.png", "-o", "c.png", "--tile", "-3"])
    assert info.value.code == 2 and "--tile" in capsys.readouterr().err


def test_weights_fetch_unknown_name(capsys):
    assert cli.main(["weights", "fetch", "no-such-weights"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-weights" in err[0] and "ttsr-rec" in err[0]


def test_failed_late_write_removes_earlier_outputs(tmp_path, monkeypatch, capsys, ckpt):
    """If the confidence map cannot be written, the already written image is removed too."""
    imageio.write_image(tmp_path / "lr.png", _smooth(20, 20))
    imageio.write_image(tmp_path / "ref.png", _smooth(40, 40))
    monkeypatch.chdir(tmp_path)
    real = imageio.write_image

    def flaky(path, array, *, meta=None):
        if str(path).startswith("conf"):
            raise OSError(28, "No space left on device", str(path))
        return real(path, array, meta=meta)

    monkeypatch.setattr(imageio, "write_image", flaky)
    status = cli.main(["upscale", "lr.png", "ref.png", "-o", "out.png", "--confidence", "conf.tif",
                       "--model", str(ckpt), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "No space left" in err[0] and "conf.tif" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png", "ref.png"]


def test_search_flag_runs_the_coarse_search(tmp_path, ckpt, model, capsys):
    """``--search coarse`` writes upscale_nd's coarse-to-fine result (not the exact one); an
    unknown mode is a usage error naming the option."""
    lr, ref = _smooth(24, 28, channels=3), _smooth(72, 80, channels=3)
    imageio.write_image(tmp_path / "lr.png", lr)
    imageio.write_image(tmp_path / "ref.png", ref)
    args = ["upscale", str(tmp_path / "lr.png"), str(tmp_path / "ref.png"), "-o", str(tmp_path / "out.png"),
            "--model", str(ckpt), "--device", "cpu", "--quiet"]
    assert cli.main([*args, "--search", "coarse"]) == 0
    out = imageio.read_image(tmp_path / "out.png")
    options = dict(spatial_axes=(0, 1), channel_axis=2, device="cpu")
    coarse = napari_refsr.upscale_nd(model, lr, ref, search="coarse", **options).image
    exact = napari_refsr.upscale_nd(model, lr, ref, **options).image
    np.testing.assert_array_equal(out, coarse)
    assert not np.array_equal(coarse, exact)
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--search", "fast"])
    assert info.value.code == 2 and "--search" in capsys.readouterr().err
