"""Grayscale images in ComfyUI: *Load Image* turns a grayscale file into RGB with three equal
channels. Running those as colour lets the network's small colour errors show as fringes, so the
node runs them through the core's grayscale path and returns three equal channels again.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from napari_refsr import RefSRModel, upscale_nd

__all__ = ["LUMA", "as_gray", "equal_channels", "split_batch", "upscale_by_kind"]

Progress = Callable[[int, int], None]

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


def upscale_by_kind(model: RefSRModel, lr: np.ndarray, refs: list[np.ndarray], progress: Progress,
                    **options) -> tuple[np.ndarray, np.ndarray]:
    """Upscale an IMAGE batch: colour images as RGB, images with three equal channels through the
    core's grayscale path (references turned gray for them) and returned with equal channels.
    Progress counts over the whole batch; ``options`` go to :func:`napari_refsr.upscale_nd`.
    Returns the ×4 images and the confidence, float32."""
    b, h, w, c = lr.shape
    images = np.empty((b, h * 4, w * 4, c), dtype=np.float32)
    confidence = np.empty((b, h * 4, w * 4), dtype=np.float32)
    shares = _Shares(progress, b)
    first = 0  # images of the batch already done, for the progress of a later run
    for idx, gray in split_batch(lr):
        run_progress = progress if len(idx) == b else shares.part(first, len(idx))
        result = upscale_nd(model, lr[idx][..., :1] if gray else lr[idx], [as_gray(r) for r in refs] if gray else refs,
                            spatial_axes=(1, 2), channel_axis=3, progress=run_progress, **options)
        images[idx] = np.repeat(result.image, 3, axis=-1) if gray else result.image
        confidence[idx] = result.confidence
        first += len(idx)
    return images, confidence


class _Shares:
    """Progress of runs over parts of a batch, reported as one bar over all ``b`` images: the first
    run's steps per image set the scale, later runs are stretched to it, so the total never changes
    and the count ends exactly at it."""

    def __init__(self, progress: Progress, b: int) -> None:
        self.progress, self.b, self.per_image = progress, b, None

    def part(self, first: int, n: int) -> Progress:
        """The callback of a run over ``n`` images, ``first`` of the batch done before it."""

        def report(done: int, total: int) -> None:
            if self.per_image is None:
                self.per_image = total / n
            value = first * self.per_image + done * n * self.per_image / total
            self.progress(round(value), round(self.b * self.per_image))

        return report
