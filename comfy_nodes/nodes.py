"""The RefSR nodes (ComfyUI V3 schema): "Load RefSR Model" and "RefSR Upscale".

A thin layer over the napari-refsr core. It translates ComfyUI data (IMAGE: float ``[B, H, W, C]``
in 0..1, MASK: float ``[B, H, W]``) to and from the numpy arrays of
:func:`napari_refsr.upscale_nd`, and plugs ComfyUI's services into the core's arguments: the
device (``model_management.get_torch_device``), its memory manager (``free_memory`` before a run),
``comfy.utils.ProgressBar`` (``progress``) and the interrupt flag (``cancel``). Tiling, the
out-of-memory retry with halved tiles, input validation and weights downloads are the core's.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import comfy.model_management as model_management
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io

try:
    from napari_refsr import (DEFAULT_MODEL, DEFAULT_SEARCH, DEFAULT_SEARCH_BUDGET, DEFAULT_TILE, MIN_TILE,
                              SEARCH_MODES, RefSRError, RefSRModel, load_model, weights)
    from napari_refsr.phases import feature_bytes, resolve_phases
except ImportError as _err:  # the core's packages are missing from ComfyUI's Python
    _requirements = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements.txt")
    raise ImportError(
        f"the RefSR nodes need the napari-refsr core and its packages in ComfyUI's Python ({_err}); install "
        f"them with '{sys.executable} -m pip install -r {_requirements}' (ComfyUI-Manager does this when it "
        f"installs the pack) or '{sys.executable} -m pip install <napari-refsr repository>' (docs/comfyui.md)"
    ) from _err

from .compat import schema_extras
from .example_inputs import install_example_inputs
from .grayscale import upscale_by_kind
from .model_list import (DOWNLOAD_MARK, FOLDER, checkpoint_path, download_dir, model_names, register_folder,
                         registry_models, registry_name)

__all__ = ["FOLDER", "REFSR_MODEL", "LoadRefSRModel", "RefSRUpscale", "RefSRExtension", "comfy_entrypoint",
           "model_names"]

MAX_TILE = 2048
CATEGORY = "image/upscaling"
LOADER_CATEGORY = "loaders"  # beside ComfyUI's other model loaders (Load Upscale Model, …)

REFSR_MODEL = io.Custom("REFSR_MODEL")

register_folder()


class LoadRefSRModel(io.ComfyNode):
    """Loads a registry model (the shipped default, or downloaded into models/refsr once) or a
    RefSR checkpoint from models/refsr."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = model_names()
        return io.Schema(
            node_id="RefSRModelLoader",
            display_name="Load RefSR Model",
            category=LOADER_CATEGORY,
            description="Loads a reference-based ×4 super-resolution model (TTSR, SRNTT) for RefSR Upscale.",
            inputs=[
                io.Combo.Input(
                    "model_name", options=names, default=names[0] if names else None,
                    tooltip=f"A model from the napari-refsr registry ({', '.join(registry_models())}; "
                            f"{DEFAULT_MODEL} ships with the package and works offline; names marked "
                            f"'{DOWNLOAD_MARK.strip()}' are downloaded into ComfyUI/models/refsr on first "
                            "use), hash-checked, or a checkpoint (.pt/.pth/.safetensors) in ComfyUI/models/refsr."),
            ],
            outputs=[REFSR_MODEL.Output(display_name="refsr_model",
                                        tooltip="The loaded network, kept on the CPU between runs.")],
            **schema_extras(search_aliases=["refsr", "ttsr", "srntt", "reference super-resolution"]),
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """Replaces ComfyUI's list check of ``model_name``: a registry model is accepted with or without
        its download mark (a workflow saved before the download names it with the mark)."""
        if registry_name(model_name) is not None or checkpoint_path(model_name) is not None:
            return True
        return _not_found(model_name)

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        path = checkpoint_path(model_name)
        name = registry_name(model_name)
        if path is None and name is not None:
            path = weights.fetch(name, cache_dir=download_dir())  # WeightsError says what to do offline
        if path is None:
            raise RefSRError(_not_found(model_name))
        return io.NodeOutput(load_model(path, device="cpu"))


def _not_found(model_name: str) -> str:
    folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
    return (f"RefSR model {model_name!r} not found in {folders}; put the checkpoint (.pt, .pth or "
            f".safetensors) there, or choose a registry model ({', '.join(registry_models())})")


def _batch(tensor, what: str) -> np.ndarray:
    """A ComfyUI IMAGE ``[B, H, W, C]`` as a float32 numpy array on the CPU."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        raise RefSRError(f"{what} must be a ComfyUI IMAGE batch [B, H, W, C]; got {shape}")
    return tensor.detach().to("cpu", torch.float32).numpy()


def _memory_estimate(model: RefSRModel, lr: np.ndarray, refs: list[np.ndarray], tile: int) -> int:
    """Rough bytes a run needs on the device, for ComfyUI to unload other models first: the weights,
    the encoded references with their phase copies (:func:`napari_refsr.phases.feature_bytes`), one
    tile's activations at ×4 (~8 live 64-channel maps) and the texture search's scratch budget."""
    weights_bytes = sum(p.numel() * p.element_size() for p in model.network.parameters())
    sizes = [(r.shape[0], r.shape[1]) for r in refs]
    ref_bytes = feature_bytes(sizes, resolve_phases(None, model.network, sizes))
    tile_pixels = min(tile, lr.shape[1]) * min(tile, lr.shape[2]) * 16
    return int(weights_bytes + ref_bytes + tile_pixels * 64 * 4 * 8 + DEFAULT_SEARCH_BUDGET)


class RefSRUpscale(io.ComfyNode):
    """×4 upscale that transfers texture from reference images (TTSR)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        ref_tip = ("A high-resolution image with the textures or details to borrow (same scene, a "
                   "detail shot, a texture). A batch counts as several references.")
        return io.Schema(
            node_id="RefSRUpscale",
            display_name="RefSR Upscale",
            category=CATEGORY,
            description="Reference-based ×4 super-resolution: every output texture is copied from the "
                        "best-matching patch of the references instead of being invented.",
            inputs=[
                io.Image.Input("image", tooltip="The low-resolution image(s) to enlarge ×4. Every image of "
                                                "a batch is upscaled against the same references. Grayscale "
                                                "(three equal channels, as Load Image gives it) stays grayscale."),
                io.Image.Input("reference", tooltip=ref_tip),
                REFSR_MODEL.Input("refsr_model", tooltip="The model from Load RefSR Model."),
                io.Int.Input("tile_size", default=DEFAULT_TILE, min=MIN_TILE, max=MAX_TILE, step=16,
                             tooltip="Low-resolution pixels per tile edge; smaller tiles use less memory. "
                                     f"On out-of-memory the tile is halved automatically (down to {MIN_TILE})."),
                io.Combo.Input("search", options=list(SEARCH_MODES), default=DEFAULT_SEARCH, optional=True,
                               tooltip="exact: the best reference patch everywhere (the published search). "
                                       "coarse: APPROXIMATE coarse-to-fine search, several times faster on big "
                                       "references; a good but not always the best patch."),
                io.Image.Input("reference_2", optional=True, tooltip="Optional second reference. " + ref_tip),
                io.Image.Input("reference_3", optional=True, tooltip="Optional third reference. " + ref_tip),
            ],
            outputs=[
                io.Image.Output("upscaled", display_name="image",
                                tooltip="The ×4 image(s) in 0..1, same batch size and channels as the input; "
                                        "grayscale in, equal channels out. Load Image keeps alpha apart as a "
                                        "MASK: to keep transparency, upscale that mask ×4 too and put it back "
                                        "with Join Image with Alpha."),
                io.Mask.Output("confidence", display_name="confidence",
                               tooltip="Texture-match confidence at output size: the soft attention S (cosine "
                                       "similarity of the best reference patch, −1..1) clipped to 0..1. Bright = "
                                       "detail taken from a close match; dark = little help from the references."),
            ],
        )

    @classmethod
    def execute(cls, image, reference, refsr_model: RefSRModel, tile_size: int = DEFAULT_TILE,
                search: str | None = None, reference_2=None, reference_3=None) -> io.NodeOutput:
        lr = _batch(image, "image")
        refs = [item for i, ref in enumerate((reference, reference_2, reference_3), 1) if ref is not None
                for item in _batch(ref, "reference" if i == 1 else f"reference_{i}")]
        device = model_management.get_torch_device()
        model_management.free_memory(_memory_estimate(refsr_model, lr, refs, tile_size), device)
        bar = comfy.utils.ProgressBar(lr.shape[0])

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)  # the server's hook also raises when the user cancels

        def cancel() -> bool:
            model_management.throw_exception_if_processing_interrupted()
            return False

        try:
            image_out, confidence = upscale_by_kind(refsr_model, lr, refs, progress, tile=tile_size, device=device,
                                                     value_range=(0.0, 1.0), cancel=cancel,
                                                     search=search or DEFAULT_SEARCH)
        finally:
            refsr_model.to("cpu")  # give the device back to ComfyUI's other models
            model_management.soft_empty_cache()
        upscaled = torch.from_numpy(image_out).clamp_(0.0, 1.0)
        return io.NodeOutput(upscaled, torch.from_numpy(confidence).clamp_(0.0, 1.0))


class RefSRExtension(ComfyExtension):
    """The node list ComfyUI asks for through :func:`comfy_entrypoint`."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadRefSRModel, RefSRUpscale]


async def comfy_entrypoint() -> RefSRExtension:
    """ComfyUI's V3 entry point (called once when custom nodes are loaded). Also puts the example
    workflows' images into ComfyUI's input folder (ComfyUI 0.3.64 never calls ``on_load``)."""
    install_example_inputs()
    return RefSRExtension()
