"""Training sets: (LR, LR↑, HR, Ref, Ref↓↑) samples from the user's images.

Layouts:

* **CUFED** (the paper's): ``train/input/*.png`` with the same-named ``train/ref/*.png``; test
  ``CUFED5/XXX_0.png`` with references ``XXX_1.png`` … ``XXX_5.png`` (similarity levels).
* **A plain folder** of high-resolution images (PNG/JPEG/TIFF, 8/16-bit or float, grayscale or
  RGB, 2D or Z/T stacks). The reference of each crop is the same-named file of a paired
  ``ref_dir`` when given, else drawn from a mixture (:mod:`.references`): an overlapping,
  re-exposed view of the crop's scene, a similar texture (another region, or the neighbouring
  slice/frame at the same place for stacks) or a region of another image.

LR is made like the reference code does: PIL-exact bicubic ×1/4 of the HR crop (rounded to 8 bits
for 8-bit images), optionally after a Gaussian blur and with Gaussian noise added to match real
acquisitions; LR↑ and Ref↓↑ are bicubic too. Images are converted by the core's
:func:`napari_refsr.normalize.prepare` (grayscale → RGB, alpha dropped, 16-bit/float through a
robust intensity window) and come out in [-1, 1]. Every random choice of a sample comes from a
generator seeded by (seed, epoch, index), so a resumed or multi-process run sees the same data.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from napari_refsr.errors import RefSRError
from napari_refsr.normalize import DEFAULT_PERCENTILES, to_net
from napari_refsr.resize import down_up

from .degrade import SCALE, Degradation
from .files import ImageFile, list_images
from .references import ReferenceMix, overlapping_view

__all__ = ["CUFEDTrainSet", "FolderTrainSet", "build_train_set", "paired_images", "pair_key"]


def _augment_params(rng: np.random.Generator, flip: bool, rot90: bool) -> tuple[bool, bool, int]:
    """Random horizontal/vertical flips and quarter turns (drawn in this order)."""
    fx = bool(flip and rng.integers(2))
    fy = bool(flip and rng.integers(2))
    k = int(rng.integers(4)) if rot90 else 0
    return fx, fy, k


def _augment(x: torch.Tensor, params: tuple[bool, bool, int]) -> torch.Tensor:
    fx, fy, k = params
    if fx:
        x = x.flip(-1)
    if fy:
        x = x.flip(-2)
    if k:
        x = torch.rot90(x, k, dims=(-2, -1))
    return x.contiguous()


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (black, as the reference) a (3, h, w) image to (3, size, size)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h), value=0.0) if (h, w) != (size, size) else x


class _TrainBase(Dataset):
    """Shared crop → augment → degrade → sample logic; subclasses choose HR and Ref regions."""

    def __init__(self, crop: int = 160, degradation: Degradation | None = None, flip: bool = True,
                 rot90: bool = True, seed: int = 0):
        if crop % SCALE or crop < 8 * SCALE:
            raise RefSRError(f"crop must be a multiple of {SCALE} and >= {8 * SCALE}, got {crop}")
        self.crop = crop
        self.ref_pad = crop  # references are zero-padded to this side for batching
        self.degradation = degradation or Degradation()
        self.flip, self.rot90 = flip, rot90
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _sample(self, hr: torch.Tensor, ref: torch.Tensor, quantize: bool, rng, *,
                joint: bool = False) -> dict[str, torch.Tensor]:
        """``joint``: the reference is a view of the crop's own scene and gets the crop's flips and
        quarter turns (an independent quarter turn would hide the match from the 3×3 search)."""
        params = _augment_params(rng, self.flip, self.rot90)
        hr = _augment(hr, params)
        ref = _augment(ref, params if joint else _augment_params(rng, self.flip, self.rot90))
        rh, rw = ref.shape[-2] // SCALE * SCALE, ref.shape[-1] // SCALE * SCALE
        ref = ref[:, :rh, :rw]
        lr, lr_up = self.degradation(hr, quantize, rng)
        ref_du = down_up(ref, SCALE, quantize=quantize)
        out = {"lr": lr, "lr_up": lr_up, "hr": hr,
               "ref": _pad_to(ref, self.ref_pad), "ref_down_up": _pad_to(ref_du, self.ref_pad)}
        return {k: to_net(v).float().contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- CUFED


def _cufed_train_dirs(root: Path) -> tuple[Path, Path] | None:
    for base in (root / "train", root):
        if (base / "input").is_dir() and (base / "ref").is_dir():
            return base / "input", base / "ref"
    return None


class CUFEDTrainSet(_TrainBase):
    """CUFED training pairs: ``input/NAME`` (HR, random crop if larger than ``crop``) with
    ``ref/NAME`` (random crop if larger, zero-padded if smaller)."""

    def __init__(self, root: str | Path, *, percentiles=DEFAULT_PERCENTILES, **kwargs):
        super().__init__(**kwargs)
        root = Path(root).expanduser()
        dirs = _cufed_train_dirs(root)
        if dirs is None:
            raise RefSRError(f"{root} is not a CUFED training folder (expected train/input and train/ref)")
        inputs = list_images(dirs[0], recursive=False, what="CUFED input folder")
        refs = {p.stem: p for p in list_images(dirs[1], recursive=False, what="CUFED ref folder")}
        missing = [p.name for p in inputs if p.stem not in refs]
        if missing:
            raise RefSRError(f"{len(missing)} CUFED input image(s) have no reference of the same name in "
                             f"{dirs[1]}: {', '.join(missing[:5])}")
        self.pairs = []
        small = []
        for p in inputs:
            hr = ImageFile(p, percentiles)
            if min(hr.height, hr.width) < self.crop:
                small.append(f"{p.name} ({hr.height}×{hr.width})")
                continue
            self.pairs.append((hr, ImageFile(refs[p.stem], percentiles)))
        if not self.pairs:
            raise RefSRError(f"no CUFED input image in {dirs[0]} is at least {self.crop}×{self.crop} "
                             f"(crop size); e.g. {', '.join(small[:3])}")
        if small:
            warnings.warn(f"skipped {len(small)} CUFED image(s) smaller than the {self.crop}px crop", UserWarning)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        hr_file, ref_file = self.pairs[index]
        c = self.crop
        y, x = int(rng.integers(hr_file.height - c + 1)), int(rng.integers(hr_file.width - c + 1))
        hr = hr_file.region(0, y, x, c, c)
        rh, rw = min(c, ref_file.height), min(c, ref_file.width)
        ry, rx = int(rng.integers(ref_file.height - rh + 1)), int(rng.integers(ref_file.width - rw + 1))
        ref = ref_file.region(int(rng.integers(ref_file.n_frames)), ry, rx, rh, rw)
        return self._sample(hr, ref, hr_file.quantize, rng)


# ----------------------------------------------------------------------------- plain folder


class FolderTrainSet(_TrainBase):
    """Random crops of a folder of HR images, each with an automatic reference (see module doc).

    Without a paired ``ref_dir`` each sample's reference is drawn from ``references``
    (:class:`training.data.references.ReferenceMix`): an overlapping view of the same image (of a
    neighbouring frame for stacks), a similar texture (a non-overlapping region of a 2D image;
    the neighbouring frame at the same place for stacks) or a region of another image.
    An epoch visits about every crop-sized area once: each frame counts ⌊H·W / crop²⌋ samples.
    Images too small for a crop (or, when similar references are drawn, single 2D images too
    small for a crop plus a ``min_ref``-wide non-overlapping reference) are skipped with a
    warning; a folder with none usable is an error.
    """

    def __init__(self, root: str | Path, *, ref_dir: str | Path | None = None, min_ref: int = 32,
                 percentiles=DEFAULT_PERCENTILES, references: ReferenceMix | None = None, **kwargs):
        super().__init__(**kwargs)
        root = Path(root).expanduser()
        files, find_ref = paired_images(root, ref_dir, "training folder")
        self.min_ref = max(4 * SCALE, int(min_ref) // SCALE * SCALE)
        self.references = references or ReferenceMix()
        mix = self.references
        if ref_dir is None and (mix.overlap > 0 or mix.unrelated > 0):
            self.ref_pad = max(self.crop, mix.side(self.crop))
        self.entries: list[tuple[ImageFile, ImageFile | None]] = []
        skipped = []
        c = self.crop
        for p in files:
            img = ImageFile(p, percentiles)
            ref_path = find_ref(p)
            ref = None if ref_path is None else ImageFile(ref_path, percentiles)
            if min(img.height, img.width) < c:
                skipped.append(f"{p.name}: {img.height}×{img.width} is smaller than the {c}px crop")
                continue
            if (ref is None and mix.similar > 0 and img.n_frames == 1
                    and max(img.height, img.width) < c + self.min_ref):
                skipped.append(f"{p.name}: a 2D image needs one side >= crop + min_ref = "
                               f"{c + self.min_ref}px for a non-overlapping reference")
                continue
            if ref is not None and min(ref.height, ref.width) < self.min_ref:
                skipped.append(f"{p.name}: its reference is smaller than min_ref = {self.min_ref}px")
                continue
            self.entries.append((img, ref))
        if not self.entries:
            raise RefSRError(f"no usable training image in {root}: " + "; ".join(skipped[:3])
                             + ("" if len(skipped) <= 3 else f"; … ({len(skipped)} in all)"))
        if skipped:
            warnings.warn(f"skipped {len(skipped)} training image(s): " + "; ".join(skipped[:3]), UserWarning)
        # sample index → (entry, frame) through cumulative per-frame weights
        weights = []
        for e, (img, _) in enumerate(self.entries):
            per_frame = max(1, (img.height * img.width) // (c * c))
            weights.extend([(e, f, per_frame) for f in range(img.n_frames)])
        self._table = weights
        self._cum = np.cumsum([w for _, _, w in weights])

    def __len__(self) -> int:
        return int(self._cum[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        e, frame, _ = self._table[int(np.searchsorted(self._cum, index, side="right"))]
        img, ref_file = self.entries[e]
        c = self.crop
        if ref_file is not None:  # paired reference folder
            y, x = int(rng.integers(img.height - c + 1)), int(rng.integers(img.width - c + 1))
            rframe = frame if ref_file.n_frames == img.n_frames else int(rng.integers(ref_file.n_frames))
            if (ref_file.height, ref_file.width) == (img.height, img.width):
                ry, rx, rh, rw = y, x, c, c  # aligned pair: the same window
            else:
                rh, rw = min(c, ref_file.height), min(c, ref_file.width)
                ry, rx = int(rng.integers(ref_file.height - rh + 1)), int(rng.integers(ref_file.width - rw + 1))
            ref = ref_file.region(rframe, ry, rx, rh, rw)
            return self._sample(img.region(frame, y, x, c, c), ref, img.quantize, rng)
        kind = self.references.draw_kind(rng)
        if kind == "unrelated" and len(self.entries) < 2:
            kind = "similar"  # one image: nothing else to draw from
        if kind == "similar" and img.n_frames == 1 and max(img.height, img.width) < c + self.min_ref:
            kind = "overlap"  # no room for a non-overlapping region
        neighbour = frame
        if img.n_frames > 1:  # stacks: the reference comes from a neighbouring slice/frame
            options = [f for f in (frame - 1, frame + 1) if 0 <= f < img.n_frames]
            neighbour = options[int(rng.integers(len(options)))]
        if kind == "similar" and img.n_frames == 1:  # a non-overlapping crop of the same image
            y, x, ref_box = _split_crop(img.height, img.width, c, self.min_ref, rng)
            ref = img.region(0, *ref_box)
        else:
            y, x = int(rng.integers(img.height - c + 1)), int(rng.integers(img.width - c + 1))
            if kind == "similar":  # stack: the neighbouring slice at the same place
                ref = img.region(neighbour, y, x, c, c)
            elif kind == "overlap":
                ref = overlapping_view(lambda *box: img.region(neighbour, *box), img.height, img.width,
                                       (y, x, c, c), self.ref_pad, self.references, rng,
                                       gray=img.gray, quantize=img.quantize)
            else:
                ref = self._unrelated(e, rng)
        hr = img.region(frame, y, x, c, c)
        return self._sample(hr, ref, img.quantize, rng, joint=kind == "overlap")

    def _unrelated(self, entry: int, rng: np.random.Generator) -> torch.Tensor:
        """A region (up to the reference side) of another training image."""
        other = int(rng.integers(len(self.entries) - 1))
        other_img = self.entries[other + (other >= entry)][0]
        rh, rw = min(self.ref_pad, other_img.height), min(self.ref_pad, other_img.width)
        ry, rx = int(rng.integers(other_img.height - rh + 1)), int(rng.integers(other_img.width - rw + 1))
        return other_img.region(int(rng.integers(other_img.n_frames)), ry, rx, rh, rw)


def paired_images(root: Path, ref_dir, what: str):
    """Images under ``root`` and a function giving each one's paired reference in ``ref_dir``
    (None without ``ref_dir``; a clear error when the pair is missing). A reference folder inside
    ``root`` is not itself used as data."""
    files = list_images(root, what=what)
    if not ref_dir:
        return files, lambda path: None
    ref_root = Path(ref_dir).expanduser()
    refs = {pair_key(p, ref_root): p for p in list_images(ref_root, what="reference folder")}

    def find(path: Path) -> Path:
        key = pair_key(path, root)
        if key not in refs:
            raise RefSRError(f"no reference for {path} in {ref_root} (expected a file named {key}.png/.tif/...)")
        return refs[key]

    return [p for p in files if ref_root not in p.parents], find


def pair_key(path: Path, root: Path) -> str:
    """Relative path without extension: how images and their paired references are matched."""
    return path.relative_to(root).with_suffix("").as_posix()


def _split_crop(h: int, w: int, c: int, min_ref: int, rng) -> tuple[int, int, tuple[int, int, int, int]]:
    """HR crop origin (y, x) and a reference box (y, x, h, w) that does not overlap it.

    Along the long axis the HR crop leaves a gap before or after it; the reference (at most
    c wide, at least ``min_ref``) is taken from the larger usable side.
    """
    vertical = h > w
    long_len, short_len = (h, w) if vertical else (w, h)
    starts = [a for a in range(long_len - c + 1) if a >= min_ref or long_len - c - a >= min_ref]
    a = starts[int(rng.integers(len(starts)))]
    sides = [(0, a), (a + c, long_len - a - c)]
    sides = [s for s in sides if s[1] >= min_ref]
    s0, s_len = sides[int(rng.integers(len(sides)))]
    r_len = min(c, s_len) // SCALE * SCALE
    r_start = s0 + int(rng.integers(s_len - r_len + 1))
    b = int(rng.integers(short_len - c + 1))
    r_b = int(rng.integers(short_len - c + 1))
    if vertical:
        return a, b, (r_start, r_b, r_len, c)
    return b, a, (r_b, r_start, c, r_len)


def build_train_set(data_cfg: dict, *, seed: int = 0) -> _TrainBase:
    """The training dataset described by the config's ``data`` section."""
    root = data_cfg.get("train")
    if not root:
        raise RefSRError("no training data: set data.train (or --data) to a CUFED root or an image folder")
    root = Path(str(root)).expanduser()
    if not root.exists():
        raise RefSRError(f"training data folder not found: {root}")
    if not root.is_dir():
        raise RefSRError(f"training data {root} is a file; give the folder that holds the images")
    common = dict(crop=int(data_cfg["crop"]), seed=seed, flip=bool(data_cfg["flip"]), rot90=bool(data_cfg["rot90"]),
                  degradation=Degradation(data_cfg["blur"], data_cfg["noise"]),
                  percentiles=tuple(data_cfg["percentiles"]))
    layout = data_cfg.get("layout", "auto")
    if layout == "cufed" or (layout == "auto" and _cufed_train_dirs(root) is not None and not data_cfg.get("ref_dir")):
        return CUFEDTrainSet(root, **common)
    return FolderTrainSet(root, ref_dir=data_cfg.get("ref_dir"), min_ref=int(data_cfg["min_ref"]),
                          references=ReferenceMix.from_config(data_cfg.get("reference")), **common)
