"""The widget's axis choices in the user's terms: which data axes can be Y, X and colour channels.

Pure functions of a layer's shape and axis labels (no Qt), so the widget offers only choices that
can run, and names a problem by the axis the user sees ("z (axis 0, 5 px)"), not by tuples.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import RefSRError

__all__ = ["MIN_AXIS", "COLOUR_SIZES", "axis_name", "spatial_choices", "channel_choices", "check_axes"]

#: the fewest pixels a Y or X axis may have. The core runs on a few pixels, but an axis this short
#: is a Z, T or channel axis: upscaling along it makes a ×4 "image" of a handful of planes (and
#: throws the viewer's sliders far outside the data). The shipped model was trained on 16×16 LR
#: crops and references need 16 px too.
MIN_AXIS = 16
#: sizes of a colour channel axis (RGB, RGBA)
COLOUR_SIZES = (3, 4)


def axis_name(shape: Sequence[int], labels: Sequence[str], axis: int) -> str:
    """``"z (axis 0, 5 px)"`` for a labelled axis, ``"axis 0 (5 px)"`` for napari's default labels."""
    ndim = len(shape)
    label = str(labels[axis]) if axis < len(labels) else ""
    if label and label != str(axis - ndim):  # napari's default labels are "-3", "-2", "-1"
        return f"{label} (axis {axis}, {shape[axis]} px)"
    return f"axis {axis} ({shape[axis]} px)"


def spatial_choices(shape: Sequence[int]) -> list[int]:
    """Axes long enough to be Y or X."""
    return [a for a, n in enumerate(shape) if n >= MIN_AXIS]


def channel_choices(shape: Sequence[int], y: int | None, x: int | None) -> list[int]:
    """Axes that can hold colour channels: 3 or 4 planes, and neither Y nor X."""
    return [a for a, n in enumerate(shape) if a not in (y, x) and n in COLOUR_SIZES]


def check_axes(shape: Sequence[int], labels: Sequence[str], y: int | None, x: int | None,
               channel: int | None, layer_name: str) -> None:
    """Raise RefSRError, in the user's terms, when the choice cannot run (else return None)."""
    name = lambda a: axis_name(shape, labels, a)  # noqa: E731
    if len(spatial_choices(shape)) < 2:
        axes = ", ".join(name(a) for a in range(len(shape)))
        raise RefSRError(f"{layer_name!r} has no two axes of at least {MIN_AXIS} pixels for Y and X "
                         f"(its axes: {axes}); RefSR upscales images, not a few planes")
    if y is None or x is None:
        raise RefSRError("choose the Y and X axes")
    if y == x:
        raise RefSRError(f"Y and X must be different axes (both are {name(y)})")
    for role, axis in (("Y", y), ("X", x)):
        if shape[axis] < MIN_AXIS:
            raise RefSRError(f"the {role} axis, {name(axis)}, has only {shape[axis]} pixels; Y and X need at "
                             f"least {MIN_AXIS} (a Z, T or channel axis is looped over, not upscaled)")
    if channel is None:
        return
    if channel in (y, x):
        raise RefSRError(f"{name(channel)} cannot be the channel axis and a spatial axis at once")
    if shape[channel] not in COLOUR_SIZES:
        raise RefSRError(f"the channel axis, {name(channel)}, has {shape[channel]} planes; a channel axis "
                         "holds 3 (RGB) or 4 (RGBA) colour channels. Choose 'none' to upscale each plane "
                         "on its own")
