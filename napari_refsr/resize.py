"""Bicubic resizing that reproduces PIL's ``Image.resize(..., BICUBIC)``.

TTSR was trained on LR↑ and Ref↓↑ images made by PIL: a separable bicubic kernel with a = -0.5
whose support widens by the scale when shrinking (antialiasing), applied horizontally then
vertically, each pass rounded to 8 bits for 8-bit images. ``torch.nn.functional.interpolate``
uses a = -0.75 for float upsampling, which differs by up to 17 grey levels, so this module
builds PIL's sparse filter taps and applies them with ``index_select`` (memory ∝ the output,
any device, any float dtype, differentiable).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["resize_bicubic", "resize_uint8", "down_up"]


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's filter taps for one axis: (n_out, k) source indices and normalised weights."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    k = int(math.ceil(support)) * 2 + 1
    center = (np.arange(n_out) + 0.5) * scale
    xmin = np.clip(np.trunc(center - support + 0.5), 0, None).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), n_in)
    offs = np.arange(k)
    idx = xmin[:, None] + offs[None, :]
    valid = idx < xmax[:, None]
    w = _cubic((idx - center[:, None] + 0.5) / filterscale) * valid
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    return np.minimum(idx, n_in - 1), w


def _resize_axis(x: torch.Tensor, n_out: int, dim: int, quantize: bool) -> torch.Tensor:
    n_in = x.shape[dim]
    if n_in == n_out:
        return x
    idx, w = _taps(n_in, n_out)
    idx_t = torch.from_numpy(idx).to(x.device)
    w_t = torch.from_numpy(w).to(device=x.device, dtype=x.dtype)
    shape = [1] * x.dim()
    shape[dim] = n_out
    out = None
    for t in range(idx.shape[1]):
        term = x.index_select(dim, idx_t[:, t]) * w_t[:, t].view(shape)
        out = term if out is None else out + term
    if quantize:
        out = torch.floor(out + 0.5).clamp(0, 255)
    return out


def resize_bicubic(x: torch.Tensor, size: tuple[int, int], *, quantize: bool = False) -> torch.Tensor:
    """Resize the last two axes of ``x`` to ``size`` = (height, width) like PIL's BICUBIC.

    ``quantize=True`` is for 8-bit images held as floats in 0..255: each pass is rounded and
    clipped to 0..255, as PIL does for mode "L"/"RGB" images.
    """
    if x.dim() < 2 or min(size) < 1:
        raise ValueError(f"cannot resize a tensor of shape {tuple(x.shape)} to {size}")
    if not x.is_floating_point():
        x = x.float()
    x = _resize_axis(x, int(size[1]), x.dim() - 1, quantize)
    return _resize_axis(x, int(size[0]), x.dim() - 2, quantize)


def down_up(x: torch.Tensor, factor: int = 4, *, quantize: bool = False) -> torch.Tensor:
    """Ref↓↑: bicubic down by ``factor`` then back up, so Ref shares LR↑'s frequency band."""
    h, w = x.shape[-2:]
    small = resize_bicubic(x, (max(1, h // factor), max(1, w // factor)), quantize=quantize)
    return resize_bicubic(small, (h, w), quantize=quantize)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) array resized to ``size`` exactly as PIL's BICUBIC would:
    how LR images are made from 8-bit originals (sample data, tests, benchmarks)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"resize_uint8 needs a uint8 (H, W) or (H, W, C) array, got {image.dtype} {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).float()
    t = t.permute(2, 0, 1) if t.dim() == 3 else t
    out = resize_bicubic(t, size, quantize=True)
    out = out.permute(1, 2, 0) if out.dim() == 3 else out
    return out.round().clamp(0, 255).to(torch.uint8).numpy()
