"""Images larger than memory: out-of-core RefSR on dask and zarr, OME-Zarr output, dask clusters.

Needs the optional extra ``pip install "napari-refsr[large]"`` (dask, distributed, zarr, ome-zarr);
the core package imports without it.
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401
    import zarr  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised without the extra
    from ..errors import RefSRError

    raise RefSRError(f"out-of-core upscaling needs the 'large' extra ({err.name} is missing): "
                     "pip install 'napari-refsr[large]'") from None

from .chunks import DEFAULT_CHUNK, upscale_dask
from .window import whole_window

__all__ = ["upscale_dask", "whole_window", "DEFAULT_CHUNK"]
