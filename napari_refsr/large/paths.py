"""What the CLI needs before the extra is loaded (no dask or zarr here): which paths are zarr
stores, and the default chunk size."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_zarr_path", "ZARR_METADATA", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 512  # LR pixels per chunk along Y and X (the output chunk is 4× that)
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def is_zarr_path(path: str | os.PathLike) -> bool:
    """True for a ``.zarr`` name (OME-Zarr output or input) or a directory holding zarr metadata."""
    p = Path(path)
    if p.name.lower().endswith(".zarr"):
        return True
    return p.is_dir() and any((p / n).exists() for n in ZARR_METADATA)
