"""Sample low-res / reference pairs from images bundled inside scikit-image (no download).

Each LR image is made from a real photograph by the degradation TTSR was trained on (PIL-exact
bicubic ↓4, :func:`napari_refsr.resize.resize_bicubic`) and placed in the world where it came
from (scale 4, pixel centres in the middle of their 4×4 blocks), so the ×4 result lands on the
original pixel grid. The original is added too (hidden) to compare against.
"""

from __future__ import annotations

import numpy as np

from ..resize import resize_uint8
from ._convert import SAMPLE_ROLE_KEY

__all__ = ["stereo_pair", "cell_pair", "downscale"]

FACTOR = 4


def downscale(image: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """uint8 (H, W[, 3]) → (H/factor, W/factor[, 3]) uint8 with PIL's bicubic (H, W multiples of factor)."""
    return resize_uint8(image, (image.shape[0] // factor, image.shape[1] // factor))


def _crop4(image: np.ndarray) -> np.ndarray:
    h, w = (image.shape[0] // FACTOR) * FACTOR, (image.shape[1] // FACTOR) * FACTOR
    return image[:h, :w]


def _pair(original: np.ndarray, reference: np.ndarray, name: str, origin=(0.0, 0.0),
          ref_origin=(0.0, 0.0)) -> list[tuple]:
    """LR (from ``original``), reference and the hidden original, placed at their world origins."""
    original = _crop4(original)
    rgb = original.ndim == 3
    lr = downscale(original)
    centre = (FACTOR - 1) / 2  # the LR pixel centre sits in the middle of its 4×4 block
    common = {"rgb": rgb}
    return [
        (reference, dict(common, name=f"{name} reference", translate=ref_origin,
                         metadata={SAMPLE_ROLE_KEY: "reference"}), "image"),
        (original, dict(common, name=f"{name} original (for comparison)", translate=origin, visible=False,
                        metadata={SAMPLE_ROLE_KEY: "original"}), "image"),
        (lr, dict(common, name=f"{name} low-res", scale=(FACTOR, FACTOR),
                  translate=(origin[0] + centre, origin[1] + centre),
                  metadata={SAMPLE_ROLE_KEY: "lr"}), "image"),
    ]


def stereo_pair() -> list[tuple]:
    """Natural photographs: the left view of a stereo pair ↓4 as LR, the right view as reference."""
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    return _pair(left, _crop4(right), "motorcycle")


def cell_pair() -> list[tuple]:
    """Microscopy: the lower field of ``skimage.data.cell()`` (with the cell) ↓4 as LR, the field
    above it as reference."""
    from skimage import data

    cell = data.cell()
    half = (cell.shape[0] // 2 // FACTOR) * FACTOR
    top, bottom = _crop4(cell[:half]), cell[half:]
    return _pair(bottom, top, "cell", origin=(float(half), 0.0))
