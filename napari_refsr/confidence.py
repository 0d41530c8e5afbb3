"""The confidence map: TTSR's soft attention S at output size, and how it is shown as an 8-bit image.

S is, per LR pixel, the cosine similarity of its 3×3 feature patch to the best-matching reference
patch: at most 1 (a perfect match), lower where the references had nothing similar. The map at
output size is S bilinearly upsampled ×4 — bilinear, not bicubic, because bicubic overshoots next
to sharp changes (S reached 1.0045) — and clipped to [-1, 1] against float rounding, so every value
stays a cosine.

For 8-bit files (PNG, JPEG) S is shown through the angle θ = arccos S between the LR patch and its
match, stretched from 0° (255, white: a perfect match) to the map's largest angle θmax (0, black):
``v = 255 · (1 − θ / θmax)``. Cosines of good matches crowd just below 1 (cos θ ≈ 1 − θ²/2), so a
plain 0..1 → 0..255 mapping of S shows a white page (the example pair: S 0.68–1.0, mean 252.7 of
255); the angle spreads them out. :class:`DisplayWindow` records θmax so that front ends can
report the mapping; TIFF keeps the raw float32 S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["upsample_confidence", "DisplayWindow", "display_window", "to_uint8", "MIN_ANGLE"]

#: the smallest θmax of the 8-bit mapping: a (nearly) constant map stays white instead of noise
MIN_ANGLE = 5.0  # degrees: S above cos 5° = 0.996 is never stretched to black


def upsample_confidence(s: np.ndarray, factor: int) -> np.ndarray:
    """S (h, w) on the LR grid → float32 (h·factor, w·factor), bilinear, within [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None, None]
    up = F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
    return up[0, 0].clamp_(-1.0, 1.0).numpy()


def _angle(conf: np.ndarray) -> np.ndarray:
    """θ = arccos S in degrees (NaN stays NaN)."""
    return np.degrees(np.arccos(np.clip(np.asarray(conf, dtype=np.float64), -1.0, 1.0)))


@dataclass(frozen=True)
class DisplayWindow:
    """The 8-bit mapping of one map: white at S = 1, black at the angle ``max_angle`` (degrees)."""

    max_angle: float

    @property
    def lowest(self) -> float:
        """The S shown as black."""
        return float(np.cos(np.radians(self.max_angle)))

    def describe(self) -> str:
        """One line for logs and file metadata."""
        return (f"confidence: 255*(1 - arccos(S)/{self.max_angle:.1f} deg), "
                f"white S=1, black S={self.lowest:.3f}")


def display_window(conf: np.ndarray) -> DisplayWindow:
    """The map's own largest angle, at least :data:`MIN_ANGLE`."""
    angle = _angle(conf)
    angle = angle[np.isfinite(angle)]
    return DisplayWindow(max(float(angle.max()) if angle.size else 0.0, MIN_ANGLE))


def to_uint8(conf: np.ndarray, window: DisplayWindow | None = None) -> tuple[np.ndarray, DisplayWindow]:
    """The 8-bit picture of a confidence map and the window used (the map's own unless given)."""
    window = window or display_window(conf)
    scaled = 1.0 - _angle(conf) / window.max_angle
    return np.round(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0).astype(np.uint8), window
