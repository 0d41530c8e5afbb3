"""Read and write PNG, JPEG and TIFF images as numpy arrays, keeping dtype, stacks and metadata.

Layout conventions (what the rest of the package expects):

* A 2D image is ``(H, W)`` (grayscale) or ``(H, W, C)`` with ``C`` in 3 (RGB) or 4 (RGBA).
* PNG/JPEG (Pillow): ``L``/``1`` → ``(H, W)`` uint8; 16-bit grayscale → ``(H, W)`` uint16; ``F`` →
  float32; palette images → RGB, or RGBA when the palette has transparency. Gray + alpha (``LA``)
  becomes **RGBA** (the gray replicated): the pipeline knows alpha only as the 4th channel of RGBA,
  and a ``(H, W, 2)`` array would be ambiguous. JPEG EXIF orientation is applied. Pillow reads
  16-bit RGB(A) PNGs as 8-bit; that case is reported with a warning (convert to TIFF to keep 16 bits).
* TIFF (tifffile): the dtype is kept; samples per pixel (``S``) are moved last; a multi-page file is
  a stack ``(Z, Y, X[, C])`` (any leading axes are kept as they are, ``meta["axes"]`` names them).

Writing picks the format from the extension. PNG takes uint8 gray/RGB/RGBA and uint16 gray; JPEG
takes uint8 gray/RGB. Everything else (uint16 RGB, float, int32, stacks) is refused with an error
that suggests ``.tif`` — we never rescale intensities silently. Writes are atomic: the data go to a
temporary file in the target directory that replaces the target only when complete.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import RefSRError
from .files import atomic_write
from .tempfiles import make_temp

__all__ = [
    "read_image",
    "read_image_with_meta",
    "write_image",
    "check_writable",
    "upscaled_meta",
    "image_format",
    "SUFFIXES",
]

#: extension → format written
SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)

JPEG_QUALITY = 95


# ----------------------------------------------------------------------------------------- reading


def image_format(path: str | os.PathLike) -> str:
    """'png', 'jpeg' or 'tiff' from the file's first bytes (the extension may lie); else RefSRError."""
    p = Path(path)
    if not p.exists():
        raise RefSRError(f"image file not found: {p}")
    if p.is_dir():
        raise RefSRError(f"{p} is a directory, not an image file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise RefSRError(f"cannot read {p}: {err.strerror or err}") from None
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if not head:
        raise RefSRError(f"cannot read {p}: the file is empty")
    raise RefSRError(f"cannot read {p}: not a PNG, JPEG or TIFF image")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG, JPEG or TIFF file into a numpy array (see the module docstring for layouts)."""
    return read_image_with_meta(path)[0]


def read_image_with_meta(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image and the metadata needed to write a result back the same way.

    ``meta`` keys: ``format`` ('png' | 'jpeg' | 'tiff'), ``axes`` (one letter per array axis,
    'Y'/'X' spatial, 'S' samples, others stack axes), ``is_stack`` (more than one 2D image),
    ``has_channels`` (last axis is samples), and for TIFF ``resolution`` ((x, y) pixels per unit)
    and ``resolution_unit`` when the file sets them.
    """
    p = Path(path)
    fmt = image_format(p)
    try:
        if fmt == "tiff":
            array, meta = _read_tiff(p)
        else:
            array, meta = _read_pillow(p, fmt)
    except RefSRError:
        raise
    except MemoryError:
        raise RefSRError(f"cannot read {p}: not enough memory for this image") from None
    except Exception as err:  # any decoder failure means the file is unreadable
        raise RefSRError(f"cannot read {p}: {_reason(err)}") from None
    if array.size == 0:
        raise RefSRError(f"cannot read {p}: the image is empty")
    meta["format"] = fmt
    return array, meta


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"corrupt or unsupported image ({text})"


def _read_pillow(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if fmt == "png" and _png_is_rgb16(path):
            warnings.warn(
                f"{path} is a 16-bit colour PNG, which Pillow reads as 8-bit; save it as TIFF to keep 16 bits",
                UserWarning,
                stacklevel=3,
            )
        im.load()
        if fmt == "jpeg":
            im = ImageOps.exif_transpose(im)
        array = _pillow_to_array(im)
    axes = "YX" if array.ndim == 2 else "YXS"
    return array, {"axes": axes, "is_stack": False, "has_channels": array.ndim == 3}


def _png_is_rgb16(path: Path) -> bool:
    """True for a 16-bit RGB/RGBA PNG (IHDR bit depth 16, colour type 2 or 6)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _pillow_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im).copy()
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit integer; PNG stores at most 16 bits
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.int32)
    if mode == "F":
        return np.asarray(im).astype(np.float32)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if mode == "LA":
        return np.asarray(im.convert("RGBA"))
    # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return np.asarray(im.convert("RGB"))


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise RefSRError(f"cannot read {path}: the TIFF file has no images")
        series = tif.series[0]
        axes = series.axes
        array = series.asarray()
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        resolution = getattr(page, "resolution", None)
        unit = int(getattr(page, "resolutionunit", 1) or 1)
        planar_rgb = axes.startswith("S") and int(getattr(page, "photometric", 0) or 0) == 2  # RGB
    if planar_rgb:
        warnings.warn(_planar_rgb_note(path, array.shape), UserWarning, stacklevel=4)
    if len(axes) != array.ndim:  # defensive: tifffile axes and shape always agree in practice
        axes = "Q" * (array.ndim - 2) + "YX"
    if "S" in axes and axes[-1] != "S":  # planar configuration: samples first → last
        s = axes.index("S")
        array = np.moveaxis(array, s, -1)
        axes = axes[:s] + axes[s + 1 :] + "S"
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    has_channels = axes.endswith("S")
    meta: dict[str, Any] = {
        "axes": axes,
        "has_channels": has_channels,
        "is_stack": array.ndim > (3 if has_channels else 2),
    }
    if resolution and (unit != 1 or tuple(resolution) != (1.0, 1.0)):
        meta["resolution"] = (float(resolution[0]), float(resolution[1]))
        meta["resolution_unit"] = unit
    return array, meta


def _planar_rgb_note(path: Path, shape: tuple[int, ...]) -> str:
    """Why a (3, H, W) stack may come back as one colour image."""
    return (f"{path} is tagged RGB with separate colour planes (shape {tuple(shape)}), as tifffile saves "
            f"a (3, H, W) or (4, H, W) array by default, so it is read as one colour image; if the planes are "
            f"a Z/T stack, save it with tifffile.imwrite(..., photometric='minisblack')")


def upscaled_meta(meta: dict[str, Any] | None, scale: int | float) -> dict[str, Any]:
    """A copy of ``meta`` for an image ``scale`` times larger: pixels per unit × scale.

    (The physical pixel size is divided by ``scale``, so the upscaled image covers the same area.)
    """
    out = dict(meta or {})
    if out.get("resolution"):
        x, y = out["resolution"]
        out["resolution"] = (float(x) * scale, float(y) * scale)
    return out


# ----------------------------------------------------------------------------------------- writing


def _axes_for(shape: tuple[int, ...], meta: dict[str, Any] | None) -> str:
    """Axis letters for an array to write: meta's when they fit, else guessed from the shape."""
    axes = (meta or {}).get("axes")
    if isinstance(axes, str) and len(axes) == len(shape):
        return axes
    ndim = len(shape)
    if ndim < 2:
        return "?" * ndim
    if ndim == 2:
        return "YX"
    channels = (meta or {}).get("has_channels")
    if channels is None:
        channels = shape[-1] in (1, 3, 4)
    if channels:
        return "Q" * (ndim - 3) + "YXS"
    return "Q" * (ndim - 2) + "YX"


def _plan(path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: dict[str, Any] | None) -> tuple[str, str]:
    """Check that ``shape``/``dtype`` can be written to ``path``; return (format, axes)."""
    if path.is_dir():
        raise RefSRError(f"cannot write {path}: it is a directory; give a file name such as {path / 'out.tif'}")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise RefSRError(f"cannot write {path}: unsupported extension {path.suffix or '(none)'!r}; use .png, .jpg or .tif")
    if not path.parent.is_dir():
        raise RefSRError(f"cannot write {path}: the directory {path.parent} does not exist")
    dtype = np.dtype(dtype)
    if len(shape) < 2 or 0 in shape:
        raise RefSRError(f"cannot write {path}: shape {tuple(shape)} is not an image")
    axes = _axes_for(tuple(shape), meta)
    if fmt == "tiff":
        if dtype.kind not in "uifb":
            raise RefSRError(f"cannot write {path}: unsupported dtype {dtype}")
        return fmt, axes
    what = fmt.upper()
    channels = shape[-1] if axes.endswith("S") else 0
    spatial_ndim = 3 if channels else 2
    if len(shape) > spatial_ndim:
        raise RefSRError(f"cannot write {path}: a stack of shape {tuple(shape)} can only be saved as TIFF; use .tif")
    if channels not in (0, 1, 3, 4) or (fmt == "jpeg" and channels == 4):
        allowed = "gray or RGB" if fmt == "jpeg" else "gray, RGB or RGBA"
        raise RefSRError(f"cannot write {path}: {what} holds {allowed} images, not {channels} channels; use .tif")
    if dtype == np.uint8 or dtype == np.bool_:
        return fmt, axes
    if dtype == np.uint16 and fmt == "png" and channels in (0, 1):
        return fmt, axes
    kind = "16-bit colour" if dtype == np.uint16 else f"{dtype}"
    raise RefSRError(
        f"cannot write {path}: {what} cannot store {kind} images without losing values; use .tif"
    )


def check_writable(
    path: str | os.PathLike, shape: tuple[int, ...], dtype, *, meta: dict[str, Any] | None = None
) -> None:
    """Raise the RefSRError that ``write_image`` would raise for an array of this shape and dtype.

    Front ends call it before long work so that a bad output name — or a folder this process may
    not write to — fails at once, not after minutes of computation.
    """
    p = Path(path)
    _plan(p, tuple(int(s) for s in shape), np.dtype(dtype), meta)
    try:  # a real probe: permission bits say nothing for root, read-only mounts or quotas
        make_temp(p).unlink()
    except OSError as err:
        raise RefSRError(f"cannot write {p}: the folder {p.parent} is not writable "
                         f"({err.strerror or err})") from None


def write_image(path: str | os.PathLike, array, *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``array`` to ``path`` (format from the extension) atomically; return the path.

    ``meta`` (as from ``read_image_with_meta``, or ``upscaled_meta`` of it) supplies the axis letters
    (whether the last axis is channels, which axes are a stack) and, for TIFF, the resolution.
    Extra key ``photometric`` ('rgb' | 'minisblack') overrides the TIFF colour interpretation;
    ``description`` (text) goes into a PNG's ``Description`` text chunk or a JPEG's comment.
    """
    p = Path(path)
    arr = np.asarray(array)
    fmt, axes = _plan(p, arr.shape, arr.dtype, meta)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    try:
        if fmt == "tiff":
            atomic_write(p, lambda f: _write_tiff(f, arr, axes, meta or {}))
        else:
            atomic_write(p, lambda f: _write_pillow(f, arr, axes, fmt, (meta or {}).get("description")))
    except OSError as err:
        raise RefSRError(f"cannot write {p}: {err.strerror or err}") from None
    return p


def _write_pillow(f: BinaryIO, arr: np.ndarray, axes: str, fmt: str, description: str | None = None) -> None:
    from PIL import Image, PngImagePlugin

    if axes.endswith("S") and arr.shape[-1] == 1:
        arr = arr[..., 0]
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    im = Image.fromarray(arr)  # uint16 (H, W) → mode I;16, written as a 16-bit PNG
    options: dict[str, Any] = {"quality": JPEG_QUALITY} if fmt == "jpeg" else {}
    if description and fmt == "jpeg":
        options["comment"] = description
    elif description:
        info = PngImagePlugin.PngInfo()
        info.add_text("Description", description)
        options["pnginfo"] = info
    im.save(f, format="JPEG" if fmt == "jpeg" else "PNG", **options)


def _write_tiff(f: BinaryIO, arr: np.ndarray, axes: str, meta: dict[str, Any]) -> None:
    import tifffile

    kwargs: dict[str, Any] = {}
    if axes.endswith("S"):
        channels = arr.shape[-1]
        photometric = meta.get("photometric") or ("rgb" if channels in (3, 4) else "minisblack")
        kwargs["photometric"] = photometric
        kwargs["planarconfig"] = "contig"
        if photometric == "rgb" and channels == 4:
            kwargs["extrasamples"] = ["unassalpha"]
        if channels == 1:
            arr = arr[..., 0]
            axes = axes[:-1]
            kwargs.pop("planarconfig")
    else:
        kwargs["photometric"] = "minisblack"
    if arr.ndim > 2 and axes.isalpha() and axes.isupper():
        kwargs["metadata"] = {"axes": axes}  # stack axis names (Z, T, C, …) survive a round trip
    if meta.get("resolution"):
        kwargs["resolution"] = tuple(float(v) for v in meta["resolution"])
        kwargs["resolutionunit"] = int(meta.get("resolution_unit", 1) or 1)
    tifffile.imwrite(f, arr, **kwargs)
