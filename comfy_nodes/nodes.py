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
    from napari_refsr import (DEFAULT_MODEL, DEFAULT_SEARCH_BUDGET, DEFAULT_TILE, MIN_TILE, RefSRError, RefSRModel,
                              WeightsError, load_model, upscale_nd, weights)
except ImportError as _err:  # the core is a separate install into ComfyUI's Python
    raise ImportError(
        f"the RefSR nodes need the napari-refsr core in ComfyUI's Python ({_err}); install it with "
        f"'{sys.executable} -m pip install <path of the napari-refsr repository>' (docs/comfyui.md)"
    ) from _err

__all__ = ["FOLDER", "REFSR_MODEL", "LoadRefSRModel", "RefSRUpscale", "RefSRExtension", "comfy_entrypoint",
           "model_names"]

FOLDER = "refsr"  # ComfyUI/models/refsr (plus any "refsr:" folder in extra_model_paths.yaml)
MAX_TILE = 2048
CATEGORY = "image/upscaling"

REFSR_MODEL = io.Custom("REFSR_MODEL")


def _register_folder() -> None:
    """Make ``models/refsr`` a ComfyUI model folder (idempotent; folder_paths ignores repeats)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


_register_folder()


def _download_dir() -> str | None:
    """Where registry models are downloaded: the first refsr folder (models/refsr by default), or
    the core's cache when the user set ``$NAPARI_REFSR_CACHE`` (shared with napari and the CLI)."""
    if os.environ.get(weights.CACHE_ENV):
        return None
    return folder_paths.get_folder_paths(FOLDER)[0]


def _registry_models() -> list[str]:
    """Registry names of super-resolution models, the default first."""
    return sorted(weights.model_names(), key=lambda n: (n != DEFAULT_MODEL, n))


def _local_checkpoints() -> list[str]:
    """Checkpoint files in the refsr folders, without hidden files (e.g. unfinished downloads)."""
    return [f for f in folder_paths.get_filename_list(FOLDER)
            if f.lower().endswith(weights.CHECKPOINT_SUFFIXES) and not os.path.basename(f).startswith(".")]


def model_names() -> list[str]:
    """The loader's choices: registry models (default first), then files in models/refsr."""
    _register_folder()
    return _registry_models() + _local_checkpoints()


class LoadRefSRModel(io.ComfyNode):
    """Loads a registry model (the shipped default, or downloaded into models/refsr once) or a
    RefSR checkpoint from models/refsr."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = model_names()
        return io.Schema(
            node_id="RefSRModelLoader",
            display_name="Load RefSR Model",
            category=CATEGORY,
            description="Loads a reference-based ×4 super-resolution model (TTSR) for RefSR Upscale.",
            inputs=[
                io.Combo.Input(
                    "model_name", options=names, default=names[0] if names else None,
                    tooltip=f"A model from the napari-refsr registry ({', '.join(_registry_models())}; "
                            f"{DEFAULT_MODEL} ships with the package, the others are downloaded into "
                            "ComfyUI/models/refsr on first use), hash-checked, or a checkpoint "
                            "(.pt/.pth/.safetensors) in ComfyUI/models/refsr."),
            ],
            outputs=[REFSR_MODEL.Output(display_name="refsr_model",
                                        tooltip="The loaded network, kept on the CPU between runs.")],
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        _register_folder()
        folders = folder_paths.get_folder_paths(FOLDER)
        try:  # a download's WeightsError says what to do offline
            path = weights.resolve(model_name, search_dirs=folders, cache_dir=_download_dir())
        except WeightsError:
            if model_name in weights.REGISTRY:
                raise
            raise RefSRError(f"RefSR model {model_name!r} not found in {', '.join(folders)}; put the checkpoint "
                             f"(.pt, .pth or .safetensors) there, or choose a registry model "
                             f"({', '.join(_registry_models())})") from None
        return io.NodeOutput(load_model(path, device="cpu"))


def _batch(tensor, what: str) -> np.ndarray:
    """A ComfyUI IMAGE ``[B, H, W, C]`` as a float32 numpy array on the CPU."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        raise RefSRError(f"{what} must be a ComfyUI IMAGE batch [B, H, W, C]; got {shape}")
    return tensor.detach().to("cpu", torch.float32).numpy()


def _memory_estimate(model: RefSRModel, lr: np.ndarray, refs: list[np.ndarray], tile: int) -> int:
    """Rough bytes a run needs on the device, for ComfyUI to unload other models first: the weights,
    the encoded references (VGG levels 1-3: 64 + 128/4 + 256/16 float32 channels per reference
    pixel, for Ref and Ref↓↑), one tile's activations at ×4 (~8 live 64-channel maps) and the
    texture search's scratch budget."""
    weights_bytes = sum(p.numel() * p.element_size() for p in model.network.parameters())
    ref_pixels = sum(r.shape[0] * r.shape[1] for r in refs)
    tile_pixels = min(tile, lr.shape[1]) * min(tile, lr.shape[2]) * 16
    return int(weights_bytes + ref_pixels * 112 * 4 * 2 + tile_pixels * 64 * 4 * 8 + DEFAULT_SEARCH_BUDGET)


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
                                                "a batch is upscaled against the same references."),
                io.Image.Input("reference", tooltip=ref_tip),
                REFSR_MODEL.Input("refsr_model", tooltip="The model from Load RefSR Model."),
                io.Int.Input("tile_size", default=DEFAULT_TILE, min=MIN_TILE, max=MAX_TILE, step=16,
                             tooltip="Low-resolution pixels per tile edge; smaller tiles use less memory. "
                                     f"On out-of-memory the tile is halved automatically (down to {MIN_TILE})."),
                io.Image.Input("reference_2", optional=True, tooltip="Optional second reference. " + ref_tip),
                io.Image.Input("reference_3", optional=True, tooltip="Optional third reference. " + ref_tip),
            ],
            outputs=[
                io.Image.Output("upscaled", display_name="image",
                                tooltip="The ×4 image(s), RGB in 0..1, same batch size and channels as the input."),
                io.Mask.Output("confidence", display_name="confidence",
                               tooltip="Texture-match confidence at output size: the soft attention S (cosine "
                                       "similarity of the best reference patch, −1..1) clipped to 0..1. Bright = "
                                       "detail taken from a close match; dark = little help from the references."),
            ],
        )

    @classmethod
    def execute(cls, image, reference, refsr_model: RefSRModel, tile_size: int = DEFAULT_TILE,
                reference_2=None, reference_3=None) -> io.NodeOutput:
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
            result = upscale_nd(refsr_model, lr, refs, spatial_axes=(1, 2), channel_axis=3, tile=tile_size,
                                device=device, value_range=(0.0, 1.0), progress=progress, cancel=cancel)
        finally:
            refsr_model.to("cpu")  # give the device back to ComfyUI's other models
            model_management.soft_empty_cache()
        upscaled = torch.from_numpy(np.ascontiguousarray(result.image)).clamp_(0.0, 1.0)
        confidence = torch.from_numpy(np.ascontiguousarray(result.confidence)).clamp_(0.0, 1.0)
        return io.NodeOutput(upscaled, confidence)


class RefSRExtension(ComfyExtension):
    """The node list ComfyUI asks for through :func:`comfy_entrypoint`."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadRefSRModel, RefSRUpscale]


async def comfy_entrypoint() -> RefSRExtension:
    """ComfyUI's V3 entry point (called once when custom nodes are loaded)."""
    return RefSRExtension()
