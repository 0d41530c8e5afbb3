"""Where a training crop's reference comes from, for plain folders of images.

A network learns to copy texture from the reference only if some references hold the crop's
content; it learns to ignore a reference only if some do not. Each sample therefore draws its
reference from a mixture (:class:`ReferenceMix`):

* **overlap** — a view of the same image (or, for stacks, of a neighbouring frame) that contains
  part of the HR crop at a random offset, resampled with a random scale and a small rotation, and
  re-exposed (gamma, gain/offset, per-channel colour), blurred and noisy: what a neighbouring
  microscope field, a second exposure or the other camera of a stereo pair gives;
* **similar** — another, non-overlapping region of the same image: texture of the same kind only;
* **unrelated** — a region of another training image.

Ranges are ``[low, high]`` drawn uniformly per sample from the sample's own generator, so runs
stay reproducible. Intensities are in 0..255 units, as everywhere in :mod:`training.data`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_refsr.errors import RefSRError
from .degrade import draw, gaussian_blur

__all__ = ["ReferenceMix", "Box", "overlap_box", "overlapping_view", "warp", "photometric", "covered_fraction"]

KINDS = ("overlap", "similar", "unrelated")
Box = tuple[int, int, int, int]  # y, x, h, w in image pixels
Reader = Callable[[int, int, int, int], torch.Tensor]  # (y, x, h, w) → (3, h, w) in 0..255


@dataclass
class ReferenceMix:
    """Probabilities of the reference kinds and the ranges of the overlapping view's changes.

    Defaults (justified in docs/model-card.md): mostly overlapping views, so that copying pays,
    with a fifth each of similar and unrelated references, so that a reference that does not
    hold the content is not trusted.
    """

    overlap: float = 0.6
    similar: float = 0.2
    unrelated: float = 0.2
    size: int | None = None  # reference side in pixels (a multiple of 4); null = 1.5 × crop
    coverage: list[float] = field(default_factory=lambda: [0.5, 1.0])  # share of the crop inside
    scale: list[float] = field(default_factory=lambda: [0.8, 1.25])  # reference px per image px
    rotate: float = 10.0  # degrees, ±
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    gain: list[float] = field(default_factory=lambda: [0.8, 1.2])
    offset: list[float] = field(default_factory=lambda: [-0.05, 0.05])  # of the full range
    colour: float = 0.05  # std of a per-channel gain (colour images only)
    blur: list[float] = field(default_factory=lambda: [0.0, 1.0])  # Gaussian sigma, reference px
    noise: list[float] = field(default_factory=lambda: [0.0, 0.02])  # std, of the full range
    aligned: float = 0.0  # share of overlapping views on the crop's LR grid (see overlapping_view)

    def __post_init__(self) -> None:
        probs = [self.overlap, self.similar, self.unrelated]
        if any(not isinstance(p, (int, float)) or isinstance(p, bool) or p < 0 for p in probs) or sum(probs) <= 0:
            raise RefSRError(f"data.reference: overlap/similar/unrelated must be numbers >= 0 with a positive "
                             f"sum, got {probs}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 16 or self.size % 4):
            raise RefSRError(f"data.reference.size must be null or an integer >= 16 and a multiple of 4, "
                             f"got {self.size!r}")
        for name in ("coverage", "scale", "gamma", "gain", "offset", "blur", "noise"):
            value = getattr(self, name)
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) for v in value) or value[0] > value[1]):
                raise RefSRError(f"data.reference.{name} must be a [low, high] range, got {value!r}")
            setattr(self, name, [float(v) for v in value])
        if not 0 < self.coverage[0] <= self.coverage[1] <= 1:
            raise RefSRError(f"data.reference.coverage must lie in (0, 1], got {self.coverage}")
        if not isinstance(self.aligned, (int, float)) or isinstance(self.aligned, bool) or not 0 <= self.aligned <= 1:
            raise RefSRError(f"data.reference.aligned must be a share in [0, 1], got {self.aligned!r}")
        if self.scale[0] <= 0 or self.gamma[0] <= 0:
            raise RefSRError("data.reference.scale and .gamma must be > 0")

    @classmethod
    def from_config(cls, section: dict | None) -> "ReferenceMix":
        """From the config's ``data.reference`` mapping (unknown keys are refused by the config)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (section or {}).items() if k in known})

    @classmethod
    def similar_only(cls) -> "ReferenceMix":
        """Only non-overlapping regions of the same image (the project's behaviour before mixtures)."""
        return cls(overlap=0.0, similar=1.0, unrelated=0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def side(self, crop: int) -> int:
        """The reference side for HR crops of ``crop`` pixels."""
        return self.size or int(round(1.5 * crop / 4)) * 4

    def draw_kind(self, rng: np.random.Generator) -> str:
        p = np.array([self.overlap, self.similar, self.unrelated], dtype=np.float64)
        return KINDS[int(rng.choice(3, p=p / p.sum()))]


def covered_fraction(crop: Box, square: tuple[float, float, float]) -> float:
    """Share of the box ``crop`` inside the axis-aligned square (centre y, centre x, side)."""
    y, x, h, w = crop
    cy, cx, side = square
    oy = max(0.0, min(y + h, cy + side / 2) - max(y, cy - side / 2))
    ox = max(0.0, min(x + w, cx + side / 2) - max(x, cx - side / 2))
    return oy * ox / float(h * w)


def overlap_box(height: int, width: int, crop: Box, side: float, coverage: Sequence[float],
                rng: np.random.Generator) -> tuple[float, float]:
    """Centre (y, x) of a square of ``side`` image pixels, inside the image, that covers a share
    of ``crop`` drawn from ``coverage``: the share is split at random between the two axes, and
    each axis is shifted by just enough (in a random direction that stays inside the image)."""
    y, x, h, w = crop
    share = draw(coverage, rng)
    u = float(rng.uniform())
    centre = []
    for start, size, frac, length in ((y, h, share ** u, height), (x, w, share ** (1 - u), width)):
        slack = max(0.0, (side - size) / 2)  # shifts that keep the crop inside along this axis
        lo, hi = side / 2, max(side / 2, length - side / 2)
        mid = start + size / 2
        if frac >= 1:
            centre.append(float(np.clip(mid + rng.uniform(-slack, slack), lo, hi)))
            continue
        shift = slack + size * (1 - frac)
        signs = (1, -1) if rng.integers(2) else (-1, 1)
        fits = [mid + s * shift for s in signs if lo <= mid + s * shift <= hi]
        centre.append(float(fits[0] if fits else np.clip(mid + signs[0] * shift, lo, hi)))
    return centre[0], centre[1]


def warp(read: Reader, height: int, width: int, centre: tuple[float, float], scale: float, angle: float,
         size: int | tuple[int, int]) -> torch.Tensor:
    """A (3, size_h, size_w) view centred at ``centre`` (image px), ``scale`` reference px per
    image px, rotated by ``angle`` radians; bicubic, mirrored at the image border."""
    cy, cx = centre
    sh, sw = (size, size) if isinstance(size, int) else size
    spread = abs(math.cos(angle)) + abs(math.sin(angle))
    half = max(sh, sw) / (2 * scale) * spread + 3
    y0, y1 = max(0, int(math.floor(cy - half))), min(height, int(math.ceil(cy + half)))
    x0, x1 = max(0, int(math.floor(cx - half))), min(width, int(math.ceil(cx + half)))
    region = read(y0, x0, y1 - y0, x1 - x0)
    ty = (torch.arange(sh, dtype=torch.float32) + 0.5 - sh / 2) / scale
    tx = (torch.arange(sw, dtype=torch.float32) + 0.5 - sw / 2) / scale
    v, u = torch.meshgrid(ty, tx, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    gx = cx + cos * u - sin * v - x0  # image px relative to the region, pixel centres at k + 0.5
    gy = cy + sin * u + cos * v - y0
    grid = torch.stack((gx / (x1 - x0) * 2 - 1, gy / (y1 - y0) * 2 - 1), dim=-1)[None]
    out = F.grid_sample(region[None].float(), grid, mode="bicubic", padding_mode="reflection",
                        align_corners=False)
    return out[0].clamp(0, 255)


def _on_grid(centre: float, start: int, size: int, length: int) -> float:
    """``centre`` of a ``size``-px window moved to the nearest place (inside ``length``) whose
    origin lies a multiple of 4 px from ``start``."""
    origin = start + 4 * round((centre - size / 2 - start) / 4)
    while origin < 0 and origin + 4 + size <= length:
        origin += 4
    while origin + size > length and origin - 4 >= 0:
        origin -= 4
    return origin + size / 2


def photometric(x: torch.Tensor, mix: ReferenceMix, rng: np.random.Generator, *, gray: bool,
                quantize: bool) -> torch.Tensor:
    """Another exposure of (3, H, W) in 0..255: gamma, gain/offset, colour, blur, noise."""
    v = (x / 255.0).clamp(0, 1) ** draw(mix.gamma, rng)
    gain = draw(mix.gain, rng)
    if not gray and mix.colour > 0:
        gain = gain * torch.from_numpy(1.0 + mix.colour * rng.standard_normal(3)).float().view(3, 1, 1)
    v = (v * gain + draw(mix.offset, rng)).clamp(0, 1)
    v = gaussian_blur(v, draw(mix.blur, rng))
    std = draw(mix.noise, rng)
    if std > 0:
        shape = (1,) + tuple(v.shape[1:]) if gray else tuple(v.shape)
        noise = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * std
        v = v + noise.expand_as(v)
    out = v.clamp(0, 1) * 255.0
    return torch.floor(out + 0.5) if quantize else out


def overlapping_view(read: Reader, height: int, width: int, crop: Box, size: int, mix: ReferenceMix,
                     rng: np.random.Generator, *, gray: bool, quantize: bool) -> torch.Tensor:
    """A (3, size, size) reference that holds part of ``crop`` (see the module doc).

    A share ``mix.aligned`` of the views is taken on the crop's LR grid — scale 1, no rotation,
    an offset of whole LR pixels (multiples of 4 px) — as a registered second exposure or a
    neighbouring field at such an offset gives: there the texture search can find the exact
    patch, so the network sees how much a faithful copy is worth and learns to use it.
    """
    aligned = mix.aligned > 0 and float(rng.uniform()) < mix.aligned
    scale = 1.0 if aligned else draw(mix.scale, rng)
    side = size / scale
    fit = min(height, width)
    if side > fit:  # a small image: zoom in until the view fits
        side, scale, aligned = float(fit), size / float(fit), False
    centre = overlap_box(height, width, crop, side, mix.coverage, rng)
    angle = math.radians(draw((-mix.rotate, mix.rotate), rng))
    if aligned:
        angle = 0.0
        centre = tuple(_on_grid(c, start, size, length)
                       for c, start, length in ((centre[0], crop[0], height), (centre[1], crop[1], width)))
    view = warp(read, height, width, centre, scale, angle, size)
    return photometric(view, mix, rng, gray=gray, quantize=quantize)
