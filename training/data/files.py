"""Image files for training and evaluation: listing, frames of any image array, and a lazily read,
cached file with its intensity window."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from napari_refsr.errors import RefSRError
from napari_refsr.imageio import SUFFIXES, read_image
from napari_refsr.normalize import DEFAULT_PERCENTILES, check_image, intensity_window, prepare

__all__ = ["list_images", "ImageFile"]


def list_images(folder: str | Path, *, recursive: bool = True, what: str = "folder") -> list[Path]:
    """Image files (by extension) under ``folder``, sorted; a clear error when there are none."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise RefSRError(f"{what} not found: {root}")
    if not root.is_dir():
        raise RefSRError(f"{what} {root} is not a folder")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise RefSRError(f"{what} {root} holds no images ({', '.join(sorted(SUFFIXES))})")
    return files


def _frames_of(array: np.ndarray, path: Path) -> np.ndarray:
    """Any image array → (N, H, W) or (N, H, W, C) frames (C last, in 1/3/4)."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and a.shape[-1] <= 4 < a.shape[-2]:  # (H, W, C); C = 2 is refused later
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim >= 4:
        if a.shape[-1] <= 4 < a.shape[-2]:
            return a.reshape((-1,) + a.shape[-3:])
        return a.reshape((-1,) + a.shape[-2:])
    raise RefSRError(f"{path}: cannot use an image of shape {a.shape}")


class ImageFile:
    """One image file: its frames, intensity window and 8-bit flag, read lazily and cached."""

    _cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
    cache_bytes = 1 << 30  # per process (each DataLoader worker has its own)

    def __init__(self, path: Path, percentiles: Sequence[float] = DEFAULT_PERCENTILES):
        self.path = Path(path)
        frames = self._read()
        self.n_frames = int(frames.shape[0])
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])
        for i, frame in enumerate(frames):  # dtype, channels, NaN: the core's image checks, naming the file
            check_image(frame, str(self.path) if self.n_frames == 1 else f"{self.path} frame {i}", min_size=1)
        self.quantize = frames.dtype == np.uint8  # 8-bit data: PIL's rounding, x / 127.5 - 1
        colour = frames if frames.ndim == 3 else frames[..., :3]
        self.window = None if self.quantize else intensity_window(colour, tuple(percentiles))
        self.gray = frames.ndim == 3 or frames.shape[-1] == 1

    def _read(self) -> np.ndarray:
        key = str(self.path)
        cache = ImageFile._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        frames = _frames_of(read_image(self.path), self.path)  # RefSRError names the file
        cache[key] = frames
        total = sum(v.nbytes for v in cache.values())
        while total > self.cache_bytes and len(cache) > 1:
            _, old = cache.popitem(last=False)
            total -= old.nbytes
        return frames

    def region(self, frame: int, y: int, x: int, h: int, w: int) -> torch.Tensor:
        """(3, h, w) float32 in 0..255 units (the 8-bit grid for 8-bit files)."""
        raw = self._read()[frame, y : y + h, x : x + w]
        prep = prepare(raw, f"{self.path} frame {frame}", value_range=self.window, min_size=1)
        return prep.pixels.clone()
