"""Save an image layer as TIFF with its pixel size (napari's built-in writer drops the scale).

The file is written by :func:`napari_refsr.imageio.write_image` (atomic, dtype kept): the Y/X pixel
size goes into the standard TIFF resolution tags — in centimetres when the layer has length units
(µm, nm, mm…), unit-less pixels-per-unit otherwise — and stack axes keep their letters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import write_image

__all__ = ["write_tiff", "tiff_meta"]

_NO_UNIT, _CENTIMETER = 1, 3


def _axis_letters(labels, n: int) -> str:
    """One letter per non-spatial axis: a single-letter axis label (z, t, c…) or 'Q' (unknown)."""
    letters = []
    for label in list(labels)[:n]:
        text = str(label).strip().upper()
        ok = len(text) == 1 and text.isalpha() and text not in "YXS" and text not in letters
        letters.append(text if ok else "Q")
    return "".join(letters) + "Q" * (n - len(letters))


def _pixel_size_cm(size: float, unit) -> float | None:
    """``size`` in ``unit`` as centimetres, or None when the unit is not a length (pixels, none)."""
    if unit is None:
        return None
    import pint

    try:
        quantity = float(size) * unit if isinstance(unit, pint.Unit) else pint.Quantity(float(size), str(unit))
        return float(quantity.to("centimeter").magnitude)
    except (pint.PintError, ValueError, TypeError):  # pixels, dimensionless, unknown: no length
        return None


def tiff_meta(meta: dict[str, Any], ndim: int) -> dict[str, Any]:
    """napari layer attributes → the ``meta`` dict of :func:`napari_refsr.imageio.write_image`."""
    rgb = bool(meta.get("rgb", False))
    scale = list(meta.get("scale") or [1.0] * (ndim - rgb))
    units = list(meta.get("units") or [None] * len(scale))
    n_world = ndim - 1 if rgb else ndim
    axes = _axis_letters(meta.get("axis_labels") or (), n_world - 2) + "YX" + ("S" if rgb else "")
    sy, sx = float(scale[-2]), float(scale[-1])
    cy, cx = _pixel_size_cm(sy, units[-2]), _pixel_size_cm(sx, units[-1])
    if cy and cx:
        resolution, unit = (1.0 / cx, 1.0 / cy), _CENTIMETER
    else:
        resolution, unit = (1.0 / sx, 1.0 / sy), _NO_UNIT
    return {"axes": axes, "has_channels": rgb, "resolution": resolution, "resolution_unit": unit}


def write_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: the layer's data and its pixel size to ``path`` (.tif/.tiff)."""
    target = Path(path)
    if not target.suffix:
        target = target.with_suffix(".tif")
    if meta.get("multiscale"):
        data = data[0]
    arr = np.asarray(data)
    written = write_image(target, arr, meta=tiff_meta(meta, arr.ndim))
    return [str(written)]
