"""Overlapping tiles over an LR image and seamless blending of their ×s outputs.

Tiles overlap by ``overlap`` LR pixels. Continuous outputs (the SR image, the confidence S) are
blended with weights that are zero over the outer quarter of each overlap (where a tile lacks
context) and ramp linearly to one across the rest, so no seam is visible. Discrete outputs (the
hard-attention index) come from the tile with the largest weight at each pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "plan_tiles", "plan_cells", "grow", "intersects", "Blender"]


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, n - tile, step))
    return starts + [n - tile]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile``×``tile`` LR pixels covering the image, adjacent ones sharing
    ``overlap`` pixels (more for the last row/column, which is aligned to the border)."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got {tile}, {overlap}")
    overlap = min(overlap, tile // 2)
    return [Tile(y, min(height, y + tile), x, min(width, x + tile))
            for y in _starts(height, tile, overlap) for x in _starts(width, tile, overlap)]


def _cuts(n: int, tile: int, overlap: int) -> list[int]:
    """Cell edges along an axis of n pixels: 0, n and every tile edge moved one pixel outwards."""
    overlap = min(overlap, tile // 2)
    edges = {0, n}
    for s in _starts(n, tile, overlap):
        edges.update(e for e in (s - 1, min(n, s + tile) + 1) if 0 < e < n)
    return sorted(edges)


def plan_cells(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The partition of the image into the texture search's cells: cut wherever a tile of
    :func:`plan_tiles` grown by one pixel has an edge. So every set of tiles with its 1-pixel ring
    (what their texture transfer reads) is a union of whole cells, and a region of the image
    needs only the cells inside its tiles' ring — computed like in the whole image."""
    ys, xs = _cuts(height, tile, overlap), _cuts(width, tile, overlap)
    return [Tile(y0, y1, x0, x1) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def grow(t: Tile, by: int, height: int, width: int) -> Tile:
    """``t`` grown by ``by`` pixels on every side, clipped to a ``height``×``width`` image."""
    return Tile(max(0, t.y0 - by), min(height, t.y1 + by), max(0, t.x0 - by), min(width, t.x1 + by))


def _ramp(n: int, lo_open: bool, hi_open: bool, overlap: int, scale: int) -> np.ndarray:
    """1D weights for a tile side of n LR pixels, at ×scale; *_open = a neighbour on that side."""
    pos = (np.arange(n * scale) + 0.5) / scale  # LR coordinate of each output pixel centre
    w = np.ones(n * scale, dtype=np.float64)
    if overlap <= 0:
        return w
    dead = overlap / 4.0
    span = max(overlap - dead, 1e-6)
    for is_open, dist in ((lo_open, pos), (hi_open, n - pos)):
        if is_open:
            w = np.minimum(w, np.clip((dist - dead) / span, 1e-6, 1.0))
    return w


def intersects(t: Tile, region: Tile) -> bool:
    """True when tile ``t`` and ``region`` share at least one pixel."""
    return t.y0 < region.y1 and region.y0 < t.y1 and t.x0 < region.x1 and region.x0 < t.x1


class Blender:
    """Accumulates per-tile outputs into whole images (each output at its own scale).

    With ``region`` (LR pixels of the ``height``×``width`` image) only that part is kept: tiles are
    weighted as in the whole image, so regions blended apart join into exactly the whole result.
    """

    def __init__(self, height: int, width: int, overlap: int, region: Tile | None = None):
        self.h, self.w, self.overlap = height, width, overlap
        self.region = region or Tile(0, height, 0, width)
        self.sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.best: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _cut(self, t: Tile, scale: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(slices into the tile's output, slices into the region's output) of their overlap."""
        r = self.region
        ys, ye = max(t.y0, r.y0), min(t.y1, r.y1)
        xs, xe = max(t.x0, r.x0), min(t.x1, r.x1)
        tile = (slice((ys - t.y0) * scale, (ye - t.y0) * scale), slice((xs - t.x0) * scale, (xe - t.x0) * scale))
        dest = (slice((ys - r.y0) * scale, (ye - r.y0) * scale), slice((xs - r.x0) * scale, (xe - r.x0) * scale))
        return tile, dest

    def _shape(self, scale: int) -> tuple[int, int]:
        r = self.region
        return (r.y1 - r.y0) * scale, (r.x1 - r.x0) * scale

    def weights(self, t: Tile, scale: int) -> np.ndarray:
        """Blending weights of tile ``t`` at ×``scale``: (scale·h, scale·w)."""
        wy = _ramp(t.y1 - t.y0, t.y0 > 0, t.y1 < self.h, self.overlap, scale)
        wx = _ramp(t.x1 - t.x0, t.x0 > 0, t.x1 < self.w, self.overlap, scale)
        return wy[:, None] * wx[None, :]

    def add(self, t: Tile, name: str, values: np.ndarray, scale: int = 1) -> None:
        """Blend ``values`` ((sh, sw) or (sh, sw, C): tile ``t`` at ×``scale``) into output ``name``."""
        src, sl = self._cut(t, scale)
        wt = self.weights(t, scale)[src]
        values = values[src]
        if name not in self.sums:
            shape = self._shape(scale)
            self.sums[name] = (np.zeros(shape + values.shape[2:]), np.zeros(shape))
        acc, acc_w = self.sums[name]
        acc[sl] += values * (wt if values.ndim == 2 else wt[..., None])
        acc_w[sl] += wt

    def add_discrete(self, t: Tile, name: str, values: np.ndarray) -> None:
        """Keep ``values`` ((h, w, ...) at ×1) where this tile has the largest weight so far."""
        src, sl = self._cut(t, 1)
        wt = self.weights(t, 1)[src]
        values = values[src]
        if name not in self.best:
            shape = self._shape(1)
            self.best[name] = (np.full(shape, -1.0), np.zeros(shape + values.shape[2:], values.dtype))
        best_w, out = self.best[name]
        take = wt > best_w[sl]
        out[sl][take] = values[take]
        best_w[sl][take] = wt[take]

    def result(self, name: str) -> np.ndarray:
        """The blended (or, for discrete outputs, selected) whole image ``name``."""
        if name in self.best:
            return self.best[name][1]
        acc, acc_w = self.sums[name]
        return acc / np.maximum(acc_w if acc.ndim == 2 else acc_w[..., None], 1e-12)
