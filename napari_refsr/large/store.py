"""Big images on disk: OME-Zarr, plain zarr and (tiled) TIFF read lazily; OME-Zarr written with a
multiscale pyramid by ome-zarr-py, under a temporary name renamed into place only when complete.

Axes are one letter each: ``T``, ``C``, ``Z``, ``Y``, ``X``, ``S`` (TIFF samples), others as
tifffile names them. OME-Zarr stores ``t, c, z, y, x`` (a subset, in that order); a TIFF's ``S`` and
``C`` become ``c``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import dask
import dask.array as da
import numpy as np
import zarr

from ..errors import RefSRError
from .paths import ZARR_METADATA

__all__ = ["Source", "open_image", "layout", "check_target", "write_ome_zarr", "open_levels",
           "ome_order",
           "PYRAMID_MIN"]

PYRAMID_MIN = 128  # the pyramid halves Y and X while the larger side stays at least this big
_OME = "tczyx"
_TO_OME = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
_UNIT_UM = {2: 25400.0, 3: 10000.0}  # TIFF resolution unit (inch, cm) in micrometres


@dataclass
class Source:
    """A lazily read image: its data, axis letters and, where known, physical pixel sizes."""

    data: da.Array
    axes: str
    scale: dict[str, float] = field(default_factory=dict)  # axis letter → pixel size
    units: dict[str, str] = field(default_factory=dict)  # axis letter → unit name
    path: str = ""


class _TiffArray:
    """A TIFF's first series as a lazily read array-like; picklable (each process opens the file)."""

    def __init__(self, path: str, shape, dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["path"], state["shape"], state["dtype"])

    def __getitem__(self, key):
        with self._lock:
            if self._array is None:
                import tifffile

                z = zarr.open(tifffile.imread(self.path, aszarr=True, series=0, level=0), mode="r")
                self._array = z
        return np.asarray(self._array[key])


def _open_tiff(path: Path) -> Source:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise RefSRError(f"cannot read {path}: the TIFF file has no images")
            series = tif.series[0]
            axes, shape, dtype = series.axes, series.shape, series.dtype
            page = series.pages[0] if series.pages else tif.pages[0]
            resolution = getattr(page, "resolution", None)
            unit = int(getattr(page, "resolutionunit", 1) or 1)
            chunks = tuple(getattr(page, "chunks", ()) or ())
    except RefSRError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unreadable
        raise RefSRError(f"cannot read {path}: {_first_line(err)}") from None
    arr = _TiffArray(str(path), shape, dtype)
    spatial = {a: c for a, c in zip("YX", chunks[-2:] if len(chunks) >= 2 else ())}
    chunk = tuple(max(spatial.get(a, 1024), 256) if a in "YX" else (s if a == "S" else 1)
                  for a, s in zip(axes, shape))
    scale, units = {}, {}
    if resolution and unit in _UNIT_UM and all(resolution):
        for letter, res in zip("XY", resolution):
            scale[letter], units[letter] = _UNIT_UM[unit] / float(res), "micrometer"
    return Source(da.from_array(arr, chunks=chunk, asarray=False, name=f"tiff-{uuid.uuid4().hex}"),
                  axes, scale, units, str(path))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _open_zarr(path: Path) -> Source:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - not a zarr store, or a broken one
        raise RefSRError(f"cannot read {path}: not a readable zarr store ({_first_line(err)})") from None
    if isinstance(node, zarr.Array):
        axes = "YX" if node.ndim == 2 else ("YXS" if node.shape[-1] in (3, 4) else "Q" * (node.ndim - 2) + "YX")
        if node.ndim < 2:
            raise RefSRError(f"cannot read {path}: a {node.ndim}D array is not an image")
        return Source(da.from_zarr(node), axes, path=str(path))
    attrs = dict(node.attrs)
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not multiscales:
        raise RefSRError(f"cannot read {path}: a zarr group without OME-Zarr multiscales metadata")
    ms = multiscales[0]
    try:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
        first = ms["datasets"][0]
        array = node[first["path"]]
    except (KeyError, IndexError, TypeError) as err:
        raise RefSRError(f"cannot read {path}: incomplete OME-Zarr metadata ({_first_line(err)})") from None
    scale_values: Sequence[float] = []
    for t in list(ms.get("coordinateTransformations") or []) + list(first.get("coordinateTransformations") or []):
        if t.get("type") == "scale":
            scale_values = [a * b for a, b in zip(scale_values or [1.0] * len(names), t["scale"])]
    axes = "".join(n.upper() for n in names)
    units = {n.upper(): a["unit"] for n, a in zip(names, ms["axes"]) if isinstance(a, dict) and a.get("unit")}
    scale = {n.upper(): float(s) for n, s in zip(names, scale_values)}
    return Source(da.from_zarr(array), axes, scale, units, str(path))


def open_image(path: str | os.PathLike) -> Source:
    """Open an OME-Zarr (its full-resolution level), a plain zarr array, or a TIFF lazily."""
    p = Path(path)
    if not p.exists():
        raise RefSRError(f"image not found: {p}")
    if p.is_dir():
        return _open_zarr(p)
    from ..imageio import image_format

    if image_format(p) != "tiff":
        raise RefSRError(f"cannot read {p} out of core: use a TIFF or an OME-Zarr (PNG/JPEG fit in memory: "
                         "write the output as .png/.tif instead)")
    return _open_tiff(p)


def layout(source: Source, channels: str = "auto") -> tuple[tuple[int, int], int | None]:
    """(Y, X) axes and the channel axis of ``source``. ``channels``: "colour" treats the C/S axis
    as RGB(A) colour, "separate" upscales each channel as its own grayscale image, and "auto" uses
    colour for samples (S) and for 3 or 4 uint8 channels, separate channels otherwise."""
    axes = source.axes
    if "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        raise RefSRError(f"{source.path or 'the image'} has axes {axes!r}; RefSR needs one Y and one X axis")
    spatial = (axes.index("Y"), axes.index("X"))
    letters = [a for a in "SC" if a in axes]
    if channels == "colour" and not letters:
        raise RefSRError(f"{source.path or 'the image'} has axes {axes!r}, no C or S axis to take as colour")
    if not letters or channels == "separate":
        return spatial, None
    axis = axes.index(letters[0])
    size = source.data.shape[axis]
    if channels == "colour":
        if size not in (1, 3, 4):
            raise RefSRError(f"axis {letters[0]} has {size} channels; colour needs 1, 3 or 4 (use --channels separate)")
        return spatial, axis
    if channels != "auto":
        raise RefSRError(f"channels must be auto, colour or separate, got {channels!r}")
    colour = letters[0] == "S" or (size in (3, 4) and source.data.dtype == np.uint8)
    return spatial, axis if colour and size in (1, 3, 4) else None


def ome_order(axes: str) -> tuple[list[int], str]:
    """(transpose order, OME axis names) that put an array with ``axes`` into t, c, z, y, x order."""
    names = []
    for letter in axes:
        name = _TO_OME.get(letter)
        if name is None:
            raise RefSRError(f"axis {letter!r} of axes {axes!r} has no OME-Zarr equivalent (t, c, z, y, x)")
        names.append(name)
    if len(set(names)) != len(names):
        raise RefSRError(f"axes {axes!r} map to the same OME-Zarr axis twice")
    order = sorted(range(len(names)), key=lambda i: _OME.index(names[i]))
    return order, "".join(names[i] for i in order)


def _levels(shape: Sequence[int], names: str, minimum: int) -> list[int]:
    big = max(shape[names.index("y")], shape[names.index("x")])
    factors, f = [], 2
    while big // f >= minimum:
        factors.append(f)
        f *= 2
    return factors


def _store_block(block: np.ndarray, path: str, region: tuple[slice, ...]) -> None:
    """Write one chunk-aligned block into the zarr array at ``path`` (skipped if it is gone)."""
    if not Path(path).exists():  # the run was cancelled and cleaned up
        return
    zarr.open_array(path, mode="r+")[region] = block


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_target(path: Path, overwrite: bool = True) -> None:
    """Fail now (one line) if an OME-Zarr cannot be written at ``path``."""
    if not path.name.lower().endswith(".zarr"):
        raise RefSRError(f"cannot write {path}: an out-of-core result is an OME-Zarr; name it *.ome.zarr")
    if not path.parent.is_dir():
        raise RefSRError(f"cannot write {path}: the directory {path.parent} does not exist")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise RefSRError(f"cannot write {path}: it exists (remove it or choose another name)")
        if not path.is_dir() or not any((path / n).exists() for n in ZARR_METADATA):
            raise RefSRError(f"cannot write {path}: it exists and is not a zarr store; refusing to replace it")


def write_ome_zarr(image: da.Array, path: str | os.PathLike, axes: str, *, scale: dict[str, float] | None = None,
                   units: dict[str, str] | None = None, progress=None, cancel=None, client=None,
                   workers: int | None = None, overwrite: bool = True, pyramid_min: int = PYRAMID_MIN,
                   count_key: str | None = None, name: str = "image") -> Path:
    """Write ``image`` (axis letters ``axes``) as an OME-Zarr with a multiscale pyramid at ``path``.

    First every chunk is computed and stored (``progress(done, total)`` over those chunks; ``cancel()``
    checked between chunks), then ome-zarr-py writes the OME-Zarr with its pyramid from that store
    (``cancel()`` checked between its tasks on the threaded scheduler).
    Everything happens under temporary names next to ``path``, renamed into place when complete: a
    failed or cancelled run leaves nothing at ``path`` (and an existing store there untouched).
    """
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image

    from .compute import local_run, run_tasks

    target = Path(path)
    check_target(target, overwrite)
    order, names = ome_order(axes)
    image = image.transpose(order)
    letters = [axes[i] for i in order]
    tag = f".{target.name}.refsr-{uuid.uuid4().hex[:8]}"
    scratch, staged = target.parent / f"{tag}.s0.zarr", target.parent / f"{tag}.zarr"
    try:
        chunk_shape = tuple(c[0] for c in image.chunks)
        zarr.create_array(str(scratch), shape=image.shape, chunks=chunk_shape, dtype=image.dtype,
                          fill_value=0, dimension_names=list(names))
        blocks = image.to_delayed().ravel()
        starts = [np.cumsum((0,) + c[:-1]) for c in image.chunks]
        tasks = []
        for i, idx in enumerate(itertools.product(*(range(len(c)) for c in image.chunks))):
            region = tuple(slice(int(s[k]), int(s[k]) + c[k]) for s, c, k in zip(starts, image.chunks, idx))
            tasks.append(dask.delayed(_store_block, pure=False)(blocks[i], str(scratch), region,
                                                                 dask_key_name=(f"refsr-store-{tag}", i)))
        run_tasks(tasks, client=client, progress=progress, cancel=cancel, workers=workers)

        s0 = da.from_zarr(str(scratch))
        ome_scale = {n: float((scale or {}).get(letter, 1.0)) for n, letter in zip(names, letters)}
        ome_units = {n: u for n, letter in zip(names, letters) if (u := (units or {}).get(letter)) and n != "c"}
        group = zarr.open_group(str(staged), mode="w")
        factors = _levels(image.shape, names, pyramid_min)
        here = local_run(cancel=cancel, workers=workers) if client is None else contextlib.nullcontext()
        with here, warnings.catch_warnings():  # the pyramid: cancel between its tasks too
            warnings.simplefilter("ignore", UserWarning)
            write_image(s0, group, scale_factors=factors or None, method=Methods.LOCAL_MEAN, axes=list(names),
                        scale=ome_scale, axes_units=ome_units or None, name=name,
                        storage_options={"chunks": chunk_shape})
        if target.exists():
            old = target.parent / f"{tag}.old"
            os.replace(target, old)
            os.replace(staged, target)
            _remove(old)
        else:
            os.replace(staged, target)
    finally:
        _remove(scratch)
        _remove(staged)
    return target


def open_levels(path: str | os.PathLike) -> tuple[list[da.Array], str, list[list[float]]]:
    """An OME-Zarr's levels (lazy, full resolution first), axis names, and each level's scale."""
    p = Path(path)
    try:
        group = zarr.open_group(str(p), mode="r")
        ms = dict(group.attrs)["ome"]["multiscales"][0]
    except Exception as err:  # noqa: BLE001
        raise RefSRError(f"cannot read {p}: not an OME-Zarr 0.5 image ({_first_line(err)})") from None
    names = "".join(a["name"] for a in ms["axes"])
    levels, scales = [], []
    for ds in ms["datasets"]:
        levels.append(da.from_zarr(group[ds["path"]]))
        scales.append(next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale"))
    return levels, names, scales
