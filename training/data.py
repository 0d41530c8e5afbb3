"""Training and validation data: (LR, LR↑, HR, Ref, Ref↓↑) samples from the user's images.

Layouts:

* **CUFED** (the paper's): ``train/input/*.png`` with the same-named ``train/ref/*.png``; test
  ``CUFED5/XXX_0.png`` with references ``XXX_1.png`` … ``XXX_5.png`` (similarity levels).
* **A plain folder** of high-resolution images (PNG/JPEG/TIFF, 8/16-bit or float, grayscale or
  RGB, 2D or Z/T stacks). The reference of each crop is chosen automatically: a neighbouring
  slice/frame at the same place for stacks, another non-overlapping crop of the same image for
  2D images, or the same-named file of a paired ``ref_dir`` when given.

LR is made like the reference code does: PIL-exact bicubic ×1/4 of the HR crop (rounded to 8 bits
for 8-bit images), optionally after a Gaussian blur and with Gaussian noise added to match real
acquisitions; LR↑ and Ref↓↑ are bicubic too. Images are converted by the core's
:func:`napari_refsr.normalize.prepare` (grayscale → RGB, alpha dropped, 16-bit/float through a
robust intensity window) and come out in [-1, 1]. Every random choice of a sample comes from a
generator seeded by (seed, epoch, index), so a resumed or multi-process run sees the same data.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from napari_refsr.errors import RefSRError
from napari_refsr.imageio import SUFFIXES, read_image
from napari_refsr.normalize import DEFAULT_PERCENTILES, intensity_window, prepare
from napari_refsr.resize import down_up, resize_bicubic

__all__ = [
    "list_images", "ImageFile", "Degradation", "CUFEDTrainSet", "FolderTrainSet", "build_train_set",
    "EvalItem", "eval_items", "to_network", "EpochSampler", "SCALE",
]

SCALE = 4
KEYS = ("lr", "lr_up", "hr", "ref", "ref_down_up")


# ----------------------------------------------------------------------------- files and frames


def list_images(folder: str | Path, *, recursive: bool = True, what: str = "folder") -> list[Path]:
    """Image files (by extension) under ``folder``, sorted; a clear error when there are none."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise RefSRError(f"{what} not found: {root}")
    if not root.is_dir():
        raise RefSRError(f"{what} {root} is not a folder")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise RefSRError(f"{what} {root} holds no images ({', '.join(sorted(SUFFIXES))})")
    return files


def _frames_of(array: np.ndarray, path: Path) -> np.ndarray:
    """Any image array → (N, H, W) or (N, H, W, C) frames (C last, in 1/3/4)."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and a.shape[-1] <= 4 < a.shape[-2]:  # (H, W, C); C = 2 is refused later
        return a[None]
    if a.ndim == 3:
        return a
    if a.ndim >= 4:
        if a.shape[-1] <= 4 < a.shape[-2]:
            return a.reshape((-1,) + a.shape[-3:])
        return a.reshape((-1,) + a.shape[-2:])
    raise RefSRError(f"{path}: cannot use an image of shape {a.shape}")


class ImageFile:
    """One image file: its frames, intensity window and 8-bit flag, read lazily and cached."""

    _cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
    cache_bytes = 1 << 30  # per process (each DataLoader worker has its own)

    def __init__(self, path: Path, percentiles: Sequence[float] = DEFAULT_PERCENTILES):
        self.path = Path(path)
        frames = self._read()
        self.n_frames = int(frames.shape[0])
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])
        if frames.ndim == 4 and frames.shape[-1] not in (1, 3, 4):
            raise RefSRError(f"{self.path} has {frames.shape[-1]} channels per pixel; use grayscale, RGB or RGBA images")
        self.quantize = frames.dtype == np.uint8  # 8-bit data: PIL's rounding, x / 127.5 - 1
        colour = frames if frames.ndim == 3 else frames[..., :3]
        if frames.dtype.kind not in "uif":
            raise RefSRError(f"{self.path}: unsupported pixel type {frames.dtype}")
        if frames.dtype.kind == "f" and not np.isfinite(colour).all():
            raise RefSRError(f"{self.path} contains NaN or infinite values")
        self.window = None if self.quantize else intensity_window(colour, tuple(percentiles))
        self.gray = frames.ndim == 3 or frames.shape[-1] == 1

    def _read(self) -> np.ndarray:
        key = str(self.path)
        cache = ImageFile._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        frames = _frames_of(read_image(self.path), self.path)  # RefSRError names the file
        cache[key] = frames
        total = sum(v.nbytes for v in cache.values())
        while total > self.cache_bytes and len(cache) > 1:
            _, old = cache.popitem(last=False)
            total -= old.nbytes
        return frames

    def region(self, frame: int, y: int, x: int, h: int, w: int) -> torch.Tensor:
        """(3, h, w) float32 in 0..255 units (the 8-bit grid for 8-bit files)."""
        raw = self._read()[frame, y : y + h, x : x + w]
        prep = prepare(raw, f"{self.path} frame {frame}", value_range=self.window, min_size=1)
        return prep.pixels.clone()


# ----------------------------------------------------------------------------- degradation


def _draw(value, rng: np.random.Generator) -> float:
    """A number, or a [low, high] range drawn uniformly."""
    if isinstance(value, (list, tuple)):
        lo, hi = float(value[0]), float(value[1])
        return float(rng.uniform(lo, hi)) if hi > lo else lo
    return float(value or 0.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding (no-op for sigma <= 0)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


@dataclass
class Degradation:
    """HR → LR: optional Gaussian blur (sigma in HR pixels), bicubic ×1/4, optional noise.

    ``blur`` and ``noise`` are numbers or [low, high] ranges drawn per sample; noise std is in
    units of the full intensity range (0..1).
    """

    blur: float | Sequence[float] = 0.0
    noise: float | Sequence[float] = 0.0

    def __call__(self, hr: torch.Tensor, quantize: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, LR↑) in 0..255 units from an HR image (3, H, W) in 0..255 units."""
        h, w = hr.shape[-2:]
        src = gaussian_blur(hr, _draw(self.blur, rng))
        lr = resize_bicubic(src, (h // SCALE, w // SCALE), quantize=quantize)
        std = _draw(self.noise, rng)
        if std > 0:
            noise = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32)) * (std * 255.0)
            lr = lr + noise
            lr = torch.floor(lr + 0.5) if quantize else lr
            lr = lr.clamp(0, 255)
        lr_up = resize_bicubic(lr, (h, w), quantize=quantize)
        return lr, lr_up


def _augment(x: torch.Tensor, rng: np.random.Generator, flip: bool, rot90: bool) -> torch.Tensor:
    if flip and rng.integers(2):
        x = x.flip(-1)
    if flip and rng.integers(2):
        x = x.flip(-2)
    if rot90:
        k = int(rng.integers(4))
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    return x.contiguous()


def to_network(x: torch.Tensor) -> torch.Tensor:
    """0..255 units → the network's [-1, 1]."""
    return x / 127.5 - 1.0


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
        self.degradation = degradation or Degradation()
        self.flip, self.rot90 = flip, rot90
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _sample(self, hr: torch.Tensor, ref: torch.Tensor, quantize: bool, rng) -> dict[str, torch.Tensor]:
        hr = _augment(hr, rng, self.flip, self.rot90)
        ref = _augment(ref, rng, self.flip, self.rot90)
        rh, rw = ref.shape[-2] // SCALE * SCALE, ref.shape[-1] // SCALE * SCALE
        ref = ref[:, :rh, :rw]
        lr, lr_up = self.degradation(hr, quantize, rng)
        ref_du = down_up(ref, SCALE, quantize=quantize)
        out = {"lr": lr, "lr_up": lr_up, "hr": hr,
               "ref": _pad_to(ref, self.crop), "ref_down_up": _pad_to(ref_du, self.crop)}
        return {k: to_network(v).float().contiguous() for k, v in out.items()}


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

    An epoch visits about every crop-sized area once: each frame counts ⌊H·W / crop²⌋ samples.
    Images too small for a crop (or, for single 2D images, for a crop plus a ``min_ref``-wide
    non-overlapping reference) are skipped with a warning; a folder with none usable is an error.
    """

    def __init__(self, root: str | Path, *, ref_dir: str | Path | None = None, min_ref: int = 32,
                 percentiles=DEFAULT_PERCENTILES, **kwargs):
        super().__init__(**kwargs)
        root = Path(root).expanduser()
        files, find_ref = _paired_images(root, ref_dir, "training folder")
        self.min_ref = max(4 * SCALE, int(min_ref) // SCALE * SCALE)
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
            if ref is None and img.n_frames == 1 and max(img.height, img.width) < c + self.min_ref:
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
        elif img.n_frames > 1:  # stack: the neighbouring slice/frame at the same place
            y, x = int(rng.integers(img.height - c + 1)), int(rng.integers(img.width - c + 1))
            options = [f for f in (frame - 1, frame + 1) if 0 <= f < img.n_frames]
            ref = img.region(options[int(rng.integers(len(options)))], y, x, c, c)
        else:  # single 2D image: a non-overlapping crop of the same image
            y, x, ref_box = _split_crop(img.height, img.width, c, self.min_ref, rng)
            ref = img.region(0, *ref_box)
        hr = img.region(frame, y, x, c, c)
        return self._sample(hr, ref, img.quantize, rng)


def _paired_images(root: Path, ref_dir, what: str):
    """Images under ``root`` and a function giving each one's paired reference in ``ref_dir``
    (None without ``ref_dir``; a clear error when the pair is missing). A reference folder inside
    ``root`` is not itself used as data."""
    files = list_images(root, what=what)
    if not ref_dir:
        return files, lambda path: None
    ref_root = Path(ref_dir).expanduser()
    refs = {_pair_key(p, ref_root): p for p in list_images(ref_root, what="reference folder")}

    def find(path: Path) -> Path:
        key = _pair_key(path, root)
        if key not in refs:
            raise RefSRError(f"no reference for {path} in {ref_root} (expected a file named {key}.png/.tif/...)")
        return refs[key]

    return [p for p in files if ref_root not in p.parents], find


def _pair_key(path: Path, root: Path) -> str:
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
    return FolderTrainSet(root, ref_dir=data_cfg.get("ref_dir"), min_ref=int(data_cfg["min_ref"]), **common)


# ----------------------------------------------------------------------------- sampler


class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, split across processes, able to start mid-epoch.

    The permutation depends only on (seed, epoch); process ``rank`` takes every ``world``-th
    index of it, so a resumed or distributed run sees exactly the samples it would have seen.
    """

    def __init__(self, length: int, *, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world, self.shuffle = length, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, skipping this process's first ``start`` samples."""
        self.epoch, self.start = int(epoch), int(start)

    def per_rank(self) -> int:
        return self.length // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        mine = order[: self.per_rank() * self.world][self.rank :: self.world]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


# ----------------------------------------------------------------------------- evaluation data


@dataclass
class EvalItem:
    """One evaluation image: HR and its reference(s) in 0..255 units, multiples of 4."""

    name: str
    hr: torch.Tensor  # (3, H, W)
    refs: list[torch.Tensor]  # each (3, h, w)
    quantize: bool  # 8-bit data: LR/SR rounded to 8 bits, as the protocol does
    gray: bool  # grayscale data: metrics on one channel

    def inputs(self) -> dict[str, object]:
        """Network inputs with a batch axis, in [-1, 1]: lr, lr_up, hr, refs, refs_down_up."""
        h, w = self.hr.shape[-2:]
        lr = resize_bicubic(self.hr, (h // SCALE, w // SCALE), quantize=self.quantize)
        lr_up = resize_bicubic(lr, (h, w), quantize=self.quantize)
        refs_du = [down_up(r, SCALE, quantize=self.quantize) for r in self.refs]
        return {"lr": to_network(lr)[None], "lr_up": to_network(lr_up)[None], "hr": to_network(self.hr)[None],
                "refs": [to_network(r)[None] for r in self.refs],
                "refs_down_up": [to_network(r)[None] for r in refs_du]}


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


def _cufed5_dir(root: Path) -> Path | None:
    """The folder holding CUFED5-style ``XXX_0`` images with ``XXX_1`` references, if any."""
    for cand in (root / "test" / "CUFED5", root / "CUFED5", root):
        if not cand.is_dir():
            continue
        stems = {p.stem for p in cand.iterdir() if p.suffix.lower() in SUFFIXES}
        if any((m := _CUFED5_HR.match(s)) and f"{m.group('id')}_1" in stems for s in stems):
            return cand
    return None


def eval_items(root: str | Path, *, level: int | str = 1, ref_dir: str | Path | None = None,
               crop: int | None = None, max_images: int | None = None,
               percentiles=DEFAULT_PERCENTILES) -> list[EvalItem]:
    """Evaluation images of a CUFED5 folder (``XXX_0`` with reference level 1..5 or ``"all"``
    five stacked) or of a plain folder (paired ``ref_dir`` or automatic reference: the next
    slice of a stack's middle slice; for a 2D image the first half along its long side is the
    HR and the second half the reference)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RefSRError(f"evaluation folder not found: {root}")
    cufed = _cufed5_dir(root) if ref_dir is None else None
    items: list[EvalItem] = []
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
    files, find_ref = _paired_images(root, ref_dir, "evaluation folder")
    for p in files[: max_images or None]:
        img = ImageFile(p, percentiles)
        ref_path = find_ref(p)
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
            if img.height > img.width:
                half = img.height // 2
                hr, ref = full[:, :half], full[:, half:]
            else:
                half = img.width // 2
                hr, ref = full[:, :, :half], full[:, :, half:]
        hr, ref = _crop4(hr, crop), _crop4(ref, crop)
        if min(hr.shape[-2:]) < 4 * SCALE or min(ref.shape[-2:]) < 4 * SCALE:
            raise RefSRError(f"evaluation image {p} is too small (HR {tuple(hr.shape[-2:])}, reference "
                             f"{tuple(ref.shape[-2:])}; both need at least {4 * SCALE} px)")
        items.append(EvalItem(_pair_key(p, root), hr, [ref], img.quantize, img.gray))
    return items
