"""ComfyUI node pack for napari-refsr: reference-based ×4 upscaling inside ComfyUI graphs.

ComfyUI imports ``custom_nodes/<folder>/__init__.py``; this package is that folder when it is
linked or copied into ``custom_nodes`` (see docs/comfyui.md). It offers the V3 entry point
``comfy_entrypoint`` only — no ``NODE_CLASS_MAPPINGS``, which would make ComfyUI treat the pack
as V1 and ignore the entry point. The core (``napari_refsr``) must be installed in ComfyUI's
Python.
"""

from .nodes import LoadRefSRModel, RefSRExtension, RefSRUpscale, comfy_entrypoint

__all__ = ["LoadRefSRModel", "RefSRExtension", "RefSRUpscale", "comfy_entrypoint"]
