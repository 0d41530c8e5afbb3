"""Exact, memory-bounded texture search and transfer.

The reference TTSR builds the full (Ref patches × LR patches) relevance matrix and gathers
unfolded patches for every LR position; both grow with the product of the image sizes. Here
the same quantities are computed without ever holding either:

* :func:`search` streams over chunks of query and key patches, keeping a running max and
  argmax, so memory is bounded by ``budget_bytes`` whatever the sizes. It searches the union of
  several reference images (a global patch index says which reference and where).
* :func:`transfer` rebuilds the folded texture maps T one kernel offset at a time
  (``index_select`` + strided add), which equals ``unfold → gather → fold`` exactly.
* :func:`relevance` recomputes S for the chosen indices differentiably (for training).

One search serves both models: TTSR normalises query and key patches (cosine relevance),
SRNTT normalises only the key patches (``normalize_query=False``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-12  # the eps of torch.nn.functional.normalize, used by the reference
DEFAULT_BUDGET = 256 * 2**20  # bytes of scratch memory one search may use

__all__ = ["search", "transfer", "relevance", "decode_index", "DEFAULT_BUDGET", "EPS"]


def _patch_cols(padded: torch.Tensor, p0: int, p1: int, width: int, k: int) -> torch.Tensor:
    """k×k patches of positions p0..p1 (row-major) as (C·k·k, n) columns in F.unfold order,
    gathered directly so that only these n patches are ever held."""
    c, _, wp = padded.shape
    dev = padded.device
    pos = torch.arange(p0, p1, device=dev)
    corner = (pos // width) * wp + pos % width
    offs = (torch.arange(k, device=dev)[:, None] * wp + torch.arange(k, device=dev)).reshape(-1, 1)
    cols = padded.reshape(c, -1).index_select(1, (offs + corner).reshape(-1))  # (C, k·k·n)
    return cols.view(c * k * k, p1 - p0)


def _normalize_cols(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True).clamp_min(EPS)


def _chunk_sizes(n_query: int, dim: int, itemsize: int, budget: int, patch: int = 3) -> tuple[int, int]:
    """Query and key chunk lengths whose scratch memory stays within ``budget`` bytes.

    Gathering n patches holds their int64 indices, the patches and their normalised copy;
    a query chunk keeps its normalised patches and ~64 bytes of running max/argmax
    temporaries per position while the keys stream; a key chunk adds one score per query.
    Budgets below one query and one key patch are raised to that minimum.
    """
    gather = 2 * dim * itemsize + 8 * (patch * patch + 2)  # bytes per gathered position
    query_chunk = max(1, min(n_query, budget // (2 * gather)))
    left = budget - query_chunk * (dim * itemsize + 64)
    key_chunk = max(1, left // (gather + itemsize * query_chunk))
    return query_chunk, key_chunk


@torch.no_grad()
def search(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    *,
    normalize_query: bool = True,
    patch: int = 3,
    budget_bytes: int = DEFAULT_BUDGET,
    query_chunk: int | None = None,
    key_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching key patch for every query patch.

    ``query`` is a (C, H, W) feature map, ``keys`` a list of (C, h_i, w_i) maps (one per
    reference). Patches are ``patch``×``patch`` with zero padding ``patch // 2`` at stride 1,
    key patches are L2-normalised and query patches too when ``normalize_query``.
    Returns ``(S, index)``, both (H, W): the best inner product and the global key index
    (keys numbered reference by reference, row-major), identical to the dense formulation up
    to exact ties (the lowest index wins).
    """
    if query.dim() != 3 or not keys or any(k.dim() != 3 or k.shape[0] != query.shape[0] for k in keys):
        raise ValueError("search expects a (C,H,W) query and a non-empty list of (C,h,w) keys with the same C")
    pad = patch // 2
    c, h, w = query.shape
    dim = c * patch * patch
    n_query = h * w
    auto_q, auto_k = _chunk_sizes(n_query, dim, query.element_size(), budget_bytes, patch)
    query_chunk = query_chunk or auto_q
    key_chunk = key_chunk or auto_k

    q_pad = F.pad(query, (pad, pad, pad, pad))
    k_pads = [F.pad(k, (pad, pad, pad, pad)) for k in keys]
    best = torch.full((n_query,), -math.inf, device=query.device, dtype=torch.float32)
    best_idx = torch.zeros(n_query, dtype=torch.long, device=query.device)

    for q0 in range(0, n_query, query_chunk):
        q1 = min(n_query, q0 + query_chunk)
        qp_t = _patch_cols(q_pad, q0, q1, w, patch)  # (dim, n): the layout the matmul wants
        if normalize_query:
            qp_t = _normalize_cols(qp_t)
        run_val = best[q0:q1]
        run_idx = best_idx[q0:q1]
        offset = 0
        for kp_pad, key in zip(k_pads, keys):
            kw = key.shape[2]
            n_key = key.shape[1] * kw
            for k0 in range(0, n_key, key_chunk):
                k1 = min(n_key, k0 + key_chunk)
                kp = _normalize_cols(_patch_cols(kp_pad, k0, k1, kw, patch))
                val, arg = (kp.t() @ qp_t).max(dim=0)
                del kp  # free before the next chunk's patches are gathered
                val = val.float()
                better = val > run_val
                run_val = torch.where(better, val, run_val)
                run_idx = torch.where(better, arg + (offset + k0), run_idx)
            offset += n_key
        best[q0:q1] = run_val
        best_idx[q0:q1] = run_idx
    return best.view(h, w).to(query.dtype), best_idx.view(h, w)


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
    k = 3 * scale
    shapes = [(v.shape[1] // scale, v.shape[2] // scale) for v in values]
    flat = torch.cat([F.pad(v, (scale,) * 4).reshape(v.shape[0], -1) for v in values], dim=1)
    base, width = _shift_tables(shapes, scale, index.device)
    idx = index.reshape(-1)
    corner, row = base[idx], width[idx]
    c = flat.shape[0]
    out = flat.new_zeros(c, h * scale + 2 * scale, w * scale + 2 * scale)
    for oy in range(k):
        for ox in range(k):
            vals = flat.index_select(1, corner + oy * row + ox).view(c, h, w)
            out[:, oy : oy + h * scale : scale, ox : ox + w * scale : scale] += vals
    return out


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
