"""ComfyUI loads this file when the repository is cloned into ComfyUI/custom_nodes/ (docs/comfyui.md).

It is not part of the Python package (`napari_refsr`); it only hands ComfyUI the node pack, and
does nothing when imported outside ComfyUI. ComfyUI imports it as a package named after the
folder (any name, `napari-refsr` included), so the relative import below works there. pytest also
imports it while collecting (the repository root holds this `__init__.py`), and when the folder's
name is not a Python identifier it does so as a plain module with no package: then there is
nothing to hand over, and a relative import would fail.
"""

import importlib.util
import os
import sys

if __package__ and importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI
    try:
        import napari_refsr  # noqa: F401  (installed into ComfyUI's Python: the documented way)
    except ImportError:  # a plain clone (ComfyUI-Manager, registry): use the core beside this file
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))

    from .comfy_nodes import comfy_entrypoint  # noqa: E402,F401
