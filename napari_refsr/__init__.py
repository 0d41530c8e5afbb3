"""napari-refsr: reference-based ×4 image super-resolution (TTSR, SRNTT).

The core imports torch, numpy and scikit-image only — never napari, Qt or magicgui — so ComfyUI
and training use it without a GUI stack. The names below are imported on first use, so that
``import napari_refsr`` (and ``refsr --help``) does not pay for torch until it is needed.
"""

from importlib import import_module

from .defaults import (DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_SEARCH, DEFAULT_SEARCH_BUDGET, DEFAULT_TILE, MIN_TILE,
                       SEARCH_MODES)
from .errors import Cancelled, RefSRError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "RefSRModel": "model", "load_model": "model", "build_network": "archs.registry",
    "UpscaleResult": "pipeline", "upscale": "pipeline", "upscale_detailed": "pipeline", "upscale_nd": "pipeline",
}

__all__ = [
    "Cancelled", "RefSRError", "WeightsError", "DEFAULT_MODEL", "RefSRModel", "build_network", "load_model",
    "DEFAULT_OVERLAP", "DEFAULT_TILE", "MIN_TILE", "DEFAULT_SEARCH_BUDGET", "DEFAULT_SEARCH", "SEARCH_MODES", "UpscaleResult", "upscale",
    "upscale_detailed", "upscale_nd",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
