"""HR → LR as real acquisitions degrade: optional Gaussian blur, PIL-exact bicubic ×1/4, noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_refsr.resize import resize_bicubic

__all__ = ["SCALE", "draw", "gaussian_blur", "Degradation"]

SCALE = 4


def draw(value, rng: np.random.Generator) -> float:
    """A number, or a [low, high] range drawn uniformly."""
    if isinstance(value, (list, tuple)):
        lo, hi = float(value[0]), float(value[1])
        return float(rng.uniform(lo, hi)) if hi > lo else lo
    return float(value or 0.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding (no-op for sigma <= 0)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


@dataclass
class Degradation:
    """HR → LR: optional Gaussian blur (sigma in HR pixels), bicubic ×1/4, optional noise.

    ``blur`` and ``noise`` are numbers or [low, high] ranges drawn per sample; noise std is in
    units of the full intensity range (0..1).
    """

    blur: float | Sequence[float] = 0.0
    noise: float | Sequence[float] = 0.0

    def __call__(self, hr: torch.Tensor, quantize: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, LR↑) in 0..255 units from an HR image (3, H, W) in 0..255 units."""
        h, w = hr.shape[-2:]
        src = gaussian_blur(hr, draw(self.blur, rng))
        lr = resize_bicubic(src, (h // SCALE, w // SCALE), quantize=quantize)
        std = draw(self.noise, rng)
        if std > 0:
            noise = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32)) * (std * 255.0)
            lr = lr + noise
            lr = torch.floor(lr + 0.5) if quantize else lr
            lr = lr.clamp(0, 255)
        lr_up = resize_bicubic(lr, (h, w), quantize=quantize)
        return lr, lr_up
