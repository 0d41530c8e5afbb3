"""One out-of-core run from start to finish: a big image (file or lazy array) in, an OME-Zarr out.

This is what the CLI (``refsr upscale BIG.ome.zarr REF.tif -o OUT.ome.zarr``) and the napari widget
(for dask/multiscale layers) call; the chunk work is :func:`.chunks.upscale_dask`, the writing
:func:`.store.write_ome_zarr`, the scheduler :func:`.compute.scheduler`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import RefSRError
from ..model import RefSRModel
from .chunks import SCALE, upscale_dask
from .compute import scheduler
from .store import check_target, layout, open_image, write_ome_zarr

__all__ = ["upscale_to_ome_zarr", "upscale_file", "axis_letters"]


def axis_letters(ndim: int, spatial: tuple[int, int], channel: int | None, rgb: bool = False,
                 labels: Sequence[str] | None = None) -> str:
    """Axis letters for an array whose Y, X and channel axes are known: other axes keep a t/z/c
    label if they have one, else the last becomes Z and the one before T."""
    letters = [""] * ndim
    letters[spatial[0]], letters[spatial[1]] = "Y", "X"
    if channel is not None:
        letters[channel] = "S" if rgb else "C"
    free = [a for a in range(ndim) if not letters[a]]
    for a in free:
        label = str(labels[a]).upper() if labels is not None and a < len(labels) else ""
        if label in ("T", "Z", "C") and label not in letters:
            letters[a] = label
    for a in reversed(free):
        if not letters[a]:
            spare = [x for x in "ZTC" if x not in letters]
            if not spare:
                raise RefSRError(f"a {ndim}D image has too many axes for OME-Zarr (t, c, z, y, x)")
            letters[a] = spare[0]
    return "".join(letters)


def _threads() -> int:
    """Dask threads for a CPU run: the cores torch's own threads leave free (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))


def upscale_to_ome_zarr(
    model: RefSRModel,
    data,
    refs,
    output: str | os.PathLike,
    *,
    axes: str,
    scale: dict[str, float] | None = None,
    units: dict[str, str] | None = None,
    client=None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    overwrite: bool = True,
    **options,
) -> Path:
    """Upscale ``data`` (lazy: dask, zarr) ×4 into an OME-Zarr at ``output`` and return its path.

    ``axes`` names ``data``'s axes (T, C, Z, Y, X, S); ``scale``/``units`` give pixel sizes per axis
    letter (Y and X are divided by 4 in the output). ``client``: a ``distributed.Client``, or None
    for the threaded scheduler with ``workers`` threads. ``options`` go to
    :func:`~.chunks.upscale_dask` (``spatial_axes``, ``channel_axis``, ``chunk``, ``tile``, …).
    """
    check_target(Path(output), overwrite)
    image = upscale_dask(model, data, refs, client=client, **options)
    out_scale = dict(scale or {})
    for letter in "YX":
        out_scale[letter] = float(out_scale.get(letter, 1.0)) / SCALE
    return write_ome_zarr(image, output, axes, scale=out_scale, units=units, client=client,
                          workers=workers or (None if client is not None else _threads()),
                          progress=progress, cancel=cancel, overwrite=overwrite)


def upscale_file(
    model: RefSRModel,
    path: str | os.PathLike,
    refs,
    output: str | os.PathLike,
    *,
    channels: str = "auto",
    scheduler_spec: str | None = "threads",
    workers: int | None = None,
    **options,
) -> Path:
    """Upscale a big OME-Zarr, zarr or TIFF file into an OME-Zarr; ``scheduler_spec`` is "threads",
    "processes" (a LocalCluster of ``workers`` processes) or a scheduler address. ``options`` as
    :func:`upscale_to_ome_zarr`."""
    check_target(Path(output), options.get("overwrite", True))
    source = open_image(path)
    spatial, channel = layout(source, channels)
    with scheduler(scheduler_spec, workers) as client:
        return upscale_to_ome_zarr(model, source.data, refs, output, axes=source.axes, spatial_axes=spatial,
                                   channel_axis=channel, scale=source.scale, units=source.units, client=client,
                                   workers=workers, **options)
