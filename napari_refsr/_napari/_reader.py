"""napari reader for the OME-Zarr stores RefSR writes: a lazy multiscale image layer.

Opens ``*.zarr`` directories with OME-Zarr 0.5 multiscales metadata (what ome-zarr-py writes, so
also other tools' stores) without reading the pixels: every level stays a dask array on the store.
A ``c`` axis of 3 or 4 uint8 channels becomes an RGB(A) layer; other channel axes are split into
one layer per channel by napari. Needs the ``[large]`` extra; without it the reader declines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RefSRError
from ..large.paths import is_zarr_path

__all__ = ["get_reader"]


def get_reader(path):
    """npe2 reader hook: a reader function for an OME-Zarr directory, else None."""
    if not isinstance(path, (str, Path)) or not is_zarr_path(path) or not Path(path).is_dir():
        return None
    try:
        from ..large import open_levels

        open_levels(path)  # metadata only: declines stores it cannot read
    except RefSRError:
        return None
    return read_ome_zarr


def read_ome_zarr(path) -> list[tuple]:
    """Layer data for the store at ``path``: its pyramid, lazily, with scale and axis labels."""
    from ..large import open_levels

    levels, names, scales = open_levels(path)
    scale, labels = list(scales[0]), list(names)
    kwargs: dict = {"name": Path(path).name, "multiscale": len(levels) > 1}
    if "c" in names:
        c = names.index("c")
        channels = levels[0].shape[c]
        if channels in (3, 4) and levels[0].dtype == np.uint8:
            levels = [np.moveaxis(level, c, -1) for level in levels]
            kwargs["rgb"] = True
            del scale[c], labels[c]
        else:
            kwargs["channel_axis"] = c
            del scale[c], labels[c]
    kwargs.update(scale=scale, axis_labels=labels)
    data = levels if len(levels) > 1 else levels[0]
    return [(data, kwargs, "image")]
