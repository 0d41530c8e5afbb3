"""napari layers ↔ the core's arrays: which axes are spatial, where the ×4 result sits in the world.

Pure functions on layer attributes (no Qt), so the widget stays a thin shell around them.

Placement: napari puts pixel *centres* at integer data coordinates, so for a ×s upscale of the
Y, X axes the output needs ``scale' = scale / s`` and ``translate' = translate - scale/2 + scale'/2``
for the footprints (and the world extent) to coincide. With a rotation or shear the translate
shift goes through that linear part too; the layer's ``affine`` applies after and is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import RefSRError
from ..pipeline import UpscaleResult

__all__ = ["LayerAxes", "layer_axes", "placement", "layer_data", "reference_data", "result_layers",
           "SAMPLE_ROLE_KEY", "COMPANION_KEY", "output_name"]

#: metadata key the sample data uses to tell the widget which layer is LR / reference
SAMPLE_ROLE_KEY = "refsr_sample_role"
#: metadata key of the confidence/source layers (maps, not images: never offered as input)
COMPANION_KEY = "refsr_companion"

LayerDataTuple = tuple[Any, dict, str]


@dataclass(frozen=True)
class LayerAxes:
    """How a layer's data axes map to the core: Y, X, an optional channel axis, the rest looped."""

    ndim: int  # data dimensions (an RGB layer's colour axis included)
    spatial: tuple[int, int]  # data axes of Y and X
    channel: int | None  # data axis passed to the core as channels (an RGB layer's last axis)
    rgb: bool

    @property
    def world_ndim(self) -> int:
        """Length of the layer's scale/translate vectors (an RGB colour axis is not a world axis)."""
        return self.ndim - 1 if self.rgb else self.ndim

    @property
    def kept(self) -> list[int]:
        """World axes of the confidence/source layers: all but a (non-RGB) channel axis."""
        return [a for a in range(self.world_ndim) if self.rgb or a != self.channel]


def layer_axes(ndim: int, rgb: bool, y: int | None = None, x: int | None = None,
               channel: int | None = None) -> LayerAxes:
    """Resolve the axis choice for a layer with ``ndim`` data axes (defaults: the last two spatial).

    RGB layers always use their colour axis (the last) as channels and the two before as Y, X.
    The core checks that the axes are distinct; here they are only normalised.
    """
    if rgb:
        if ndim < 3:
            raise RefSRError(f"an RGB layer needs (…, Y, X, colour) data, got {ndim} dimensions")
        return LayerAxes(ndim, (ndim - 3, ndim - 2), ndim - 1, True)
    if ndim < 2:
        raise RefSRError(f"the image layer has {ndim} dimension(s); RefSR needs at least Y and X")
    y = ndim - 2 if y is None else int(y) % ndim
    x = ndim - 1 if x is None else int(x) % ndim
    channel = None if channel is None else int(channel) % ndim
    return LayerAxes(ndim, (y, x), channel, False)


def placement(scale: Sequence[float], translate: Sequence[float], spatial: Sequence[int], factor: float,
              linear: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate of a layer whose ``spatial`` world axes are ``factor`` times finer,
    with pixel footprints (and world extent) equal to the original's. ``linear`` is the layer's
    rotate·shear matrix (identity when None)."""
    scale = np.asarray(scale, dtype=float)
    translate = np.asarray(translate, dtype=float)
    new_scale = scale.copy()
    delta = np.zeros_like(scale)
    for a in spatial:
        new_scale[a] = scale[a] / factor
        delta[a] = -scale[a] / 2 + new_scale[a] / 2
    if linear is not None:
        delta = np.asarray(linear, dtype=float) @ delta
    return new_scale, translate + delta


def _linear(layer) -> np.ndarray | None:
    """The layer's rotate·shear matrix, or None when both are the identity."""
    from napari.utils.transforms import CompositeAffine

    matrix = CompositeAffine(ndim=layer.ndim, rotate=layer.rotate, shear=layer.shear).linear_matrix
    return None if np.allclose(matrix, np.eye(layer.ndim)) else matrix


def layer_data(layer, what: str = "image"):
    """The layer's full-resolution data (not yet read into memory: dask/zarr stay lazy)."""
    if getattr(layer, "multiscale", False):
        raise RefSRError(f"{what} layer {layer.name!r} is multiscale (an image pyramid); RefSR needs a "
                         "single-resolution image: add its full-resolution level as its own layer")
    return layer.data


def reference_data(layer, world_point: Sequence[float] | None = None):
    """A reference layer's 2D image (Y, X[, colour]): stacks give the slice the viewer shows now."""
    data = layer_data(layer, "reference")
    extra = data.ndim - (3 if layer.rgb else 2)
    if extra <= 0:
        return data
    if world_point is not None and len(world_point) >= layer.ndim:
        pos = np.asarray(layer.world_to_data(tuple(world_point)[-layer.ndim:]), dtype=float)
    else:
        pos = np.zeros(layer.ndim)
    index = tuple(int(np.clip(np.round(pos[i]), 0, data.shape[i] - 1)) for i in range(extra))
    return data[index]


def output_name(name: str, factor: int = 4, kind: str = "") -> str:
    """A result layer's name: ``"<name> ×4"``, ``"<name> ×4 confidence"``, ``"<name> source row"``…

    What tells the layers apart comes last and nothing constant follows it: napari's layer list
    elides long names in the middle, so the ends must differ (``metadata["refsr"]`` marks them).
    """
    if kind.startswith("source"):
        return f"{name} {kind}"  # on the LR grid: no ×4
    return f"{name} ×{factor}" + (f" {kind}" if kind else "")


def _confidence_limits(conf: np.ndarray) -> list[float]:
    """From the map's lowest S to a perfect match (1): a fixed 0..1 would show S of 0.7–1 nearly flat."""
    finite = conf[np.isfinite(conf)]
    low = float(finite.min()) if finite.size else 0.0
    return [min(low, 1.0 - 1e-3), 1.0]


def _pick(values, axes: Sequence[int]):
    values = list(values)
    return tuple(values[a] for a in axes)


def result_layers(layer, axes: LayerAxes, result: UpscaleResult, *, factor: int, model_name: str,
                  reference_names: Sequence[str], confidence: bool = False,
                  source: bool = False) -> list[LayerDataTuple]:
    """Layer data tuples for the ×factor image and, if asked, the confidence and source layers.

    The image keeps the input's dtype, contrast limits, colormap, units, axis labels and metadata;
    confidence (float32, ×factor grid) and source (LR grid) drop a non-RGB channel axis.
    """
    linear = _linear(layer)
    world_spatial = list(axes.spatial)  # RGB: the colour axis is last, so Y, X keep their index
    out_scale, out_translate = placement(layer.scale, layer.translate, world_spatial, factor, linear)
    units = tuple(layer.units)
    labels = tuple(layer.axis_labels)
    metadata = {k: v for k, v in dict(layer.metadata).items() if k != SAMPLE_ROLE_KEY}
    metadata["refsr"] = {"input_layer": layer.name, "references": list(reference_names), "model": model_name,
                         "factor": factor, "tile": int(result.tile),
                         "spatial_axes": list(axes.spatial), "channel_axis": axes.channel}
    image_kwargs = {
        "name": output_name(layer.name, factor), "scale": out_scale, "translate": out_translate,
        "rotate": layer.rotate, "shear": layer.shear, "affine": layer.affine.affine_matrix,
        "units": units, "axis_labels": labels, "metadata": metadata, "rgb": axes.rgb,
        "contrast_limits": list(layer.contrast_limits), "gamma": layer.gamma,
        "blending": layer.blending, "opacity": layer.opacity,
    }
    if not axes.rgb:
        image_kwargs["colormap"] = layer.colormap
    out: list[LayerDataTuple] = [(result.image, image_kwargs, "image")]
    if not (confidence or source):
        return out

    kept = axes.kept
    full = len(kept) == axes.world_ndim  # a dropped channel axis makes rotate/shear/affine unusable
    aux: dict[str, Any] = {"units": _pick(units, kept), "axis_labels": _pick(labels, kept), "visible": False}
    if full:
        aux.update(rotate=layer.rotate, shear=layer.shear, affine=layer.affine.affine_matrix)

    def companion(kind: str, **kwargs) -> dict:
        return dict(aux, metadata={"refsr": metadata["refsr"], COMPANION_KEY: kind}, **kwargs)

    if confidence:
        out.append((result.confidence, companion(
            "confidence", name=output_name(layer.name, factor, "confidence"), scale=_pick(out_scale, kept),
            translate=_pick(out_translate, kept), colormap="magma",
            contrast_limits=_confidence_limits(result.confidence)), "image"))
    if source:
        lr_grid = {"scale": _pick(layer.scale, kept), "translate": _pick(layer.translate, kept)}
        ref_number = result.source[..., 0] + 1  # 0 stays free for "no reference"
        names = ["(none)", *reference_names]
        out.append((ref_number.astype(np.int32), companion(
            "source reference", name=output_name(layer.name, factor, "source reference"), **lr_grid,
            features={"index": list(range(len(names))), "reference": names}), "labels"))
        for k, coord in ((1, "row"), (2, "column")):
            values = result.source[..., k]
            out.append((values, companion(
                f"source {coord}", name=output_name(layer.name, factor, f"source {coord}"), **lr_grid,
                colormap="viridis", contrast_limits=[0, max(1, int(values.max()))]), "image"))
    return out
