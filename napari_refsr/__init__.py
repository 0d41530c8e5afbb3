"""napari-refsr: reference-based ×4 image super-resolution (TTSR, SRNTT).

The core imports torch, numpy and scikit-image only — never napari, Qt or magicgui — so ComfyUI
and training use it without a GUI stack.
"""

from .archs.registry import build_network
from .errors import Cancelled, RefSRError, WeightsError
from .model import DEFAULT_MODEL, RefSRModel, load_model
from .pipeline import DEFAULT_OVERLAP, DEFAULT_TILE, MIN_TILE, UpscaleResult, upscale, upscale_detailed, upscale_nd
from .search import DEFAULT_BUDGET as DEFAULT_SEARCH_BUDGET

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "RefSRError", "WeightsError", "DEFAULT_MODEL", "RefSRModel", "build_network", "load_model",
    "DEFAULT_OVERLAP", "DEFAULT_TILE", "MIN_TILE", "DEFAULT_SEARCH_BUDGET", "UpscaleResult", "upscale",
    "upscale_detailed", "upscale_nd",
]
