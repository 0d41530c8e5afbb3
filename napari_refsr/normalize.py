"""From user images (any dtype, range, channel layout) to the network's RGB in [-1, 1] and back.

* uint8 keeps the reference mapping ``x / 127.5 - 1`` (and PIL's 8-bit rounding when resized).
* Other dtypes (uint16 microscopy, float) use a robust intensity window — the given percentiles
  of the image — unless the caller fixes ``value_range`` (ComfyUI passes (0, 1)). The output is
  mapped back through the LR image's window into the input's dtype.
* Grayscale is replicated to RGB and the output averaged back; RGBA's alpha is upscaled on its
  own by bicubic resizing and re-attached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import RefSRError
from .resize import resize_bicubic

DEFAULT_PERCENTILES = (0.1, 99.9)
MIN_SIZE = 4  # LR pixels; the network's 3×3 search needs a few positions

__all__ = ["Prepared", "prepare", "restore", "intensity_window", "to_unit", "to_net", "from_net", "check_image",
           "DEFAULT_PERCENTILES"]


def to_net(pixels):
    """0..255 units (the 8-bit grid for uint8 data) → the network's [-1, 1] (``x / 127.5 - 1``)."""
    return pixels / 127.5 - 1.0


def from_net(x):
    """The network's [-1, 1] → 0..255 units (the inverse of :func:`to_net`)."""
    return (x + 1.0) * 127.5


def check_image(image, what: str = "image", min_size: int = MIN_SIZE) -> np.ndarray:
    """Validate an array as a 2D image (H,W) or (H,W,C) with C in 1, 3, 4; returns it as ndarray."""
    if image is None:
        raise RefSRError(f"{what} is missing")
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind not in "uif":
        raise RefSRError(f"{what} has unsupported dtype {arr.dtype}; use uint8, uint16 or float")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise RefSRError(f"{what} looks channels-first {arr.shape}; expected (H, W, C) with C last")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise RefSRError(f"{what} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.size == 0 or min(arr.shape[:2]) < min_size:
        raise RefSRError(f"{what} of size {arr.shape[:2]} is too small; it needs at least {min_size}×{min_size} pixels")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RefSRError(f"{what} contains NaN or infinite values; replace them before upscaling")
    return arr


def intensity_window(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, value_range=None
) -> tuple[float, float]:
    """(lo, hi) intensities mapped to 0 and 1: uint8 → (0, 255), else ``value_range`` or percentiles."""
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
    elif image.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    else:
        lo, hi = (float(v) for v in np.percentile(image, percentiles))
        if not (np.isfinite(lo) and np.isfinite(hi)):  # float32 interpolation overflowed near ±3.4e38
            lo, hi = (float(v) for v in np.percentile(image.astype(np.float64), percentiles))
    if not hi > lo:  # flat image: keep it flat instead of dividing by zero
        hi = lo + 1.0
    return lo, hi


def to_unit(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensities → float32 in [0, 1] through the window (lo, hi), clipped.

    Computed in float64 (for float32 data near its limit ``hi - lo`` overflows float32), and on
    halved values where even float64's ``hi - lo`` overflows (float64 data near ±1.8e308)."""
    h = _half(lo, hi)
    return np.clip((image.astype(np.float64) * h - lo * h) / (hi * h - lo * h), 0.0, 1.0).astype(np.float32)


def _half(lo: float, hi: float) -> float:
    """1, or 0.5 where ``hi - lo`` overflows float64: the window's arithmetic then runs on halves."""
    return 1.0 if math.isfinite(float(hi) - float(lo)) else 0.5


@dataclass
class Prepared:
    """An image ready for the network, and what is needed to map the output back."""

    pixels: torch.Tensor  # (3, H, W) float32 in 0..255 units (the 8-bit grid for uint8 input)
    quantize: bool  # resize on the 8-bit grid (uint8 input), as PIL does
    dtype: np.dtype
    channels: int  # 0 for (H, W), else 1, 3 or 4
    window: tuple[float, float]
    alpha: np.ndarray | None  # (H, W) alpha in 0..1, RGBA only


def prepare(image, what: str = "image", *, percentiles=DEFAULT_PERCENTILES, value_range=None,
            min_size: int = MIN_SIZE) -> Prepared:
    """Validate and convert one image; see the module docstring for the intensity rules."""
    arr = check_image(image, what, min_size)
    channels = 0 if arr.ndim == 2 else arr.shape[2]
    colour = arr if arr.ndim == 2 else arr[..., : min(3, channels)]
    alpha = None
    if channels == 4:
        alpha = arr[..., 3].astype(np.float32) / (255.0 if arr.dtype == np.uint8 else
                                                  65535.0 if arr.dtype == np.uint16 else 1.0)
    window = intensity_window(colour, percentiles, value_range)
    quantize = arr.dtype == np.uint8 and value_range is None
    if quantize:
        unit255 = colour.astype(np.float32)
    else:
        unit255 = to_unit(colour, *window) * 255.0
    t = torch.from_numpy(np.ascontiguousarray(unit255))
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return Prepared(t.contiguous(), quantize, arr.dtype, channels, window, alpha)


def restore(rgb: np.ndarray, prepared: Prepared, scale: int = 4, alpha: np.ndarray | None = None) -> np.ndarray:
    """Network output (3, sH, sW) in [-1, 1] → the input's dtype, window and channel layout.

    ``alpha``: the upscaled alpha (sH, sW) when the caller made it (a region of a larger image);
    otherwise RGBA's alpha is resized here."""
    unit = (np.asarray(rgb, dtype=np.float32) + 1.0) / 2.0
    if prepared.channels in (0, 1):
        unit = unit.mean(axis=0, keepdims=True)
    out = np.moveaxis(unit, 0, -1)
    lo, hi = prepared.window
    if prepared.quantize:
        values = np.clip(np.round(out * 255.0), 0, 255)
    else:
        h = _half(lo, hi)  # float64, halved if need be: (hi - lo) may exceed float32 or float64
        values = (lo * h + out.astype(np.float64) * (hi * h - lo * h)) / h
    if prepared.alpha is not None:
        if alpha is None:
            alpha = resize_bicubic(torch.from_numpy(prepared.alpha), (out.shape[0], out.shape[1])).numpy()
        a = np.clip(alpha, 0, 1)
        amax = 255.0 if prepared.dtype == np.uint8 else 65535.0 if prepared.dtype == np.uint16 else 1.0
        values = np.concatenate([values, (a * amax)[..., None]], axis=-1)
    if prepared.channels == 0:
        values = values[..., 0]
    return _cast(values, prepared.dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if np.dtype(dtype).kind == "f":  # rounding at the window's edge must not overflow to inf
        info = np.finfo(dtype)
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype)
