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
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import Cancelled
from .shift_search import DEFAULT_BUDGET, EPS, KeySet, count_steps, first_max, patch_norms, plan_steps, search

__all__ = ["coarse_search_padded", "coarse_steps", "DEFAULT_FACTOR", "DEFAULT_MARGIN"]

DEFAULT_FACTOR = 2  # pooling of the coarse search: 16× fewer pairs
DEFAULT_MARGIN = 1  # extra patches on each side of the coarse winner's cell in the refinement


def _key_maps(keys: Sequence[torch.Tensor] | KeySet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per key: its (C, h, w) float32 map and 1/‖key patch‖ (h, w) — a :class:`KeySet`'s own
    (operands unpadded and unscaled), else computed."""
    if not isinstance(keys, KeySet):
        return [(k.float(), 1.0 / patch_norms(F.pad(k.float(), (1, 1, 1, 1)), 3).clamp_min(EPS)) for k in keys]
    r = keys.patch // 2
    return [(k.op[:, r : k.op.shape[1] - r, r : k.op.shape[2] - r].float() * k.scale, k.inv_norm)
            for k in keys.keys]


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
    keys: Sequence[torch.Tensor] | KeySet,
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
    the exact search's numbering; S is the exact relevance of the chosen patch."""
    if factor < 1 or margin < 0:
        raise ValueError(f"factor must be ≥ 1 and margin ≥ 0, got {factor} and {margin}")
    if isinstance(keys, KeySet) and keys.patch != 3:
        raise ValueError("the coarse-to-fine search is for 3×3 patches")
    pairs = _key_maps(keys)
    maps, inv_norms = [m for m, _ in pairs], [i for _, i in pairs]
    if q_pad.dim() != 3 or not maps or any(k.dim() != 3 or k.shape[0] != q_pad.shape[0] for k in maps):
        raise ValueError("search expects a (C,H,W) query and a non-empty list of (C,h,w) keys with the same C")
    c, hp, wp = q_pad.shape
    h, w = hp - 2, wp - 2
    if h < 1 or w < 1:
        raise ValueError(f"padded query {tuple(q_pad.shape)} is smaller than one 3×3 patch")
    dev = q_pad.device
    q = q_pad.float()
    side_q, side_k = factor + 2, factor + 2 * margin + 2  # cell / window with their patch halo
    hc, wc = math.ceil(h / factor), math.ceil(w / factor)
    rows = _cell_rows(wc, c, side_q, side_k, budget_bytes)
    coarse_k = [(math.ceil(k.shape[1] / factor), math.ceil(k.shape[2] / factor)) for k in maps]
    total = coarse_steps((h, w), [tuple(k.shape[1:]) for k in maps], channels=c, factor=factor,
                         margin=margin, budget_bytes=budget_bytes, device=dev)

    # 1. the exact search on pooled maps
    def pool(t):
        return F.avg_pool2d(t[None], factor, ceil_mode=True)[0]

    coarse_done = 0

    def coarse_progress(done, _total):
        nonlocal coarse_done
        coarse_done = done
        if progress is not None:
            progress(done, total)

    _, coarse_idx = search(pool(q[:, 1:-1, 1:-1]), [pool(k) for k in maps], normalize_query=normalize_query,
                           budget_bytes=budget_bytes, fuse=fuse, progress=coarse_progress, cancel=cancel)

    # 2. every key map zero-padded so that any window of any cell lies inside it; pixel-major
    #    tables of all references (one row per key pixel) and of 1/‖key patch‖ (0 off the map)
    border = 1 + margin + factor
    tables, inv_tables, bases, widths, sizes, ref_of = [], [], [], [], [], []
    flat_offset, index_offset = 0, 0
    for i, (k, inv) in enumerate(zip(maps, inv_norms)):
        hk, wk = k.shape[1:]
        big = F.pad(k, (border,) * 4)
        tables.append(big.permute(1, 2, 0).reshape(-1, c))
        inv_tables.append(F.pad(inv, (border,) * 4).reshape(-1))  # indexed like the big map
        bases.append((flat_offset, index_offset))
        widths.append(wk + 2 * border)
        sizes.append((hk, wk))
        ref_of.append(torch.full((coarse_k[i][0] * coarse_k[i][1],), i, dtype=torch.long))
        flat_offset += big.shape[1] * big.shape[2]
        index_offset += hk * wk
    table = torch.cat(tables)
    inv_table = torch.cat(inv_tables)
    ref_of = torch.cat(ref_of).to(dev)
    t_base = torch.tensor([b[0] for b in bases], device=dev)
    i_base = torch.tensor([b[1] for b in bases], device=dev)
    t_width = torch.tensor(widths, device=dev)
    k_h = torch.tensor([s[0] for s in sizes], device=dev)
    k_w = torch.tensor([s[1] for s in sizes], device=dev)
    c_base = torch.tensor([0] + [a * b for a, b in coarse_k[:-1]], device=dev).cumsum(0)
    c_width = torch.tensor([b for _, b in coarse_k], device=dev)

    # coarse winner of every cell → its reference and the top-left patch centre of its window
    ref = ref_of[coarse_idx.reshape(-1)].view(hc, wc)
    local = coarse_idx - c_base[ref]
    y0 = (local // c_width[ref]) * factor - margin
    x0 = (local % c_width[ref]) * factor - margin

    # query cells with their halo: rows of cells of (side_q)² pixels
    q_cells = F.pad(q, (0, wc * factor - w, 0, hc * factor - h))
    q_cells = q_cells.unfold(1, side_q, factor).unfold(2, side_q, factor)  # (C, hc, wc, sq, sq)
    win = torch.arange(side_k, device=dev)
    cand = torch.arange(side_k - 2, device=dev)
    best = torch.empty(hc * factor, wc * factor, device=dev)
    best_idx = torch.empty(hc * factor, wc * factor, dtype=torch.long, device=dev)
    n = factor + 2 * margin
    for r0 in range(0, hc, rows):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        r1 = min(hc, r0 + rows)
        rf, ys, xs = ref[r0:r1], y0[r0:r1], x0[r0:r1]  # (rows, wc)
        m = rf.numel()
        qc = q_cells[:, r0:r1].permute(1, 2, 3, 4, 0).reshape(m, side_q * side_q, c)
        # window pixels (patch centres y0-1 … y0+n, in the big map: + border)
        py = (ys[..., None] + border - 1 + win).reshape(m, side_k, 1)
        px = (xs[..., None] + border - 1 + win).reshape(m, 1, side_k)
        pix = (t_base[rf].reshape(m, 1, 1) + py * t_width[rf].reshape(m, 1, 1) + px).reshape(m, -1)
        kc = table[pix]  # (m, side_k², C)
        prod = torch.bmm(qc, kc.transpose(1, 2)).view(m, side_q, side_q, side_k, side_k)
        # shift-sums: score[cell, qy, qx, ky, kx] over the 3×3 patch offsets (x first, then y)
        a = prod[:, :, 0:factor, :, 0:n] + prod[:, :, 1 : factor + 1, :, 1 : n + 1]
        a = a + prod[:, :, 2 : factor + 2, :, 2 : n + 2]
        s = a[:, 0:factor, :, 0:n] + a[:, 1 : factor + 1, :, 1 : n + 1]
        s = s + a[:, 2 : factor + 2, :, 2 : n + 2]  # (m, f, f, n, n)
        # 1/‖key patch‖ at the candidates' centres; candidates off the reference never win
        cy = (ys[..., None] + cand).reshape(m, n, 1)
        cx = (xs[..., None] + cand).reshape(m, 1, n)
        centre = t_base[rf].reshape(m, 1, 1) + (cy + border) * t_width[rf].reshape(m, 1, 1) + cx + border
        inv = inv_table[centre]  # (m, n, n)
        inside = (cy >= 0) & (cy < k_h[rf].reshape(m, 1, 1)) & (cx >= 0) & (cx < k_w[rf].reshape(m, 1, 1))
        score = (s * inv[:, None, None]).masked_fill(~inside[:, None, None], -math.inf)
        score = score.reshape(m, factor, factor, n * n)
        val, pick = first_max(score)  # ties: the first = the lowest index (the window is row-major)
        gy = ys.reshape(m, 1, 1) + pick // n
        gx = xs.reshape(m, 1, 1) + pick % n
        gidx = i_base[rf].reshape(m, 1, 1) + gy * k_w[rf].reshape(m, 1, 1) + gx
        shape = (r1 - r0, wc, factor, factor)
        best[r0 * factor : r1 * factor] = val.view(shape).permute(0, 2, 1, 3).reshape(-1, wc * factor)
        best_idx[r0 * factor : r1 * factor] = gidx.view(shape).permute(0, 2, 1, 3).reshape(-1, wc * factor)
        if progress is not None:
            progress(coarse_done + 1 + r0 // rows, total)
    best, best_idx = best[:h, :w], best_idx[:h, :w]
    if normalize_query:
        best = best / patch_norms(q_pad, 3).clamp_min(EPS)
    return best.to(q_pad.dtype), best_idx
