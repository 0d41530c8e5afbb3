"""Round trips, layouts, atomic writes and read errors of napari_refsr.imageio on real files."""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_refsr import imageio
from napari_refsr.errors import RefSRError

RNG = np.random.default_rng(1234)


def _rand(shape, dtype):
    if np.dtype(dtype).kind == "f":
        return RNG.normal(100.0, 30.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".part")]


@pytest.mark.parametrize(
    "name, shape, dtype, axes",
    [
        ("gray8.png", (23, 31), np.uint8, "YX"),
        ("gray16.png", (23, 31), np.uint16, "YX"),
        ("rgb8.png", (23, 31, 3), np.uint8, "YXS"),
        ("rgba8.png", (23, 31, 4), np.uint8, "YXS"),
        ("gray16.tif", (23, 31), np.uint16, "YX"),
        ("rgb16.tiff", (23, 31, 3), np.uint16, "YXS"),
        ("rgba16.tif", (23, 31, 4), np.uint16, "YXS"),
        ("float32.tif", (23, 31), np.float32, "YX"),
        ("stack16.tif", (5, 23, 31), np.uint16, "QYX"),
        ("stack_rgb8.tif", (3, 23, 31, 3), np.uint8, "QYXS"),
    ],
)
def test_round_trip_keeps_values_dtype_and_layout(tmp_path, name, shape, dtype, axes):
    data = _rand(shape, dtype)
    path = tmp_path / name
    assert imageio.write_image(path, data) == path
    back, meta = imageio.read_image_with_meta(path)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, data)
    assert meta["axes"] == axes
    assert meta["is_stack"] == ("Q" in axes)
    assert meta["has_channels"] == axes.endswith("S")
    assert meta["format"] == ("png" if name.endswith(".png") else "tiff")
    assert _leftovers(tmp_path) == []


def test_stack_axis_names_survive_a_round_trip(tmp_path):
    data = _rand((2, 3, 16, 20), np.uint16)
    meta = {"axes": "ZCYX", "has_channels": False}
    imageio.write_image(tmp_path / "h.tif", data, meta=meta)
    back, got = imageio.read_image_with_meta(tmp_path / "h.tif")
    np.testing.assert_array_equal(back, data)
    assert got["axes"] == "ZCYX" and got["is_stack"]


def test_tiff_planar_samples_are_moved_last(tmp_path):
    planar = _rand((3, 20, 24), np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    with pytest.warns(UserWarning, match="separate colour planes"):  # read as colour, and it says so
        back, meta = imageio.read_image_with_meta(tmp_path / "planar.tif")
    assert back.shape == (20, 24, 3) and meta["axes"] == "YXS"
    np.testing.assert_array_equal(back, np.moveaxis(planar, 0, -1))


def test_big_endian_tiff_comes_back_native(tmp_path):
    data = _rand((16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">")
    back = imageio.read_image(tmp_path / "be.tif")
    assert back.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(back, data)


def test_tiff_resolution_is_read_and_scaled_for_the_upscaled_image(tmp_path):
    data = _rand((2, 12, 10), np.uint16)
    tifffile.imwrite(tmp_path / "res.tif", data, resolution=(2.5, 4.0), resolutionunit="CENTIMETER")
    _, meta = imageio.read_image_with_meta(tmp_path / "res.tif")
    assert meta["resolution"] == pytest.approx((2.5, 4.0))
    scaled = imageio.upscaled_meta(meta, 4)
    assert scaled["resolution"] == pytest.approx((10.0, 16.0))
    assert meta["resolution"] == pytest.approx((2.5, 4.0))  # the original is not modified
    imageio.write_image(tmp_path / "big.tif", np.zeros((2, 48, 40), np.uint16), meta=scaled)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        assert page.resolution == pytest.approx((10.0, 16.0))
        assert int(page.resolutionunit) == 3  # centimetre
        assert len(tif.pages) == 2
    _, plain = imageio.read_image_with_meta(tmp_path / "big.tif")
    assert plain["resolution"] == pytest.approx((10.0, 16.0))


def test_tiff_without_resolution_has_none_in_meta(tmp_path):
    imageio.write_image(tmp_path / "a.tif", _rand((8, 8), np.uint8))
    assert "resolution" not in imageio.read_image_with_meta(tmp_path / "a.tif")[1]
    assert imageio.upscaled_meta(None, 4) == {}


def test_jpeg_read_gray_and_rgb(tmp_path):
    yy, xx = np.mgrid[0:40, 0:48]
    rgb = np.stack([yy * 5, xx * 4, (yy + xx) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpeg", quality=95)
    color, meta = imageio.read_image_with_meta(tmp_path / "c.jpg")
    gray = imageio.read_image(tmp_path / "g.jpeg")
    assert color.shape == (40, 48, 3) and color.dtype == np.uint8 and meta["format"] == "jpeg"
    assert gray.shape == (40, 48) and gray.dtype == np.uint8
    assert np.abs(color.astype(int) - rgb).mean() < 3  # lossy, but the same picture
    assert np.abs(gray.astype(int) - rgb[..., 0]).mean() < 3


def test_jpeg_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotates 90° clockwise
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = imageio.read_image(tmp_path / "rot.jpg")
    assert arr.shape == (40, 20, 3)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50  # the white half is now on top


def test_jpeg_write_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    gray = (yy * 4 + xx * 3).astype(np.uint8)
    imageio.write_image(tmp_path / "o.jpg", gray)
    back = imageio.read_image(tmp_path / "o.jpg")
    assert back.shape == gray.shape and np.abs(back.astype(int) - gray).mean() < 2


def test_pillow_modes_are_mapped_sensibly(tmp_path):
    la = np.stack([_rand((10, 12), np.uint8), _rand((10, 12), np.uint8)], axis=-1)
    Image.fromarray(la).save(tmp_path / "la.png")
    rgba = imageio.read_image(tmp_path / "la.png")
    assert rgba.shape == (10, 12, 4)  # gray + alpha → RGBA, gray replicated
    for c in range(3):
        np.testing.assert_array_equal(rgba[..., c], la[..., 0])
    np.testing.assert_array_equal(rgba[..., 3], la[..., 1])

    pal = Image.fromarray(_rand((10, 12), np.uint8) % 4).convert("P")
    pal.save(tmp_path / "p.png")
    assert imageio.read_image(tmp_path / "p.png").shape == (10, 12, 3)
    pal.save(tmp_path / "pt.png", transparency=0)
    assert imageio.read_image(tmp_path / "pt.png").shape == (10, 12, 4)

    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "b.png")
    bits = imageio.read_image(tmp_path / "b.png")
    assert bits.dtype == np.uint8 and set(np.unique(bits)) == {0, 255}


def _png_rgb16(path, data):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = data.shape
    raw = b"".join(b"\x00" + data[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)


def test_16_bit_colour_png_warns_that_it_is_read_as_8_bit(tmp_path):
    data = _rand((6, 7, 3), np.uint16)
    _png_rgb16(tmp_path / "c16.png", data)
    with pytest.warns(UserWarning, match="16-bit colour PNG"):
        arr = imageio.read_image(tmp_path / "c16.png")
    assert arr.shape == (6, 7, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, (data >> 8).astype(np.uint8))


def test_format_comes_from_content_not_extension(tmp_path):
    data = _rand((9, 11), np.uint16)
    tifffile.imwrite(tmp_path / "really_a_tiff.png", data)
    back, meta = imageio.read_image_with_meta(tmp_path / "really_a_tiff.png")
    assert meta["format"] == "tiff"
    np.testing.assert_array_equal(back, data)


# -------------------------------------------------------------------------------- write refusals


@pytest.mark.parametrize(
    "name, shape, dtype, match",
    [
        ("f.png", (8, 8), np.float32, r"float32.*\.tif"),
        ("rgb16.png", (8, 8, 3), np.uint16, r"16-bit colour.*\.tif"),
        ("stack.png", (2, 8, 9), np.uint8, r"stack.*\.tif"),
        ("rgba.jpg", (8, 8, 4), np.uint8, r"JPEG.*gray or RGB"),
        ("g16.jpg", (8, 8), np.uint16, r"JPEG.*\.tif"),
        ("i32.png", (8, 8), np.int32, r"int32.*\.tif"),
        ("img.bmp", (8, 8), np.uint8, r"unsupported extension '\.bmp'"),
        ("noext", (8, 8), np.uint8, r"unsupported extension"),
    ],
)
def test_unwritable_combinations_raise_and_leave_nothing(tmp_path, name, shape, dtype, match):
    arr = np.zeros(shape, dtype)
    with pytest.raises(RefSRError, match=match):
        imageio.check_writable(tmp_path / name, shape, dtype)
    with pytest.raises(RefSRError, match=match):
        imageio.write_image(tmp_path / name, arr)
    assert os.listdir(tmp_path) == []


def test_missing_output_directory_is_reported(tmp_path):
    target = tmp_path / "nope" / "o.png"
    with pytest.raises(RefSRError, match="does not exist"):
        imageio.write_image(target, np.zeros((4, 4), np.uint8))


def test_failed_tiff_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    old = _rand((8, 8), np.uint16)
    imageio.write_image(target, old)
    before = target.read_bytes()

    def broken_imwrite(fh, data, **kwargs):  # gets the open temp file
        fh.write(b"II*\x00 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RefSRError, match="out.tif.*No space left"):
        imageio.write_image(target, _rand((4, 8, 8), np.uint16))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.tif"]


def test_failed_png_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "new.png"

    def broken_save(self, fp, *args, **kwargs):  # gets the open temp file
        fp.write(b"\x89PNG\r\n\x1a\n truncated")
        raise ValueError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ValueError, match="encoder exploded"):
        imageio.write_image(target, _rand((8, 8), np.uint8))
    assert os.listdir(tmp_path) == []


def test_write_replaces_existing_file(tmp_path):
    target = tmp_path / "x.png"
    imageio.write_image(target, np.zeros((6, 6), np.uint8))
    new = _rand((6, 6), np.uint8)
    imageio.write_image(target, new)
    np.testing.assert_array_equal(imageio.read_image(target), new)
    assert os.listdir(tmp_path) == ["x.png"]


# -------------------------------------------------------------------------------- read errors


def test_read_errors_name_the_file(tmp_path):
    cases = {}
    cases["missing.png"] = ("not found", None)
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = ("empty", None)
    (tmp_path / "text.png").write_text("hello, I am not an image")
    cases["text.png"] = ("not a PNG, JPEG or TIFF", None)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    cases["corrupt.png"] = ("corrupt", None)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 50)
    cases["corrupt.jpg"] = ("corrupt", None)
    tifffile.imwrite(tmp_path / "whole.tif", _rand((64, 64), np.uint16))
    (tmp_path / "trunc.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:300])
    cases["trunc.tif"] = ("corrupt", None)
    (tmp_path / "adir.png").mkdir()
    cases["adir.png"] = ("directory", None)
    for name, (words, _) in cases.items():
        with pytest.raises(RefSRError) as info:
            imageio.read_image(tmp_path / name)
        message = str(info.value)
        assert name in message and words in message, message
        assert "\n" not in message


def test_three_plane_tiff_tagged_rgb_says_it_is_read_as_colour(tmp_path):
    planes = _rand((3, 10, 12), np.uint8)
    # what tifffile.imwrite(path, planes) does with its defaults (explicit: the defaults may change)
    tifffile.imwrite(tmp_path / "planes.tif", planes, photometric="rgb", planarconfig="separate")
    with pytest.warns(UserWarning, match=r"tagged RGB with separate colour planes.*photometric='minisblack'"):
        arr, meta = imageio.read_image_with_meta(tmp_path / "planes.tif")
    assert arr.shape == (10, 12, 3) and meta["has_channels"] and not meta["is_stack"]
    np.testing.assert_array_equal(np.moveaxis(arr, -1, 0), planes)
    # saved as grey planes it is a 3-slice stack, without a warning
    tifffile.imwrite(tmp_path / "stack.tif", planes, photometric="minisblack")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr, meta = imageio.read_image_with_meta(tmp_path / "stack.tif")
    assert arr.shape == (3, 10, 12) and meta["is_stack"] and not meta["has_channels"]
    # an interleaved RGB TIFF is plainly colour: no warning either
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(planes, 0, -1), photometric="rgb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert imageio.read_image(tmp_path / "rgb.tif").shape == (10, 12, 3)
