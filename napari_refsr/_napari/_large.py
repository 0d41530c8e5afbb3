"""The widget's out-of-core path: a dask/zarr/multiscale layer is upscaled chunk by chunk into an
OME-Zarr store (:mod:`napari_refsr.large`) and comes back as a lazy multiscale layer placed exactly
over the input. Pure functions on layers and paths (no Qt)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..large.paths import DEFAULT_CHUNK
from ..model import RefSRModel
from ..pipeline import UpscaleResult
from ._convert import LayerAxes, result_layers

#: LR pixels per chunk along Y and X (the core's default; tests make it small)
CHUNK = DEFAULT_CHUNK

__all__ = ["is_out_of_core", "full_resolution", "store_path", "check_store", "upscale_to_store", "store_layers"]


def is_out_of_core(layer) -> bool:
    """True for a multiscale layer or one whose data is lazy (dask, zarr): never read whole."""
    if getattr(layer, "multiscale", False):
        return True
    module = type(layer.data).__module__.split(".")[0]
    return module in ("dask", "zarr")


def full_resolution(layer):
    """The layer's full-resolution data (level 0 of a pyramid), still lazy."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def store_path(chosen: str, layer_name: str) -> Path:
    """The store the user chose, or a new one in the temporary directory named after the layer."""
    if chosen and chosen.strip():
        return Path(chosen.strip()).expanduser()
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in layer_name)[:40] or "image"
    return Path(tempfile.gettempdir()) / f"{safe}-x4-{uuid.uuid4().hex[:6]}.ome.zarr"


def upscale_to_store(model: RefSRModel, data, refs: Sequence[Any], axes: LayerAxes, store: Path, *, tile: int,
                     labels: Sequence[str] | None, scale: Sequence[float], progress: Callable[[int, int], None],
                     cancel: Callable[[], bool], search: str = "exact") -> Path:
    """Run :func:`napari_refsr.large.upscale_to_ome_zarr` for a layer's data (threaded scheduler);
    the store gets the layer's pixel sizes (``scale``, per world axis), Y/X divided by 4."""
    from .. import large

    letters = large.axis_letters(axes.ndim, axes.spatial, axes.channel, axes.rgb, labels)
    sizes = {letter: float(scale[i]) for i, letter in enumerate(letters[: axes.world_ndim]) if letter in "TZYX"}
    return large.upscale_to_ome_zarr(model, data, [np.asarray(r) for r in refs], store, axes=letters, scale=sizes,
                                     spatial_axes=axes.spatial, channel_axis=axes.channel, tile=tile, chunk=CHUNK,
                                     progress=progress, cancel=cancel, overwrite=True, search=search)


def store_layers(layer, axes: LayerAxes, store: Path, *, factor: int, tile: int, model_name: str,
                 reference_names: Sequence[str], labels: Sequence[str] | None):
    """Layer data tuple of the store's pyramid, axes back in the input layer's order, placed over it."""
    from .. import large

    letters = large.axis_letters(axes.ndim, axes.spatial, axes.channel, axes.rgb, labels)
    order, _ = large.ome_order(letters)
    back = list(np.argsort(order))
    levels, _, _ = large.open_levels(store)
    levels = [level.transpose(back) for level in levels]
    result = UpscaleResult(levels, None, None, tile)  # type: ignore[arg-type]
    data, kwargs, kind = result_layers(layer, axes, result, factor=factor, model_name=model_name,
                                       reference_names=reference_names)[0]
    kwargs["multiscale"] = True
    kwargs["metadata"]["refsr"]["store"] = str(store)
    return data, kwargs, kind


def check_store(store: Path) -> None:
    """A one-line RefSRError now if the store cannot be written (or the [large] extra is missing)."""
    from .. import large

    large.check_target(store, True)
