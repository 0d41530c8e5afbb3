"""napari-refsr: reference-based ×4 image super-resolution (TTSR, SRNTT).

The core imports torch, numpy and scikit-image only — never napari, Qt or magicgui — so ComfyUI
and training use it without a GUI stack.
"""

from .errors import Cancelled, RefSRError, WeightsError
from .model import DEFAULT_MODEL, RefSRModel, build_network, load_model
from .pipeline import DEFAULT_OVERLAP, DEFAULT_TILE, UpscaleResult, upscale, upscale_detailed, upscale_nd

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "RefSRError", "WeightsError", "DEFAULT_MODEL", "RefSRModel", "build_network", "load_model",
    "DEFAULT_OVERLAP", "DEFAULT_TILE", "UpscaleResult", "upscale", "upscale_detailed", "upscale_nd",
]
