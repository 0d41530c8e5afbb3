"""Approximate texture search, coarse to fine — an option, never the default.

For huge reference sets the exact search (:mod:`.shift_search`) costs N_query × N_key pixel
products. Here the query and the keys are first average-pooled by ``factor``; the exact search
matches the pooled maps (``factor⁴`` fewer pairs). Then every ``factor × factor`` cell of query
pixels scores, exactly and on the full grid, the key patches in a window of
``factor + 2·margin`` patches per axis around its coarse winner (scaled back to the full grid),
and each pixel keeps its best. The refinement is one small batched matmul per chunk of cells
(the cell's query pixels with their halo × the window's key pixels with theirs) and the
shift-sums of :mod:`.shift_search`, so it costs ~(factor + 2·margin + 2)² · C multiply-adds per
query pixel whatever the reference size.

The index is the exact one wherever the true best patch lies in the window of its cell's coarse
winner; elsewhere it is a good, not the best, patch (S is exact for the patch chosen).
``bench/coarse_search.py`` measures index agreement, S and the output's PSNR against the exact
search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import Cancelled
from .shift_search import (DEFAULT_BUDGET, EPS, KeySet, count_steps, first_max, patch_norms, plan_steps,
                           prepare_keys, search)

__all__ = ["coarse_search_padded", "coarse_steps", "prepare_coarse_keys", "CoarseKeys", "DEFAULT_FACTOR",
           "DEFAULT_MARGIN"]

DEFAULT_FACTOR = 2  # pooling of the coarse search: 16× fewer pairs
DEFAULT_MARGIN = 1  # extra patches on each side of the coarse winner's cell in the refinement


def _key_maps(keys: Sequence[torch.Tensor] | KeySet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per key: its (C, h, w) float32 map and 1/‖key patch‖ (h, w), from the exact search's
    :class:`KeySet` (operands unpadded and unscaled; made here from plain maps)."""
    if not isinstance(keys, KeySet):
        keys = prepare_keys(keys)
    if keys.patch != 3:
        raise ValueError("the coarse-to-fine search is for 3×3 patches")
    return [(k.op[:, 1:-1, 1:-1].float() * k.scale, k.inv_norm) for k in keys.keys]


@dataclass
class CoarseKeys:
    """Reference feature maps made ready for :func:`coarse_search_padded` once (like
    :class:`~napari_refsr.shift_search.KeySet` for the exact search): the pooled maps for the
    coarse search, and one pixel-major table of every key map, zero-padded so that any window
    of any cell lies inside it, with 1/‖key patch‖ at each patch centre (0 off the maps)."""

    pooled: KeySet
    table: torch.Tensor  # (Σ padded pixels, C) float32
    inv_table: torch.Tensor  # (Σ padded pixels,) float32
    shapes: list[tuple[int, int]]  # (h, w) of each key map
    factor: int
    margin: int
    border: int  # zero pixels around each map in the table
    ref_of: torch.Tensor  # (Σ pooled keys,): the reference of each pooled key
    table_base: torch.Tensor  # per reference: first row of its map in the table
    table_width: torch.Tensor  # per reference: padded width
    index_base: torch.Tensor  # per reference: its first global key index
    heights: torch.Tensor
    widths: torch.Tensor
    pooled_base: torch.Tensor  # per reference: its first pooled key index
    pooled_width: torch.Tensor


def prepare_coarse_keys(keys: Sequence[torch.Tensor] | KeySet, *, factor: int = DEFAULT_FACTOR,
                        margin: int = DEFAULT_MARGIN) -> CoarseKeys:
    """:class:`CoarseKeys` of (C, h_i, w_i) key maps (or of an exact search's :class:`KeySet`)."""
    if factor < 1 or margin < 0:
        raise ValueError(f"factor must be ≥ 1 and margin ≥ 0, got {factor} and {margin}")
    pairs = _key_maps(keys)  # checked by prepare_keys: non-empty, (C, h, w), one C
    c, dev = pairs[0][0].shape[0], pairs[0][0].device
    border = 1 + margin + factor
    shapes = [tuple(k.shape[1:]) for k, _ in pairs]
    padded = [(h + 2 * border) * (w + 2 * border) for h, w in shapes]
    table = torch.zeros(sum(padded), c, device=dev)
    inv_table = torch.zeros(sum(padded), device=dev)
    pooled, pooled_shapes, ref_of = [], [], []
    row = 0
    for i, ((k, inv), (h, w), n) in enumerate(zip(pairs, shapes, padded)):
        inner = (slice(border, border + h), slice(border, border + w))
        table[row : row + n].view(h + 2 * border, w + 2 * border, c)[inner] = k.permute(1, 2, 0)
        inv_table[row : row + n].view(h + 2 * border, w + 2 * border)[inner] = inv
        pooled.append(F.avg_pool2d(k[None], factor, ceil_mode=True)[0])
        pooled_shapes.append(tuple(pooled[-1].shape[1:]))
        ref_of.append(torch.full((pooled_shapes[-1][0] * pooled_shapes[-1][1],), i, dtype=torch.long, device=dev))
        row += n

    def starts(sizes):
        return torch.tensor([0, *sizes[:-1]], device=dev).cumsum(0)

    def column(values):
        return torch.tensor(values, device=dev)

    return CoarseKeys(
        pooled=prepare_keys(pooled), table=table, inv_table=inv_table, shapes=shapes,
        factor=factor, margin=margin, border=border, ref_of=torch.cat(ref_of),
        table_base=starts(padded), table_width=column([w + 2 * border for _, w in shapes]),
        index_base=starts([h * w for h, w in shapes]), heights=column([h for h, _ in shapes]),
        widths=column([w for _, w in shapes]), pooled_base=starts([h * w for h, w in pooled_shapes]),
        pooled_width=column([w for _, w in pooled_shapes]))


def _cell_rows(n_cells_x: int, channels: int, side_q: int, side_k: int, budget_bytes: int) -> int:
    """Rows of cells per refinement chunk: the gathered query and key pixels and the products of a
    chunk stay within ``budget_bytes``."""
    per_cell = 4 * (channels * (side_q**2 + side_k**2) + 3 * side_q**2 * side_k**2)
    return max(1, budget_bytes // (per_cell * max(1, n_cells_x)))


def coarse_steps(query_shape: tuple[int, int], key_shapes: Sequence[tuple[int, int]], *, channels: int,
                 factor: int = DEFAULT_FACTOR, margin: int = DEFAULT_MARGIN,
                 budget_bytes: int = DEFAULT_BUDGET, device: str | torch.device = "cpu") -> int:
    """Progress steps of :func:`coarse_search_padded`: the coarse search's, then one per chunk."""
    h, w = query_shape
    coarse_q = (math.ceil(h / factor), math.ceil(w / factor))
    coarse_k = [(math.ceil(hk / factor), math.ceil(wk / factor)) for hk, wk in key_shapes]
    steps = count_steps(coarse_q, coarse_k, plan_steps(coarse_q, coarse_k, budget_bytes=budget_bytes, device=device))
    rows = _cell_rows(coarse_q[1], channels, factor + 2, factor + 2 * margin + 2, budget_bytes)
    return steps + math.ceil(coarse_q[0] / rows)


@torch.no_grad()
def coarse_search_padded(
    q_pad: torch.Tensor,
    keys: Sequence[torch.Tensor] | KeySet | CoarseKeys,
    *,
    factor: int = DEFAULT_FACTOR,
    margin: int = DEFAULT_MARGIN,
    normalize_query: bool = True,
    budget_bytes: int = DEFAULT_BUDGET,
    fuse: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate :func:`napari_refsr.shift_search.search_padded` (3×3 patches): (S, index) (H, W)
    for a query (C, H+2, W+2) that carries its 1-pixel ring, by a coarse search on maps pooled by
    ``factor`` and an exact refinement in a window around each cell's coarse winner. Indices use
    the exact search's numbering; S is the exact relevance of the chosen patch. ``keys`` may be
    :class:`CoarseKeys` made once by :func:`prepare_coarse_keys` (its factor and margin apply)."""
    if not isinstance(keys, CoarseKeys):
        keys = prepare_coarse_keys(keys, factor=factor, margin=margin)
    ck, factor, margin, border = keys, keys.factor, keys.margin, keys.border
    c, hp, wp = q_pad.shape if q_pad.dim() == 3 else (0, 0, 0)
    if q_pad.dim() != 3 or ck.table.shape[1] != c:
        raise ValueError("search expects a (C,H,W) query and a non-empty list of (C,h,w) keys with the same C")
    h, w = hp - 2, wp - 2
    if h < 1 or w < 1:
        raise ValueError(f"padded query {tuple(q_pad.shape)} is smaller than one 3×3 patch")
    dev = q_pad.device
    q = q_pad.float()
    side_q, side_k, n = factor + 2, factor + 2 * margin + 2, factor + 2 * margin  # cell, window (+ halo), candidates
    hc, wc = math.ceil(h / factor), math.ceil(w / factor)
    rows = _cell_rows(wc, c, side_q, side_k, budget_bytes)
    total = coarse_steps((h, w), ck.shapes, channels=c, factor=factor, margin=margin, budget_bytes=budget_bytes,
                         device=dev)

    # 1. the exact search on the pooled maps
    coarse_done = 0

    def coarse_progress(done, _total):
        nonlocal coarse_done
        coarse_done = done
        if progress is not None:
            progress(done, total)

    pooled_q = F.avg_pool2d(q[None, :, 1:-1, 1:-1], factor, ceil_mode=True)[0]
    _, coarse_idx = search(pooled_q, ck.pooled, normalize_query=normalize_query, budget_bytes=budget_bytes,
                           fuse=fuse, progress=coarse_progress, cancel=cancel)

    # 2. each cell's coarse winner → its reference and the first patch centre of its window
    ref = ck.ref_of[coarse_idx.reshape(-1)].view(hc, wc)
    local = coarse_idx - ck.pooled_base[ref]
    y0 = (local // ck.pooled_width[ref]) * factor - margin
    x0 = (local % ck.pooled_width[ref]) * factor - margin
    # the query cells with their halo, (C, hc, wc, side_q, side_q)
    q_cells = F.pad(q, (0, wc * factor - w, 0, hc * factor - h)).unfold(1, side_q, factor).unfold(2, side_q, factor)
    win = torch.arange(side_k, device=dev)
    cand = torch.arange(n, device=dev)
    home = margin * n + margin  # the candidate at the coarse winner itself: always on the map
    best = torch.empty(hc * factor, wc * factor, device=dev)
    best_idx = torch.empty(hc * factor, wc * factor, dtype=torch.long, device=dev)
    for r0 in range(0, hc, rows):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        r1 = min(hc, r0 + rows)
        rf, ys, xs = ref[r0:r1], y0[r0:r1], x0[r0:r1]  # (rows, wc)
        m = rf.numel()
        base, width = ck.table_base[rf].reshape(m, 1, 1), ck.table_width[rf].reshape(m, 1, 1)
        qc = q_cells[:, r0:r1].permute(1, 2, 3, 4, 0).reshape(m, side_q * side_q, c)
        # the window's pixels: patch centres y0 … y0+n-1 with their halo, in the padded map
        py = (ys[..., None] + border - 1 + win).reshape(m, side_k, 1)
        px = (xs[..., None] + border - 1 + win).reshape(m, 1, side_k)
        kc = ck.table[(base + py * width + px).reshape(m, -1)]  # (m, side_k², C)
        prod = torch.bmm(qc, kc.transpose(1, 2)).view(m, side_q, side_q, side_k, side_k)
        # shift-sums: score[cell, qy, qx, ky, kx] over the 3×3 patch offsets (x first, then y)
        a = prod[:, :, 0:factor, :, 0:n] + prod[:, :, 1 : factor + 1, :, 1 : n + 1]
        a = a + prod[:, :, 2 : factor + 2, :, 2 : n + 2]
        s = a[:, 0:factor, :, 0:n] + a[:, 1 : factor + 1, :, 1 : n + 1]
        s = s + a[:, 2 : factor + 2, :, 2 : n + 2]  # (m, f, f, n, n)
        # ÷ ‖key patch‖ at the candidates' centres; candidates off the reference never win
        cy = (ys[..., None] + cand).reshape(m, n, 1)
        cx = (xs[..., None] + cand).reshape(m, 1, n)
        inv = ck.inv_table[base + (cy + border) * width + cx + border]  # (m, n, n)
        inside = ((cy >= 0) & (cy < ck.heights[rf].reshape(m, 1, 1)) & (cx >= 0)
                  & (cx < ck.widths[rf].reshape(m, 1, 1))).reshape(m, 1, 1, n * n)
        score = (s * inv[:, None, None]).reshape(m, factor, factor, n * n).masked_fill(~inside, -math.inf)
        val, pick = first_max(score)  # ties: the first = the lowest index (the window is row-major)
        # a query patch whose scores are all NaN or -inf keeps the coarse winner (a valid index)
        pick = torch.where(inside.expand_as(score).gather(3, pick[..., None])[..., 0], pick, home)
        gidx = (ck.index_base[rf].reshape(m, 1, 1) + (ys.reshape(m, 1, 1) + pick // n) * ck.widths[rf].reshape(m, 1, 1)
                + xs.reshape(m, 1, 1) + pick % n)
        shape = (r1 - r0, wc, factor, factor)
        best[r0 * factor : r1 * factor] = val.view(shape).permute(0, 2, 1, 3).reshape(-1, wc * factor)
        best_idx[r0 * factor : r1 * factor] = gidx.view(shape).permute(0, 2, 1, 3).reshape(-1, wc * factor)
        if progress is not None:
            progress(coarse_done + 1 + r0 // rows, total)
    best, best_idx = best[:h, :w], best_idx[:h, :w]
    if normalize_query:
        best = best / patch_norms(q_pad, 3).clamp_min(EPS)
    return best.to(q_pad.dtype), best_idx
