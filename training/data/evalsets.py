"""Evaluation images: CUFED5 (``XXX_0`` with references ``XXX_1..5``) or any folder, whole images
cropped to multiples of 4, as the TTSR protocol evaluates them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_refsr.errors import RefSRError
from napari_refsr.imageio import SUFFIXES
from napari_refsr.normalize import DEFAULT_PERCENTILES, to_net
from napari_refsr.phases import phase_views
from napari_refsr.resize import down_up, resize_bicubic

from .degrade import SCALE
from .files import ImageFile
from .references import ReferenceMix, photometric, warp
from .trainsets import pair_key, paired_images

__all__ = ["EvalItem", "eval_items", "cufed5_dir"]


@dataclass
class EvalItem:
    """One evaluation image: HR and its reference(s) in 0..255 units, multiples of 4."""

    name: str
    hr: torch.Tensor  # (3, H, W)
    refs: list[torch.Tensor]  # each (3, h, w)
    quantize: bool  # 8-bit data: LR/SR rounded to 8 bits, as the protocol does
    gray: bool  # grayscale data: metrics on one channel
    covered: torch.Tensor | None = None  # (H, W) bool: HR pixels whose content the reference holds

    def inputs(self, phases: int = 1) -> dict[str, object]:
        """Network inputs with a batch axis, in [-1, 1]: lr, lr_up, hr and the lists ref, ref_down_up
        (the keys of a training batch, whose ref/ref_down_up hold one tensor); with ``phases`` > 1
        each reference also at its sub-LR-pixel offsets (:func:`napari_refsr.phases.phase_views`)."""
        h, w = self.hr.shape[-2:]
        lr = resize_bicubic(self.hr, (h // SCALE, w // SCALE), quantize=self.quantize)
        lr_up = resize_bicubic(lr, (h, w), quantize=self.quantize)
        refs = [view for r in self.refs for view, _ in phase_views(r, phases)]
        refs_du = [down_up(r, SCALE, quantize=self.quantize) for r in refs]
        return {"lr": to_net(lr)[None], "lr_up": to_net(lr_up)[None], "hr": to_net(self.hr)[None],
                "ref": [to_net(r)[None] for r in refs],
                "ref_down_up": [to_net(r)[None] for r in refs_du]}


def _crop4(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Centre crop to ``size`` (if given) and to multiples of 4 (top-left kept, as the protocol)."""
    h, w = x.shape[-2:]
    if size:
        th, tw = min(h, size), min(w, size)
        y, x0 = (h - th) // 2, (w - tw) // 2
        x = x[:, y : y + th, x0 : x0 + tw]
        h, w = th, tw
    return x[:, : h // SCALE * SCALE, : w // SCALE * SCALE].contiguous()


_CUFED5_HR = re.compile(r"^(?P<id>.+)_0$")


def cufed5_dir(root: Path) -> Path | None:
    """The folder holding CUFED5-style ``XXX_0`` images with ``XXX_1`` references, if any."""
    for cand in (root / "test" / "CUFED5", root / "CUFED5", root):
        if not cand.is_dir():
            continue
        stems = {p.stem for p in cand.iterdir() if p.suffix.lower() in SUFFIXES}
        if any((m := _CUFED5_HR.match(s)) and f"{m.group('id')}_1" in stems for s in stems):
            return cand
    return None


# The overlapping evaluation reference of a 2D image: its held-out half seen again, shifted by a
# quarter of its length, 10 % larger, re-exposed and noisy (fixed, so tables compare).
EVAL_VIEW = ReferenceMix(overlap=1.0, similar=0.0, unrelated=0.0, scale=[1.1, 1.1], rotate=0.0,
                         gamma=[0.85, 0.85], gain=[1.05, 1.05], offset=[0.02, 0.02], colour=0.0,
                         blur=[0.0, 0.0], noise=[0.01, 0.01])
EVAL_REFERENCES = ("similar", "overlap", "registered", "unrelated")
_VIEW_SCALES = {"overlap": float(EVAL_VIEW.scale[0]), "registered": 1.0}  # reference px per image px


def _eval_overlap(full: torch.Tensor, vertical: bool, half: int, quantize: bool, gray: bool,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The overlapping reference of the held-out half ``full[..., :half]`` (along the long axis),
    ``scale`` reference px per image px, and the mask of the half's pixels it shows."""
    h, w = full.shape[-2:]
    shift = half // 4
    src_h, src_w = (half, w) if vertical else (h, half)
    cy, cx = (shift + half / 2, w / 2) if vertical else (h / 2, shift + half / 2)
    size = (int(src_h * scale) // SCALE * SCALE, int(src_w * scale) // SCALE * SCALE)
    view = warp(lambda y, x, hh, ww: full[:, y : y + hh, x : x + ww], h, w, (cy, cx), scale, 0.0, size)
    ref = photometric(view, EVAL_VIEW, np.random.default_rng(0), gray=gray, quantize=quantize)
    covered = torch.zeros((half, w) if vertical else (h, half), dtype=torch.bool)
    if vertical:
        covered[shift:] = True
    else:
        covered[:, shift:] = True
    return ref, covered


def eval_items(root: str | Path, *, level: int | str = 1, ref_dir: str | Path | None = None,
               crop: int | None = None, max_images: int | None = None,
               percentiles=DEFAULT_PERCENTILES, reference: str = "similar") -> list[EvalItem]:
    """Evaluation images of a CUFED5 folder (``XXX_0`` with reference level 1..5 or ``"all"``
    five stacked) or of a plain folder (paired ``ref_dir`` or automatic reference: the next
    slice of a stack's middle slice; for a 2D image the first half along its long side is the
    HR and ``reference`` says what the reference is: ``similar`` — the second half, ``overlap``
    — a view of the first half shifted by a quarter (:data:`EVAL_VIEW`), ``registered`` — the
    same view at the image's own scale (a second exposure, shifted), ``unrelated`` — the
    second half of the next image of the folder)."""
    if reference not in EVAL_REFERENCES:
        raise RefSRError(f"evaluation reference must be one of {', '.join(EVAL_REFERENCES)}, got {reference!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RefSRError(f"evaluation folder not found: {root}")
    cufed = cufed5_dir(root) if ref_dir is None else None
    items: list[EvalItem] = []
    if cufed is not None and reference != "similar":
        raise RefSRError(f"CUFED5 folders bring their own references (levels 1..5); {reference!r} "
                         "references are made for plain folders of images")
    if cufed is not None:
        hr_files = sorted(p for p in cufed.iterdir() if p.suffix.lower() in SUFFIXES and _CUFED5_HR.match(p.stem))
        levels = [1, 2, 3, 4, 5] if str(level) == "all" else [int(level)]
        by_stem = {p.stem: p for p in cufed.iterdir() if p.suffix.lower() in SUFFIXES}
        for p in hr_files[: max_images or None]:
            ident = _CUFED5_HR.match(p.stem).group("id")
            missing = [f"{ident}_{k}" for k in levels if f"{ident}_{k}" not in by_stem]
            if missing:
                raise RefSRError(f"CUFED5 image {p.name} has no reference {', '.join(missing)} in {cufed}")
            hr_file = ImageFile(p, percentiles)
            hr = _crop4(hr_file.region(0, 0, 0, hr_file.height, hr_file.width), crop)
            refs = []
            for k in levels:
                rf = ImageFile(by_stem[f"{ident}_{k}"], percentiles)
                refs.append(_crop4(rf.region(0, 0, 0, rf.height, rf.width), crop))
            items.append(EvalItem(p.stem, hr, refs, hr_file.quantize, hr_file.gray))
        return items
    files, find_ref = paired_images(root, ref_dir, "evaluation folder")
    for p in files[: max_images or None]:
        img = ImageFile(p, percentiles)
        ref_path = find_ref(p)
        covered = None
        if ref_path is not None:
            rf = ImageFile(ref_path, percentiles)
            frame = img.n_frames // 2
            hr = img.region(frame, 0, 0, img.height, img.width)
            ref = rf.region(min(frame, rf.n_frames - 1), 0, 0, rf.height, rf.width)
        elif img.n_frames > 1:
            frame = img.n_frames // 2
            hr = img.region(frame, 0, 0, img.height, img.width)
            nb = frame + 1 if frame + 1 < img.n_frames else frame - 1
            ref = img.region(nb, 0, 0, img.height, img.width)
        else:
            full = img.region(0, 0, 0, img.height, img.width)
            vertical = img.height > img.width
            half = (img.height if vertical else img.width) // 2
            hr, ref = (full[:, :half], full[:, half:]) if vertical else (full[:, :, :half], full[:, :, half:])
            if reference in _VIEW_SCALES:
                ref, covered = _eval_overlap(full, vertical, half, img.quantize, img.gray, _VIEW_SCALES[reference])
        if reference in _VIEW_SCALES and covered is None:
            raise RefSRError(f"an overlapping evaluation reference is made for 2D images only; {p} is a "
                             "stack or has a paired reference")
        hr, ref = _crop4(hr, crop), _crop4(ref, crop)
        if covered is not None:
            covered = _crop4(covered[None], crop)[0]
        if min(hr.shape[-2:]) < 4 * SCALE or min(ref.shape[-2:]) < 4 * SCALE:
            raise RefSRError(f"evaluation image {p} is too small (HR {tuple(hr.shape[-2:])}, reference "
                             f"{tuple(ref.shape[-2:])}; both need at least {4 * SCALE} px)")
        items.append(EvalItem(pair_key(p, root), hr, [ref], img.quantize, img.gray, covered))
    if reference == "unrelated":  # each image with the next one's reference
        if len(items) < 2:
            raise RefSRError(f"an unrelated evaluation reference needs at least two images in {root}")
        refs = [it.refs for it in items]
        for i, it in enumerate(items):
            it.refs = refs[(i + 1) % len(items)]
    return items
