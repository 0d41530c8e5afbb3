"""Exact, memory-bounded texture search and transfer.

The reference TTSR builds the full (Ref patches × LR patches) relevance matrix and gathers
unfolded patches for every LR position; both grow with the product of the image sizes. Here
the same quantities are computed without ever holding either:

* :func:`search` (:mod:`.shift_search`) streams over bands of query and key rows with the
  shift-sum correlation (1/9 of the dense multiply-adds), keeping a running max and argmax, so
  memory is bounded by ``budget_bytes`` whatever the sizes. It searches the union of several
  reference images (a global patch index says which reference and where).
* :func:`transfer` rebuilds the folded texture maps T one kernel offset at a time
  (``index_select`` + an add into its output phase), which equals ``unfold → gather → fold`` exactly.
* :func:`relevance` recomputes S for the chosen indices differentiably (for training).

One search serves both models: TTSR normalises query and key patches (cosine relevance),
SRNTT normalises only the key patches (``normalize_query=False``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .shift_search import DEFAULT_BUDGET, EPS, patch_norms, search, search_padded

__all__ = ["search", "search_padded", "patch_norms", "transfer", "relevance", "decode_index", "DEFAULT_BUDGET", "EPS"]


def _shift_tables(shapes: Sequence[tuple[int, int]], scale: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per global key index: the flat offset of its patch's corner in the concatenated padded
    value maps of one level (``scale`` = 1, 2, 4), and that map's padded width."""
    bases, widths = [], []
    offset = 0
    for hk, wk in shapes:
        wp, hp = wk * scale + 2 * scale, hk * scale + 2 * scale
        ys, xs = torch.meshgrid(torch.arange(hk, device=device), torch.arange(wk, device=device), indexing="ij")
        bases.append(offset + (ys * scale) * wp + xs * scale)
        widths.append(torch.full((hk * wk,), wp, device=device, dtype=torch.long))
        offset += hp * wp
    return torch.cat([b.reshape(-1) for b in bases]), torch.cat(widths)


FOLD_BYTES = 128 * 2**20  # up to this size transfer uses the reference's unfold → gather → fold


def _transfer_fold(index: torch.Tensor, values: Sequence[torch.Tensor], scale: int) -> torch.Tensor:
    """Unfold every reference, gather the chosen patches, fold (padded output, not divided)."""
    h, w = index.shape
    k = 3 * scale
    cols = torch.cat([F.unfold(v[None], k, padding=scale, stride=scale)[0] for v in values], dim=1)
    gathered = cols.index_select(1, index.reshape(-1))
    out = F.fold(gathered[None], (h * scale + 2 * scale, w * scale + 2 * scale), k, stride=scale)
    return out[0]


def _transfer_offsets(index: torch.Tensor, values: Sequence[torch.Tensor], scale: int) -> torch.Tensor:
    """The same sum built one kernel offset at a time: memory ∝ the output, whatever the sizes."""
    h, w = index.shape
    shapes = [(v.shape[1] // scale, v.shape[2] // scale) for v in values]
    flat = torch.cat([F.pad(v, (scale,) * 4).reshape(v.shape[0], -1) for v in values], dim=1)
    base, width = _shift_tables(shapes, scale, index.device)
    idx = index.reshape(-1)
    corner, row = base[idx], width[idx]
    c = flat.shape[0]
    # Offsets (py + scale·a, px + scale·b) all land on output phase (py, px), shifted by (a, b):
    # summing each phase contiguously, then interleaving once, adds in the same order as the
    # strided adds into the whole map would (bit-identical) at a fraction of the memory traffic.
    phases = flat.new_zeros(c, scale, scale, h + 2, w + 2)
    for py in range(scale):
        for px in range(scale):
            acc = phases[:, py, px]
            for a in range(3):
                for b in range(3):
                    offset = corner + (py + scale * a) * row + px + scale * b
                    acc[:, a : a + h, b : b + w] += flat.index_select(1, offset).view(c, h, w)
    return phases.permute(0, 3, 1, 4, 2).reshape(c, (h + 2) * scale, (w + 2) * scale)


def transfer(
    index: torch.Tensor, values: Sequence[torch.Tensor], scale: int, *, average_overlaps: bool = False
) -> torch.Tensor:
    """Texture map T for ``index`` (H, W) from the reference value maps of one level.

    ``values[i]`` is reference i's (C, h_i·scale, w_i·scale) feature map, where (h_i, w_i) is
    its key grid. Patches are 3·scale wide with stride ``scale`` and padding ``scale`` (3/6/12
    for levels 3/2/1), summed where they overlap and divided by 9 as the reference TTSR does,
    or, with ``average_overlaps`` (SRNTT), by the number of patches covering each pixel (fewer
    than 9 along the border). Differentiable with respect to ``values``. Returns (C, H·scale, W·scale).
    Small problems (up to ``FOLD_BYTES`` of unfolded patches) use unfold → gather → fold; larger
    ones build the same sum offset by offset, so memory stays proportional to the output.
    """
    h, w = index.shape
    k = 3 * scale
    c = values[0].shape[0]
    n_keys = sum(v.shape[1] * v.shape[2] for v in values) // (scale * scale)
    if (n_keys + h * w) * c * k * k * values[0].element_size() <= FOLD_BYTES:
        out = _transfer_fold(index, values, scale)  # small (training crops): fastest, esp. backward
    else:
        out = _transfer_offsets(index, values, scale)
    out = out[:, scale : scale + h * scale, scale : scale + w * scale]
    if not average_overlaps:
        return out / 9.0
    count = out.new_zeros(h * scale + 2 * scale, w * scale + 2 * scale)
    for oy in range(k):
        for ox in range(k):
            count[oy : oy + h * scale : scale, ox : ox + w * scale : scale] += 1
    return out / count[scale : scale + h * scale, scale : scale + w * scale]


def relevance(
    query: torch.Tensor, keys: Sequence[torch.Tensor], index: torch.Tensor, *, normalize_query: bool = True
) -> torch.Tensor:
    """S for given indices, computed directly so gradients reach both feature maps (training).

    Same value as :func:`search` returns for its own indices: the inner product of the
    3×3 query patch with the L2-normalised key patch ``index`` (query normalised too if asked).
    """
    c, h, w = query.shape
    q_pad = F.pad(query, (1, 1, 1, 1))
    flat = torch.cat([F.pad(k, (1, 1, 1, 1)).reshape(c, -1) for k in keys], dim=1)
    base, width = _shift_tables([k.shape[1:] for k in keys], 1, index.device)
    idx = index.reshape(-1)
    corner, row = base[idx], width[idx]
    dot = query.new_zeros(h * w)
    k2 = query.new_zeros(h * w)
    q2 = query.new_zeros(h * w)
    for oy in range(3):
        for ox in range(3):
            kv = flat.index_select(1, corner + oy * row + ox)
            qv = q_pad[:, oy : oy + h, ox : ox + w].reshape(c, -1)
            dot = dot + (kv * qv).sum(0)
            k2 = k2 + (kv * kv).sum(0)
            q2 = q2 + (qv * qv).sum(0)
    s = dot / k2.sqrt().clamp_min(EPS)
    if normalize_query:
        s = s / q2.sqrt().clamp_min(EPS)
    return s.view(h, w)


def decode_index(index: torch.Tensor | np.ndarray, shapes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Global key indices → (..., 3) int array of (reference number, row, column) on the key grid."""
    idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
    sizes = np.array([hk * wk for hk, wk in shapes], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ref = np.searchsorted(np.cumsum(sizes), idx, side="right")
    local = idx - starts[ref]
    widths = np.array([wk for _, wk in shapes], dtype=np.int64)[ref]
    return np.stack([ref, local // widths, local % widths], axis=-1)
