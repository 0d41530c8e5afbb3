"""Exact texture search by shift-sum correlation: ~1/9 of the multiply-adds of the dense search.

The inner product of two k×k×C patches is the sum, over the k² offsets (dy, dx), of per-pixel
C-channel products. So for a band of query rows and a band of key rows (each with its
``k // 2``-pixel halo) one pixel-level product matrix ``P = Q_pixels · K_pixelsᵀ`` (C multiply-adds
per pair instead of k²·C) holds every term, and the patch scores are the sum of k² shifted views
of P — computed separably, k views along x then k along y. Key patches are normalised by dividing
the scores by precomputed patch norms; query normalisation is applied to the final maximum only
(it does not change the argmax). The running max/argmax over key bands is kept in float32.

Layout: both feature maps are zero-padded by ``k // 2``; P of a step is viewed as (query rows,
query columns, key rows, key columns), so the shifted views are 4-D slices and only valid patch
positions are scored. Query rows are streamed: each step multiplies only its new rows and reuses
the products of the previous step's last ``k - 1`` rows, so no query row is multiplied twice.
Product rows are padded to a multiple of 16 floats (the matmul runs 20-25 % slower on rows of,
e.g., 18 × 258). A query too wide for tall key bands within the budget is searched in column
strips (each with its halo columns), so the key bands' halo rows stay a small share of the work.
The work after the product runs as eager torch passes or, on a CPU, as one fused kernel
(``torch.compile``; :func:`use_fused`) that takes the best score per key row with a plain max and
recomputes only the winning row for its column, with the same result.

Work is cut into steps (one band of query rows × one band of key rows × one strip of query
columns); ``progress(done, total)`` is called after each step and ``cancel()`` before it, so a
front end moves and stops within one step (well under a second at the default sizes on a 2-core
CPU).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .defaults import DEFAULT_SEARCH_BUDGET as DEFAULT_BUDGET
from .errors import Cancelled

EPS = 1e-12  # the eps of torch.nn.functional.normalize, used by the reference
BLOCK_ELEMENTS = 12 << 20  # pixel products per step on a CPU (48 MB buffers); CUDA takes bigger steps
CUDA_BLOCK_ELEMENTS = 1 << 26
# multiply-adds (query pixels × key pixels × C) from which a CPU search compiles its fused kernel:
# below, the compilation (≈4 s with inductor's cache warm, ≈20 s cold, once per process) costs
# more than it saves (after the products, the eager passes take ≈ 1/4 of their time, the fused one ≈ 1/8)
FUSE_MIN_MULTIPLY_ADDS = 2e12

__all__ = ["search", "search_padded", "patch_norms", "plan_steps", "count_steps", "prepare_keys", "KeySet", "DEFAULT_BUDGET", "EPS"]


def patch_norms(padded: torch.Tensor, patch: int) -> torch.Tensor:
    """L2 norm of every k×k×C patch of an already padded (C, H+k-1, W+k-1) map: (H, W), float32."""
    sq = padded.float().pow(2).sum(0)[None, None]
    return F.avg_pool2d(sq, patch, stride=1, divisor_override=1)[0, 0].sqrt()


@dataclass
class _Key:
    op: torch.Tensor  # the padded key map (C, h+k-1, w+k-1) in the product dtype (scaled for low precision)
    inv_norm: torch.Tensor  # (h, w) float32: 1 / ‖key patch‖
    scale: float  # the operand's scale (1 for float32)


@dataclass
class KeySet:
    """Reference feature maps made ready for :func:`search_padded` once (padded, converted to the
    product dtype, patch norms), so that searching many query pieces does not redo it."""

    keys: list[_Key]
    shapes: list[tuple[int, int]]
    patch: int
    product_dtype: torch.dtype


def prepare_keys(keys: Sequence[torch.Tensor], *, patch: int = 3,
                 product_dtype: torch.dtype | None = None) -> KeySet:
    """A :class:`KeySet` of (C, h_i, w_i) key maps for ``patch``×``patch`` patches; float16/bfloat16
    operands get one global scale per map so that float16's range holds every per-pixel product
    (the argmax does not depend on it)."""
    if not keys or any(k.dim() != 3 or k.shape[0] != keys[0].shape[0] for k in keys):
        raise ValueError("search expects a non-empty list of (C,h,w) keys with the same C")
    dtype = product_dtype or torch.float32
    low = dtype in (torch.float16, torch.bfloat16)
    r = patch // 2
    prepared = []
    for key in keys:
        k_pad = F.pad(key, (r, r, r, r))
        inv_norm = 1.0 / patch_norms(k_pad, patch).clamp_min(EPS)
        scale = float(key.abs().amax().clamp_min(EPS)) if low else 1.0
        op = (k_pad.float() / scale).to(dtype) if low else k_pad.float().contiguous()
        prepared.append(_Key(op, inv_norm, scale))
    return KeySet(prepared, [tuple(k.shape[1:]) for k in keys], patch, dtype)


def _rows_for(width_q: int, width_k: int, patch: int, n_rows_q: int, n_rows_k: int,
              elements: int, max_query_rows: int | None) -> tuple[int, int]:
    """(query rows per step, key rows per band) for padded widths ``width_q``/``width_k`` whose
    product block ((query rows + halo) × Wq × (key rows + halo) × Wk scores) stays within
    ``elements``. Measured on a 2-core CPU (128²×256², C = 256, rows of aligned length): the rate
    rises with the block up to ~(8-12 query × 32 key rows) and is flat beyond; so first key bands
    of up to 32 rows that leave room for 3 query rows, then as many query rows as fit (at most
    ``max_query_rows``), then the key bands grown into what is left (≤ 64)."""
    halo = patch - 1
    key_rows = min(n_rows_k, 32)
    while key_rows > 1 and (3 + halo) * width_q * (key_rows + halo) * width_k > elements:
        key_rows //= 2
    query_rows = elements // ((key_rows + halo) * width_k * width_q) - halo
    query_rows = max(1, min(n_rows_q, query_rows, max_query_rows or n_rows_q))
    grown = elements // ((query_rows + halo) * width_q * width_k) - halo
    return query_rows, max(key_rows, min(n_rows_k, 64, grown))


def _strip_columns(w: int, width_k: int, n_rows_k: int, patch: int, elements: int) -> int:
    """Query columns per strip: the whole width where a block of 3 query rows × key bands of
    min(h_k, 32) rows fits in ``elements``, else the widest even split of the width that fits (at
    least 16 columns). Tall key bands repeat fewer halo rows (2 of 34 instead of 2 of 6 on a
    1k-wide query); a strip repeats only its 2 halo columns."""
    halo = patch - 1
    fit = elements // ((3 + halo) * (min(n_rows_k, 32) + halo) * width_k) - halo
    if fit >= w:
        return w
    n = math.ceil(w / max(fit, 16))
    return math.ceil(w / n)


def plan_steps(query_shape: tuple[int, int], key_shapes: Sequence[tuple[int, int]], *, patch: int = 3,
               budget_bytes: int = DEFAULT_BUDGET, query_rows: int | None = None,
               key_rows: int | None = None, query_columns: int | None = None,
               device: str | torch.device = "cpu") -> list[tuple[int, int, int, int]]:
    """The search's steps for a (H, W) query and keys (h_i, w_i): a list of (reference number,
    query rows per step, key rows per band, query columns per strip) — one entry per reference;
    ``count_steps`` sums them."""
    h, w = query_shape
    halo = patch - 1
    dev = torch.device(device)
    elements = CUDA_BLOCK_ELEMENTS if dev.type == "cuda" else BLOCK_ELEMENTS
    # three float32 buffers the size of a block (products P, x-sums A, scores S) and per-step
    # temporaries: ~24 bytes per product of the block
    elements = max(1, min(elements, budget_bytes // 24))
    plan = []
    for i, (hk, wk) in enumerate(key_shapes):
        ws = min(w, query_columns or _strip_columns(w, wk + halo, hk, patch, elements))
        qr, kr = _rows_for(ws + halo, wk + halo, patch, h, hk, elements, None if dev.type == "cuda" else 12)
        plan.append((i, query_rows or qr, key_rows or kr, ws))
    return plan


def count_steps(query_shape: tuple[int, int], key_shapes: Sequence[tuple[int, int]],
                plan: Sequence[tuple[int, int, int, int]]) -> int:
    """Number of progress steps of a search with ``plan`` (see :func:`plan_steps`)."""
    h, w = query_shape
    return sum(math.ceil(w / ws) * math.ceil(h / qr) * math.ceil(key_shapes[i][0] / kr) for i, qr, kr, ws in plan)


def _aligned(n: int) -> int:
    """Row length for ``n`` product columns: the next multiple of 16 above ``n``. Rows of a
    multiple of 16 floats run the matmul at full rate (rows of, e.g., 18 × 258 columns ran it
    20-25 % slower on the project's CPU); always padding keeps one stride pattern for the
    compiled kernel (a contiguous block would compile a second one)."""
    return (n // 16 + 1) * 16


def _product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, dtype: torch.dtype) -> None:
    """out (float32) = a @ b, with the operands in ``dtype`` (float32 accumulation on CUDA)."""
    if dtype == torch.float32:
        torch.mm(a, b, out=out)
    elif a.device.type == "cuda":
        try:
            torch.mm(a, b, out_dtype=torch.float32, out=out)
        except (TypeError, RuntimeError):
            out.copy_(torch.mm(a, b))
    else:
        out.copy_(torch.mm(a, b))


def first_max(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last dim of ``s`` and the first position holding it (ties: lowest)."""
    val = s.amax(dim=-1)
    return val, (s == val[..., None]).int().argmax(dim=-1)


def _row_argmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max over the last two dims of s (a, b, rows, cols) with the (row, col) of the first maximum.

    ``torch.max(dim)`` with indices is not vectorised on the CPU (~20× slower than ``amax``), so
    the max is taken with ``amax`` per key row, the winning row found on those (1/cols of the
    data), and only that row searched for the column. Ties go to the lowest (row, col)."""
    row_max = s.amax(dim=3)  # (a, b, rows)
    _, row = row_max.max(dim=2)
    win = s.gather(2, row[:, :, None, None].expand(-1, -1, 1, s.shape[3]))[:, :, 0]  # (a, b, cols)
    val, col = first_max(win)
    return val, row, col


def _patch_scores(p4: torch.Tensor, inv: torch.Tensor, patch: int, a: torch.Tensor | None = None,
                  s: torch.Tensor | None = None) -> torch.Tensor:
    """Patch scores (qb, w, kb, wk) from pixel products ``p4`` (qb+h, w+h, kb+h, wk+h) (h = patch-1,
    query rows/columns × key rows/columns, padded), divided by the key patch norms (``1 / ‖key‖``
    = ``inv`` (kb, wk)): x-sums then y-sums of the shifted views. ``a``/``s``: optional output
    buffers of the x-sums (qb+h, w, kb+h, wk) and the scores (the eager path reuses them)."""
    halo = patch - 1
    qh, wh, kh, wkh = p4.shape
    w, wk = wh - halo, wkh - halo
    qb, kb = qh - halo, kh - halo
    x = [p4[:, dx : dx + w, :, dx : dx + wk] for dx in range(patch)]
    a = torch.add(x[0], x[1], out=a) if patch > 1 else x[0]
    for view in x[2:]:
        a.add_(view)
    y = [a[dy : dy + qb, :, dy : dy + kb] for dy in range(patch)]
    s = torch.add(y[0], y[1], out=s) if patch > 1 else y[0].clone()
    for view in y[2:]:
        s.add_(view)
    return s.mul_(inv)


def _row_scores(p4: torch.Tensor, inv: torch.Tensor, patch: int, row: torch.Tensor) -> torch.Tensor:
    """Scores (qb, w, wk) of one key row per query pixel (``row`` (qb, w)), summed in
    :func:`_patch_scores`' order (x-sums, then y-sums; the same bits)."""
    halo = patch - 1
    qh, wh, _, wkh = p4.shape
    qb, w, wk = qh - halo, wh - halo, wkh - halo
    qi = torch.arange(qb, device=p4.device)[:, None]
    xi = torch.arange(w, device=p4.device)[None, :]
    s = None
    for dy in range(patch):
        a = p4[qi + dy, xi, row + dy, :wk]
        for dx in range(1, patch):
            a = a + p4[qi + dy, xi + dx, row + dy, dx : dx + wk]
        s = a if s is None else s + a
    return s * inv[row]


def _fusable_best(p4: torch.Tensor, inv: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(val, row, col) (qb, w) like :func:`_row_argmax` of the scores, without holding them: the
    best score per key row (a plain max, which vectorises), then the winning row's scores
    recomputed for its column — the part the compiled kernel fuses into passes over the products."""
    _, row = _patch_scores(p4, inv, patch).amax(dim=3).max(dim=2)
    val, col = first_max(_row_scores(p4, inv, patch, row))
    return val, row, col


_FUSED: dict = {}  # "kernel": the compiled _fusable_best, or "broken": why it cannot be used
_FUSED_LOCK = threading.Lock()  # compiling (and calling) from several threads at once is not safe


def _mark_broken(err: Exception) -> None:
    """Remember why the fused kernel cannot be used (first line of the error): never retried."""
    _FUSED.pop("kernel", None)
    _FUSED["broken"] = f"{type(err).__name__}: {err}".splitlines()[0]


def fused_available() -> str | None:
    """None when the fused CPU kernel can be used, else the reason (no C++ compiler, …)."""
    _fused_kernel()
    return _FUSED.get("broken")


def _fused_kernel():
    """torch.compile'd :func:`_fusable_best` (dynamic shapes: one compilation per process and
    patch size, cached on disk by inductor), or None when it cannot be built here."""
    if "kernel" not in _FUSED and "broken" not in _FUSED:
        try:
            import shutil

            if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
                raise RuntimeError("no C++ compiler (g++) on PATH")
            _FUSED["kernel"] = torch.compile(_fusable_best, dynamic=True)
        except Exception as err:  # noqa: BLE001 - any failure: the eager path computes the same
            _mark_broken(err)
    return _FUSED.get("kernel")


def use_fused(fuse: bool | None, device: torch.device, multiply_adds: float) -> bool:
    """Fused kernel: on request, or on a CPU for searches big enough to repay its compilation."""
    if fuse is False or device.type != "cpu":
        return False
    if fuse is None and multiply_adds < FUSE_MIN_MULTIPLY_ADDS:
        return False
    return _fused_kernel() is not None


def _best_fused(p4: torch.Tensor, inv: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(val, row, col) (qb, w) like :func:`_row_argmax` of the scores, by the compiled kernel."""
    kernel = _fused_kernel()
    # sizes 0/1 would compile a kernel of their own; a kernel that failed earlier is not retried
    if kernel is not None and min(inv.shape) >= 2 and min(p4.shape[:2]) > patch:
        from torch.fx.experimental import _config as fx_config

        try:  # no "duck" shapes: sizes that happen to be equal get their own symbols (no recompilation)
            with _FUSED_LOCK, fx_config.patch(use_duck_shape=False):
                return kernel(p4, inv, patch)
        except Exception as err:  # noqa: BLE001 - a failed compilation falls back to the eager path
            _mark_broken(err)
    return _row_argmax(_patch_scores(p4, inv, patch))


@torch.no_grad()
def search_padded(
    q_pad: torch.Tensor,
    keys: Sequence[torch.Tensor] | KeySet,
    *,
    normalize_query: bool = True,
    patch: int = 3,
    budget_bytes: int = DEFAULT_BUDGET,
    query_rows: int | None = None,
    key_rows: int | None = None,
    query_columns: int | None = None,
    product_dtype: torch.dtype | None = None,
    fuse: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`search` for a query map that already carries its ``patch // 2``-pixel border ring
    (C, H + 2r, W + 2r): the ring's features take part in the border patches (zeros at an image
    border, the neighbours' features for a piece cut from a larger image). ``keys`` may be a
    :class:`KeySet` made by :func:`prepare_keys` (its patch size and product dtype then apply).
    Returns (S, index) (H, W)."""
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be odd, got {patch}")
    if not isinstance(keys, KeySet):
        keys = prepare_keys(keys, patch=patch, product_dtype=product_dtype)
    patch, dtype = keys.patch, keys.product_dtype
    if q_pad.dim() != 3 or keys.keys[0].op.shape[0] != q_pad.shape[0]:
        raise ValueError("search expects a (C,H,W) query and a non-empty list of (C,h,w) keys with the same C")
    halo = patch - 1
    c, hp, wp = q_pad.shape
    h, w = hp - halo, wp - halo
    if h < 1 or w < 1:
        raise ValueError(f"padded query {tuple(q_pad.shape)} is smaller than one {patch}×{patch} patch")
    dev = q_pad.device
    shapes = keys.shapes
    plan = plan_steps((h, w), shapes, patch=patch, budget_bytes=budget_bytes, query_rows=query_rows,
                      key_rows=key_rows, query_columns=query_columns, device=dev)
    total = count_steps((h, w), shapes, plan)
    fused = use_fused(fuse, dev, float(h * w) * sum(hk * wk for hk, wk in shapes) * c)

    # operands in the product dtype, scaled like the keys' (see prepare_keys)
    low = dtype in (torch.float16, torch.bfloat16)
    q_scale = float(q_pad.abs().amax().clamp_min(EPS)) if low else 1.0
    q_op = (q_pad.float() / q_scale).to(dtype) if low else q_pad.float()
    q_norm = patch_norms(q_pad, patch) if normalize_query else None
    strips: dict[tuple[int, int], torch.Tensor] = {}  # (first column, columns): its pixels as rows (Hp·(ws+halo), C)

    best = torch.full((h, w), -math.inf, device=dev, dtype=torch.float32)
    best_idx = torch.zeros((h, w), dtype=torch.long, device=dev)
    done = 0
    offset = 0
    for (_, qr, kr, ws), key, (hk, wk) in zip(plan, keys.keys, shapes):
        wkp, wsp = wk + halo, ws + halo
        k_op, inv_norm, k_scale = key.op, key.inv_norm, key.scale
        width = _aligned((kr + halo) * wkp)
        # allocated once per reference (large buffers are not recycled by the CPU allocator)
        p_buf = torch.empty((qr + halo) * wsp * width, device=dev)
        a_buf = None if fused else torch.empty((qr + halo) * ws * (kr + halo) * wk, device=dev)
        s_buf = None if fused else torch.empty(qr * ws * kr * wk, device=dev)
        for y0 in range(0, hk, kr):
            kb = min(kr, hk - y0)
            nk = (kb + halo) * wkp
            k_cols = F.pad(k_op[:, y0 : y0 + kb + halo].reshape(c, nk), (0, _aligned(nk) - nk))  # (C, ≥ (kb+halo)·Wk)
            npad = k_cols.shape[1]
            inv = inv_norm[y0 : y0 + kb]
            for x0 in range(0, w, ws):
                sw = min(ws, w - x0)
                swp = sw + halo
                if (x0, sw) not in strips:
                    strips[(x0, sw)] = q_op[:, :, x0 : x0 + swp].reshape(c, -1).t()  # (Hp·swp, C)
                q_flat = strips[(x0, sw)]
                for q0 in range(0, h, qr):
                    if cancel is not None and cancel():
                        raise Cancelled("cancelled")
                    qb = min(qr, h - q0)
                    # pixel products of the step's padded query rows; all but the first step reuse
                    # the previous step's last `halo` rows (moved to the front), so no row is multiplied twice
                    first = q0 == 0
                    new0 = q0 if first else q0 + halo
                    p = p_buf[: (qb + halo) * swp * npad].view((qb + halo) * swp, npad)
                    done_rows = 0 if first else halo * swp
                    _product(q_flat[new0 * swp : (q0 + qb + halo) * swp], k_cols, p[done_rows:], dtype)
                    p4 = p[:, :nk].view(qb + halo, swp, kb + halo, wkp)
                    if fused:
                        val, row, col = _best_fused(p4, inv, patch)
                    else:
                        a = a_buf[: (qb + halo) * sw * (kb + halo) * wk].view(qb + halo, sw, kb + halo, wk)
                        s = s_buf[: qb * sw * kb * wk].view(qb, sw, kb, wk)
                        val, row, col = _row_argmax(_patch_scores(p4, inv, patch, a, s))
                    val = val * (q_scale * k_scale)
                    arg = offset + (y0 + row) * wk + col
                    cell = (slice(q0, q0 + qb), slice(x0, x0 + sw))
                    better = val > best[cell]
                    best[cell] = torch.where(better, val, best[cell])
                    best_idx[cell] = torch.where(better, arg, best_idx[cell])
                    if q0 + qr < h and halo:
                        tail = p[qb * swp :]
                        p[: halo * swp].copy_(tail.clone() if qb < halo else tail)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        offset += hk * wk
    if normalize_query:
        best = best / q_norm.clamp_min(EPS)
    return best.to(q_pad.dtype), best_idx


def search(query: torch.Tensor, keys: Sequence[torch.Tensor], *, patch: int = 3,
           **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching key patch for every query patch (exact, memory-bounded).

    ``query`` is a (C, H, W) feature map, ``keys`` a list of (C, h_i, w_i) maps (one per
    reference). Patches are ``patch``×``patch`` with zero padding ``patch // 2`` at stride 1; key
    patches are L2-normalised, query patches too when ``normalize_query``. Returns ``(S, index)``,
    both (H, W): the best inner product and the global key index (keys numbered reference by
    reference, row-major) — the dense formulation's answer up to float rounding (exact ties: the
    lowest index wins). ``product_dtype`` float16/bfloat16 runs the pixel products in that type
    (for CUDA; sums and the running max stay float32). ``query_rows``/``key_rows`` override the
    step sizes and ``query_columns`` the width of the query strips (wide queries are searched in
    strips, so that key bands stay tall); ``progress``/``cancel`` see every step (:class:`Cancelled` stops the search).
    Scratch memory stays within ``budget_bytes`` (beyond copies of the padded maps and per-pixel
    norms); a budget below one query row × one key row (with halos) is raised to that minimum.
    ``fuse`` chooses the fused CPU kernel for the work after each product (None: only for big
    searches, :func:`use_fused`). Options (``normalize_query``, ``budget_bytes``, ``query_rows``,
    ``key_rows``, ``query_columns``, ``product_dtype``, ``fuse``, ``progress``, ``cancel``) are :func:`search_padded`'s.
    """
    if query.dim() != 3:
        raise ValueError("search expects a (C,H,W) query and a non-empty list of (C,h,w) keys with the same C")
    r = patch // 2
    return search_padded(F.pad(query, (r, r, r, r)), keys, patch=patch, **options)
