"""Grayscale images in ComfyUI: *Load Image* turns a grayscale file into RGB with three equal
channels. Running those as colour lets the network's small colour errors show as fringes, so the
node runs them through the core's grayscale path and returns three equal channels again.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LUMA", "as_gray", "equal_channels", "split_batch"]

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" mode


def equal_channels(images: np.ndarray) -> np.ndarray:
    """Per image of an IMAGE batch ``[B, H, W, C]``: True when it is RGB with R == G == B exactly."""
    if images.ndim != 4 or images.shape[-1] != 3:
        return np.zeros(images.shape[:1], dtype=bool)
    rgb = images.reshape(images.shape[0], -1, 3)
    return (rgb[..., 0] == rgb[..., 1]).all(axis=1) & (rgb[..., 1] == rgb[..., 2]).all(axis=1)


def as_gray(image: np.ndarray) -> np.ndarray:
    """One ``(H, W, C)`` image as ``(H, W, 1)``: its first channel when the channels are equal, else
    the luma of its RGB (alpha ignored), so colour references can guide a grayscale image."""
    if image.shape[-1] == 1 or equal_channels(image[None])[0]:
        return np.ascontiguousarray(image[..., :1])
    return (image[..., :3] @ LUMA)[..., None].astype(np.float32)


def split_batch(images: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """The batch's indices in runs of one kind: ``[(indices, gray), …]``, colour first; an empty kind is
    left out. (A ComfyUI batch has one size, so each run is an ordinary smaller batch.)"""
    gray = equal_channels(images)
    return [(idx, kind) for kind in (False, True) if (idx := np.flatnonzero(gray == kind)).size]
