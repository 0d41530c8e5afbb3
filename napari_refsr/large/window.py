"""The whole image's intensity window, computed chunk by chunk (never the whole array in memory).

:func:`~napari_refsr.pipeline.upscale_nd` maps a non-uint8 image through one window, the
``np.percentile`` of the whole array. Here the same two numbers come from a histogram that dask
sums over the chunks: exact (bit for bit as ``np.percentile``) for integer images of up to 16
bits, whose histogram has one bin per value; for float and wider integer images the order
statistics are located within 1/65536 of the value range (pass ``value_range`` to fix it exactly).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from ..errors import RefSRError
from ..normalize import DEFAULT_PERCENTILES

__all__ = ["whole_window", "percentile_from_order_stats"]

_FLOAT_BINS = 2**16


def percentile_from_order_stats(n: int, q: float, kth) -> float:
    """``np.percentile`` (method "linear") of ``n`` values at ``q`` percent, given ``kth(k)``, the
    k-th smallest value (in the array's dtype): the same virtual index and interpolation as numpy."""
    quantile = np.true_divide(np.asarray([q], dtype=np.float64), 100)
    virtual = (n - 1) * quantile
    prev = np.floor(virtual)
    if virtual[0] >= n - 1:
        return float(kth(n - 1))
    if virtual[0] < 0:
        return float(kth(0))
    k = int(prev[0])
    a, b = np.asarray([kth(k)]), np.asarray([kth(k + 1)])
    t = np.asarray(virtual - prev, dtype=np.float64)
    diff = b - a
    out = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return float(out[0])


def _int_counts(block: np.ndarray, lo: int, size: int) -> np.ndarray:
    return np.bincount((block.ravel().astype(np.int64) - lo), minlength=size)


def _finite_range(block: np.ndarray) -> np.ndarray:
    finite = np.isfinite(block)
    if not finite.all():
        return np.array([np.nan, np.nan])
    return np.array([block.min(), block.max()], dtype=np.float64) if block.size else np.array([np.inf, -np.inf])


def _float_counts(block: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.histogram(block.ravel(), bins=_FLOAT_BINS, range=(lo, hi))[0]


def _sum_blocks(data: da.Array, func, *args, scheduler=None) -> np.ndarray:
    parts = [dask.delayed(func)(b, *args) for b in data.to_delayed().ravel()]
    return dask.compute(dask.delayed(sum)(parts), scheduler=scheduler)[0]


def whole_window(data: da.Array, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, *,
                 scheduler=None) -> tuple[float, float] | None:
    """(lo, hi) as :func:`~napari_refsr.normalize.intensity_window` gives for the whole array,
    or None for uint8 (which needs none). Runs on ``scheduler`` (``dask.compute``'s: a name or a
    ``distributed.Client``; None: the current one)."""
    dtype = data.dtype
    if dtype == np.uint8 or dtype == np.bool_:
        return None
    if data.size == 0:
        raise RefSRError("the image is empty")
    n = int(data.size)
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        lo = int(np.iinfo(dtype).min)
        counts = _sum_blocks(data, _int_counts, lo, 2 ** (8 * dtype.itemsize), scheduler=scheduler)
        cum = np.cumsum(counts)
        kth = lambda k: np.asarray(lo + int(np.searchsorted(cum, k, side="right")), dtype=dtype)  # noqa: E731
    else:
        parts = [dask.delayed(_finite_range)(b) for b in data.to_delayed().ravel()]
        ranges = np.stack(dask.compute(*parts, scheduler=scheduler))
        if np.isnan(ranges).any():
            raise RefSRError("the image contains NaN or infinite values; replace them before upscaling")
        vmin, vmax = float(ranges[:, 0].min()), float(ranges[:, 1].max())
        if vmax <= vmin:
            kth = lambda k: np.asarray(vmin)  # noqa: E731
        else:
            counts = _sum_blocks(data, _float_counts, vmin, vmax, scheduler=scheduler)
            cum = np.cumsum(counts)
            width = (vmax - vmin) / _FLOAT_BINS

            def kth(k):  # the value at rank k, placed linearly inside its histogram bin
                b = int(np.searchsorted(cum, k, side="right"))
                before = int(cum[b - 1]) if b else 0
                inside = (k - before + 0.5) / max(int(counts[b]), 1)
                return np.asarray(vmin + (b + inside) * width)
    lo_v, hi_v = (percentile_from_order_stats(n, q, kth) for q in percentiles)
    if not hi_v > lo_v:  # flat image: kept flat, as intensity_window does
        hi_v = lo_v + 1.0
    return lo_v, hi_v
