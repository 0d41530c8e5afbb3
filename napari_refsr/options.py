"""Checks of the Python API's options, so a bad value is one :class:`RefSRError` naming it.

Front ends pass validated values already; these checks are for scripts and notebooks that call
:func:`napari_refsr.upscale_nd` directly, where a wrong type would otherwise surface as a numpy or
torch error deep inside, or be accepted and give silently wrong results.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from .errors import RefSRError
from .model import RefSRModel, load_model

from .defaults import MIN_TILE, SEARCH_MODES  # MIN_TILE: smaller tiles leave the search almost no context
MIN_SEARCH_BUDGET = 16 * 2**20  # bytes; below this the chunked search crawls

__all__ = ["MIN_TILE", "MIN_SEARCH_BUDGET", "check_int", "check_tile", "check_overlap", "check_percentiles",
           "check_value_range", "check_search_budget", "check_search_mode", "check_callback", "resolve_model"]


def check_int(value, what: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; bools, strings, floats and None are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RefSRError(f"{what} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise RefSRError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def check_tile(tile) -> int:
    return check_int(tile, "tile", MIN_TILE)


def check_overlap(overlap, tile: int) -> int:
    overlap = check_int(overlap, "overlap", 0)
    if overlap >= tile:
        raise RefSRError(f"overlap {overlap} must be smaller than the tile ({tile})")
    return overlap


def _pair(value, what: str) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise RefSRError(f"{what} must be two numbers (low, high), got {value!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (lo, hi)):
        raise RefSRError(f"{what} must be two numbers (low, high), got {value!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RefSRError(f"{what} must be finite, got {value!r}")
    if not lo < hi:
        raise RefSRError(f"{what} must be (low, high) with low < high, got {value!r}")
    return lo, hi


def check_percentiles(percentiles) -> tuple[float, float]:
    lo, hi = _pair(percentiles, "percentiles")
    if lo < 0 or hi > 100:
        raise RefSRError(f"percentiles must lie in [0, 100], got {percentiles!r}")
    return lo, hi


def check_value_range(value_range) -> tuple[float, float] | None:
    return None if value_range is None else _pair(value_range, "value_range")


def check_search_budget(budget) -> int:
    return check_int(budget, "search_budget (bytes)", MIN_SEARCH_BUDGET)


def check_search_mode(mode) -> str:
    """One of :data:`~napari_refsr.defaults.SEARCH_MODES` ("exact" or "coarse")."""
    if not isinstance(mode, str) or mode not in SEARCH_MODES:
        raise RefSRError(f"search must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    return mode


def check_callback(fn, what: str):
    if fn is not None and not callable(fn):
        raise RefSRError(f"{what} must be a function or None, got {fn!r}")
    return fn


def resolve_model(model):
    """A :class:`~napari_refsr.RefSRModel` as given, or loaded from a registry name / checkpoint path."""
    if isinstance(model, RefSRModel):
        return model
    if isinstance(model, (str, Path)) and str(model):
        return load_model(model, device="cpu", progress=False)
    raise RefSRError(f"model must be a RefSRModel (from load_model), a model name or a checkpoint path; "
                     f"got {model!r}")
