"""Images larger than memory: out-of-core RefSR on dask and zarr, OME-Zarr output, dask clusters.

Needs the optional extra ``pip install "napari-refsr[large]"`` (dask, distributed, zarr, ome-zarr);
the core package imports without it, and so does this package: its names load on first use, and a
missing extra is then a one-line :class:`~napari_refsr.RefSRError`.
"""

from __future__ import annotations

import importlib

from .paths import DEFAULT_CHUNK, is_zarr_path

_EXPORTS = {
    "upscale_dask": "chunks", "Job": "chunks",
    "scheduler": "compute", "run_tasks": "compute",
    "upscale_to_ome_zarr": "run", "upscale_file": "run", "axis_letters": "run",
    "Source": "store", "open_image": "store", "open_levels": "store", "write_ome_zarr": "store",
    "check_target": "store", "layout": "store", "ome_order": "store",
    "whole_window": "window",
}

__all__ = ["is_zarr_path", "DEFAULT_CHUNK", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError as err:
        from ..errors import RefSRError

        raise RefSRError(f"out-of-core upscaling needs the 'large' extra ({err.name or err} is missing): "
                         "pip install 'napari-refsr[large]'") from None
    globals()[name] = value
    return value
