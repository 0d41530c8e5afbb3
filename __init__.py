"""ComfyUI loads this file when the repository is cloned into ComfyUI/custom_nodes/ (docs/comfyui.md).

It is not part of the Python package (`napari_refsr`); it only hands ComfyUI the node pack, and
does nothing when imported outside ComfyUI (pytest, for one, imports it while collecting).
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI
    try:
        import napari_refsr  # noqa: F401  (installed into ComfyUI's Python: the documented way)
    except ImportError:  # a plain clone (ComfyUI-Manager, registry): use the core beside this file
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))

    from .comfy_nodes import comfy_entrypoint  # noqa: E402,F401
