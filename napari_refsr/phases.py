"""Sub-pixel reference search ("phases").

TTSR matches the LR image's 3×3 patches against the reference's on the reference's own ×1/4
grid, and copies 4×4-pixel-aligned blocks. When the reference's content lies a fraction of an LR
pixel away from that grid — a neighbouring field, a second exposure or a stereo view shifted by
any number of pixels that is not a multiple of 4 — the best block it can copy is off by up to
2 px in each direction, and a network that has learnt to trust exact copies gains little.

Searching the reference also cut at sub-LR-pixel offsets (``phases`` per axis: offsets
``0, 4/phases, …`` px) puts a block within ``2/phases`` px of any position. ``phases = 1`` is the
published TTSR search; ``2`` searches 4 copies, ``4`` searches 16 — the search time and the
reference features' memory grow by that factor. The output stays a deterministic function of the
inputs: phase copies are just more references, searched together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import RefSRError

if TYPE_CHECKING:  # the CLI's parser imports PHASES without torch
    import torch

__all__ = ["PHASES", "DEFAULT_PHASE_MEMORY", "check_phases", "phase_offsets", "phase_views", "feature_bytes",
           "affordable_phases", "resolve_phases"]

PHASES = (1, 2, 4)  # per axis: offsets of 4/phases px between the searched copies
DEFAULT_PHASE_MEMORY = 3 * 2**30  # bytes of reference features a network's default phases may take
_FEATURE_FLOATS_PER_PIXEL = 64 + 128 / 4 + 256 / 16 + 256 / 16  # lv1, lv2, lv3 values and lv3 keys


def check_phases(phases) -> int:
    """``phases`` as one of :data:`PHASES` (a one-line error otherwise)."""
    if isinstance(phases, bool) or not isinstance(phases, int) or phases not in PHASES:
        raise RefSRError(f"phases must be one of {', '.join(map(str, PHASES))} (reference copies per "
                         f"axis at sub-LR-pixel offsets), got {phases!r}")
    return phases


def phase_offsets(phases: int) -> list[tuple[int, int]]:
    """(dy, dx) pixel offsets of the searched copies, (0, 0) first."""
    step = 4 // check_phases(phases)
    return [(dy, dx) for dy in range(0, 4, step) for dx in range(0, 4, step)]


def phase_views(ref: "torch.Tensor", phases: int) -> list[tuple["torch.Tensor", tuple[int, int]]]:
    """The reference (…, H, W) cut at each phase offset to multiples of 4 px, with its offset.

    Copies that would be smaller than 4×4 px are left out (the unshifted one is always kept).
    """
    h, w = ref.shape[-2:]
    views = []
    for dy, dx in phase_offsets(phases):
        hh, ww = (h - dy) // 4 * 4, (w - dx) // 4 * 4
        if (dy, dx) != (0, 0) and (hh < 4 or ww < 4):
            continue
        views.append((ref[..., dy : dy + hh, dx : dx + ww], (dy, dx)))
    return views


def feature_bytes(sizes, phases: int, element_bytes: int = 4) -> int:
    """Bytes of the encoded reference set: every (H, W) in ``sizes`` searched at ``phases``."""
    pixels = sum(h * w for h, w in sizes)
    return int(pixels * len(phase_offsets(phases)) * _FEATURE_FLOATS_PER_PIXEL * element_bytes)


def affordable_phases(phases: int, sizes, limit: int = DEFAULT_PHASE_MEMORY, element_bytes: int = 4) -> int:
    """The largest of ``phases``, ``phases/2``, …, 1 whose reference features fit in ``limit``
    bytes: a network's default is a preference (a megapixel reference at 16 copies would need
    about 8 GB); a phase count the caller asks for explicitly is not reduced."""
    while phases > 1 and feature_bytes(sizes, phases, element_bytes) > limit:
        phases //= 2
    return phases


def resolve_phases(phases: int | None, network, sizes, element_bytes: int = 4) -> int:
    """The phases a run searches: ``phases`` if given, else the network's own setting
    (``network.search_phases``) reduced to what fits in memory for references of ``sizes``."""
    if phases is not None:
        return check_phases(phases)
    return affordable_phases(network.search_phases, sizes, element_bytes=element_bytes)
