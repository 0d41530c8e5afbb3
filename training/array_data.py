"""Training data from in-memory images (napari layers): checked, split, written as folders.

The trainer reads plain folders (``data.train``, ``data.val``, paired ``data.ref_dir``), so a
front end that holds arrays writes them there first — which also leaves the run reproducible
from the command line (``training/train.py --data <run>/data/train ...``). Each 2D frame of an
image (stacks: every plane of the last two axes) becomes one file. The bottom ``val_fraction``
of each frame is held out for validation (never trained on); the rest trains.

Problems — a frame smaller than the training crop, grayscale mixed with colour, an unsupported
dtype, NaN — raise one :class:`~napari_refsr.errors.RefSRError` naming the image, before
anything is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_refsr.errors import RefSRError
from napari_refsr.imageio import write_image
from napari_refsr.normalize import check_image

__all__ = ["ArrayImage", "TrainingData", "write_training_data", "MIN_VAL"]

MIN_VAL = 64  # HR pixels: the smallest held-out strip worth validating on (16 LR pixels)


@dataclass
class ArrayImage:
    """An image by name: 2D (H, W), colour (H, W, 3) with ``rgb``, or a stack whose last two
    axes (before the colour axis) are Y and X."""

    name: str
    data: np.ndarray
    rgb: bool = False


@dataclass
class TrainingData:
    """Where the written data are, as the trainer's ``data`` settings, and what went where."""

    train: Path
    val: Path | None
    ref_dir: Path | None
    val_ref_dir: Path | None
    n_train: int
    n_val: int

    def overrides(self) -> dict[str, str | None]:
        """``data.*`` config values for these folders."""
        s = lambda p: None if p is None else str(p)  # noqa: E731
        return {"data.train": str(self.train), "data.val": s(self.val), "data.ref_dir": s(self.ref_dir),
                "data.val_ref_dir": s(self.val_ref_dir)}


def _frames(image: ArrayImage) -> list[np.ndarray]:
    """The 2D frames of ``image`` (each checked with the core's image rules)."""
    arr = np.asarray(image.data)
    plane = 3 if image.rgb else 2
    if arr.ndim < plane:
        raise RefSRError(f"layer {image.name!r} of shape {arr.shape} is not an image")
    if image.rgb and arr.shape[-1] not in (3, 4):
        raise RefSRError(f"layer {image.name!r} is marked RGB but has {arr.shape[-1]} channels")
    frames = arr.reshape((-1,) + arr.shape[arr.ndim - plane:])
    for i, frame in enumerate(frames):
        what = f"layer {image.name!r}" + (f" plane {i}" if len(frames) > 1 else "")
        check_image(frame[..., :3] if image.rgb else frame, what, min_size=1)
    return [np.ascontiguousarray(f[..., :3] if image.rgb else f) for f in frames]


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return keep or "image"


def write_training_data(
    images: Sequence[ArrayImage],
    folder: str | Path,
    *,
    crop: int,
    references: Sequence[ArrayImage] = (),
    val_fraction: float = 0.2,
) -> TrainingData:
    """Check ``images`` (and optional ``references``: one for all, or one per image), then
    write ``folder``/train, /val and /refs (replacing earlier contents of those subfolders)."""
    if not images:
        raise RefSRError("choose at least one training image layer (or a folder)")
    if not 0 <= val_fraction < 1:
        raise RefSRError(f"the held-out fraction must be in [0, 1), got {val_fraction}")
    frames = [(img, _frames(img)) for img in images]
    refs = [(r, _frames(r)) for r in references]
    if refs and len(refs) not in (1, len(images)):
        raise RefSRError(f"give one reference layer for all training layers or one per layer "
                         f"({len(images)}), not {len(refs)}")
    kinds = {("colour" if f.ndim == 3 else "grayscale") for _, fs in frames + refs for f in fs}
    if len(kinds) > 1:
        named = ", ".join(f"{img.name!r} ({'colour' if fs[0].ndim == 3 else 'grayscale'})" for img, fs in frames + refs)
        raise RefSRError(f"the layers mix grayscale and colour images ({named}); train on one kind")
    plan = []  # (stem, train part, val part or None, reference frame or None)
    for i, (img, fs) in enumerate(frames):
        ref = refs[0 if len(refs) == 1 else i][1][0] if refs else None
        if ref is not None and min(ref.shape[:2]) < crop:
            raise RefSRError(f"reference {refs[0 if len(refs) == 1 else i][0].name!r} of size {ref.shape[:2]} "
                             f"is smaller than the {crop}-pixel training crop")
        for j, f in enumerate(fs):
            h, w = f.shape[:2]
            held = max(MIN_VAL, int(round(h * val_fraction))) if val_fraction > 0 else 0
            if held and h - held < crop:
                held = 0  # too short to give up a strip: all of it trains
            if h - held < crop or w < crop:
                raise RefSRError(f"layer {img.name!r}{f' plane {j}' if len(fs) > 1 else ''} of size {h}×{w} "
                                 f"is smaller than the {crop}-pixel training crop; use a smaller crop or "
                                 f"larger images")
            stem = f"{i:03d}_{_safe(img.name)}" + (f"_{j:04d}" if len(fs) > 1 else "")
            plan.append((stem, f[: h - held], f[h - held:] if held else None, ref))
    root = Path(folder).expanduser()
    out = {k: root / k for k in ("train", "val", "refs", "val_refs")}
    for path in out.values():
        if path.exists():
            shutil.rmtree(path)
    out["train"].mkdir(parents=True)
    if any(val is not None for _, _, val, _ in plan):
        out["val"].mkdir()
    if references:
        out["refs"].mkdir()
        if any(val is not None for _, _, val, _ in plan):
            out["val_refs"].mkdir()
    for stem, train, val, ref in plan:
        write_image(out["train"] / f"{stem}.tif", train)
        if val is not None:
            write_image(out["val"] / f"{stem}.tif", val)
        if ref is not None:
            write_image(out["refs"] / f"{stem}.tif", ref)
            if val is not None:
                write_image(out["val_refs"] / f"{stem}.tif", ref)
    n_val = sum(val is not None for _, _, val, _ in plan)
    has_refs = bool(refs)
    return TrainingData(out["train"], out["val"] if n_val else None, out["refs"] if has_refs else None,
                        out["val_refs"] if has_refs and n_val else None, len(plan), n_val)
