"""Inference: numpy images in, numpy images out, for every front end.

Steps: validate and normalise the LR image and the references (:mod:`.normalize`); crop each
reference to a multiple of 4 and make Ref↓↑ with PIL-exact bicubic (:mod:`.resize`); encode the
reference set once; run the network tile by tile over the LR image (LR↑ made per tile from the
LR crop plus a margin, identical to resizing the whole image); blend tiles (:mod:`.tiling`);
map the result back to the input's dtype and channels. On out-of-memory the tile and the search
budget are halved and the slice is redone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .confidence import upsample_confidence
from .devices import choose_device, is_out_of_memory, release_memory
from .errors import Cancelled, RefSRError
from .model import RefSRModel
from .normalize import DEFAULT_PERCENTILES, Prepared, intensity_window, prepare, restore, to_net
from .options import MIN_SEARCH_BUDGET, MIN_TILE, check_callback, check_overlap, check_percentiles
from .options import check_search_budget, check_tile, check_value_range, resolve_model
from .phases import check_phases, phase_views, resolve_phases
from .resize import down_up, resize_bicubic
from .search import DEFAULT_BUDGET, decode_index
from .tiling import Blender, Tile, intersects, plan_tiles

DEFAULT_TILE = 128  # LR pixels
DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles
MIN_REF = 16  # reference pixels (a 4×4 grid of searchable patches)
_LR_MARGIN = 3  # LR pixels of context that make a tile's LR↑ equal the whole image's

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]

__all__ = ["UpscaleResult", "upscale", "upscale_detailed", "upscale_nd", "RegionUpscaler", "region_context",
           "resolve_axes", "DEFAULT_TILE", "DEFAULT_OVERLAP", "MIN_TILE"]


@dataclass
class UpscaleResult:
    """Output of a run: the ×4 image, the confidence S at output size, and where textures came from."""

    image: np.ndarray  # input dtype and channels, spatial axes ×4
    confidence: np.ndarray  # float32, spatial axes ×4: the soft attention S, in [-1, 1] (see .confidence)
    source: np.ndarray  # int32 (..., H, W, 3) at LR size: reference number, row, column (ref pixels)
    tile: int  # the tile size that finally ran (smaller than asked after an out-of-memory retry)


def _as_list(ref) -> list:
    if isinstance(ref, (list, tuple)):
        return list(ref)
    return [ref]


class _Engine:
    """The network on its device with the reference set encoded once; runs LR tiles."""

    def __init__(self, model: RefSRModel, refs: Sequence[Prepared], device, half, budget: int,
                 phases: int | None = None):
        self.model = model.to(device if device is not None else model.device, half)
        self.device = self.model.device
        self.dtype = torch.float16 if self.model.half else torch.float32
        self.net = self.model.network
        self.budget = budget  # the search's scratch bytes, passed with every call (the network is shared)
        self.phases = resolve_phases(phases, self.net, [tuple(p.pixels.shape[1:]) for p in refs],
                                     element_bytes=2 if self.model.half else 4)
        ref_t, ref_du = [], []
        self.ref_shapes = []  # key grid of each searched copy
        self.ref_origins = []  # (reference number, dy, dx) of each searched copy (napari_refsr.phases)
        for n, p in enumerate(refs):
            for pix, (dy, dx) in phase_views(p.pixels.to(self.device, torch.float32), self.phases):
                ref_t.append(to_net(pix)[None].to(self.dtype))
                ref_du.append(to_net(down_up(pix, 4, quantize=p.quantize))[None].to(self.dtype))
                self.ref_shapes.append((pix.shape[1] // 4, pix.shape[2] // 4))
                self.ref_origins.append((n, dy, dx))
        with torch.inference_mode():
            self.bank = self.net.encode_references(ref_t, ref_du)[0]

    def run(self, lr: Prepared, tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SR (3, 4h, 4w), S (h, w) and index (h, w) for one tile of the LR image."""
        _, H, W = lr.pixels.shape
        y0, y1 = max(0, tile.y0 - _LR_MARGIN), min(H, tile.y1 + _LR_MARGIN)
        x0, x1 = max(0, tile.x0 - _LR_MARGIN), min(W, tile.x1 + _LR_MARGIN)
        crop = lr.pixels[:, y0:y1, x0:x1].to(self.device, torch.float32)
        up = resize_bicubic(crop, ((y1 - y0) * 4, (x1 - x0) * 4), quantize=lr.quantize)
        ty, tx = tile.y0 - y0, tile.x0 - x0
        th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
        lr_t = to_net(crop[:, ty : ty + th, tx : tx + tw])[None].to(self.dtype)
        up_t = to_net(up[:, ty * 4 : (ty + th) * 4, tx * 4 : (tx + tw) * 4])[None].to(self.dtype)
        with torch.inference_mode():
            out = self.net.forward_bank(lr_t, up_t, [self.bank], search_budget=self.budget)
        return (out[0][0].float().cpu().numpy(), out.S[0, 0].float().cpu().numpy(),
                out.index[0].cpu().numpy())


def _prepare_refs(refs, gray_lr: bool, percentiles, value_range) -> list[Prepared]:
    refs = _as_list(refs)
    if not refs:
        raise RefSRError("at least one reference image is needed")
    out = []
    for i, r in enumerate(refs, 1):
        p = prepare(r, f"reference {i}", percentiles=percentiles, value_range=value_range, min_size=MIN_REF)
        if (p.channels in (0, 1)) != gray_lr:
            raise RefSRError(f"reference {i} is {'grayscale' if p.channels in (0, 1) else 'colour'} "
                             f"but the image is {'grayscale' if gray_lr else 'colour'}; "
                             "give references with the same kind of channels")
        out.append(p)
    return out


@dataclass(frozen=True)
class Window:
    """Where an LR crop lies in its whole (``height``×``width``) image, and the ``region`` of the
    whole image (LR pixels) whose result is wanted from it."""

    y0: int
    x0: int
    height: int
    width: int
    region: Tile

    def local(self, t: Tile) -> Tile:
        """Tile ``t`` (whole-image pixels) in the crop's pixels."""
        return Tile(t.y0 - self.y0, t.y1 - self.y0, t.x0 - self.x0, t.x1 - self.x0)


def _run_slice(engine: _Engine, lr: Prepared, tile: int, overlap: int, step: Callable[[], None],
               window: Window | None = None):
    """Run and blend the tiles of the whole image's plan that meet ``window.region`` (default: all)."""
    h, w = lr.pixels.shape[1:]
    window = window or Window(0, 0, h, w, Tile(0, h, 0, w))
    tiles = [t for t in plan_tiles(window.height, window.width, tile, overlap) if intersects(t, window.region)]
    blend = Blender(window.height, window.width, overlap, window.region)
    for t in tiles:
        sr, s, index = engine.run(lr, window.local(t))
        blend.add(t, "sr", np.moveaxis(sr, 0, -1), scale=4)
        blend.add(t, "S", s)
        blend.add_discrete(t, "index", index)
        step()
    return np.moveaxis(blend.result("sr"), -1, 0), blend.result("S"), blend.result("index")


def _source_map(index: np.ndarray, engine: _Engine) -> np.ndarray:
    """Hard-attention indices → (H, W, 3): reference number, and the centre of the matched 4×4
    block in reference pixels (row, column) — phase copies map back to their reference."""
    decoded = decode_index(index, engine.ref_shapes)
    origins = np.asarray(engine.ref_origins, dtype=np.int64)[decoded[..., 0]]
    decoded[..., 0] = origins[..., 0]
    decoded[..., 1:] = decoded[..., 1:] * 4 + 2 + origins[..., 1:]
    return decoded.astype(np.int32)


def _check_finite_output(sr: np.ndarray, engine: _Engine) -> None:
    """A network that overflows or holds NaN weights must fail, not return a black image."""
    if not np.isfinite(sr).all():
        hint = "; try without half precision" if engine.model.half else ""
        raise RefSRError(f"the model {engine.model.name!r} produced NaN or infinite values for this image "
                         f"(damaged or overflowing weights){hint}")


def _encode(model, refs, device, half, budget, phases=None) -> _Engine:
    """The engine with the reference set encoded; out-of-memory becomes advice."""
    try:
        return _Engine(model, refs, device, half, budget, phases)
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        if is_out_of_memory(err):
            raise RefSRError("out of memory while encoding the reference images; use smaller "
                             "references, fewer of them, fewer phases, or device 'cpu'") from err
        raise


class _Runner:
    """Runs slices with a shared engine, progress, cancel and out-of-memory retries."""

    def __init__(self, model, refs, *, tile, overlap, device, half, budget, progress, cancel, total_slices,
                 phases=None):
        self.args = (model, refs, device, half)
        self.phases = phases
        self.tile, self.overlap, self.budget = int(tile), int(overlap), int(budget)
        self.progress, self.cancel = progress, cancel
        self.total_slices = total_slices
        self.slices_done = 0
        self.done = self.total = 0  # tiles, over all slices (the total grows if a retry re-plans)
        self.engine = None

    def _engine(self) -> _Engine:
        if self.engine is None:
            self.engine = _encode(*self.args, self.budget, self.phases)
        return self.engine

    def _step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")

    def slice(self, lr: Prepared):
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")
        engine = self._engine()
        h, w = lr.pixels.shape[1:]
        while True:
            per_slice = len(plan_tiles(h, w, self.tile, self.overlap))
            start = self.done
            self.total = self.done + per_slice * (self.total_slices - self.slices_done)
            try:
                result = _run_slice(engine, lr, self.tile, self.overlap, self._step)
                _check_finite_output(result[0], engine)
                self.slices_done += 1
                return result
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                if self.tile <= MIN_TILE:
                    raise RefSRError(f"out of memory even with {self.tile}-pixel tiles on {engine.device}; "
                                     "use device 'cpu' or a smaller image") from err
                release_memory(engine.device)
                self.tile = max(MIN_TILE, self.tile // 2)
                self.budget = max(MIN_SEARCH_BUDGET, self.budget // 2)
                engine.budget = self.budget
                self.done = start  # the slice is redone with smaller tiles


def resolve_axes(shape: Sequence[int], spatial_axes: tuple[int, int] = (-2, -1),
                 channel_axis: int | None = None) -> tuple[list[int], tuple[int, int], int | None]:
    """(looped axes, (Y, X), channel axis) as non-negative axes of an array of ``shape``."""
    nd = len(shape)
    if nd < 2:
        raise RefSRError(f"image must have at least 2 dimensions, got shape {tuple(shape)}")
    try:
        ya, xa = (a % nd for a in spatial_axes)
        ca = None if channel_axis is None else channel_axis % nd
    except (TypeError, ValueError) as err:
        raise RefSRError(f"invalid axes {spatial_axes}, {channel_axis}") from err
    if ya == xa or ca in (ya, xa) or not (-nd <= spatial_axes[0] < nd and -nd <= spatial_axes[1] < nd):
        raise RefSRError(f"spatial axes {spatial_axes} and channel axis {channel_axis} must be distinct axes of a {nd}D image")
    return [a for a in range(nd) if a not in (ya, xa, ca)], (ya, xa), ca


def upscale_nd(
    model: RefSRModel,
    data,
    refs,
    *,
    spatial_axes: tuple[int, int] = (-2, -1),
    channel_axis: int | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    half: bool | None = None,
    value_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    search_budget: int = DEFAULT_BUDGET,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    phases: int | None = None,
) -> UpscaleResult:
    """Upscale every 2D slice of ``data`` (Y, X = ``spatial_axes``; channels on ``channel_axis``)
    against one reference set. Other axes (Z, T, …) are looped over and kept.

    ``phases``: reference copies per axis searched at sub-LR-pixel offsets
    (:mod:`napari_refsr.phases`; None = the network's own setting, 1 = the published search).

    For non-uint8 data one intensity window (percentiles of the whole array) serves every slice,
    so a stack stays consistent. ``device=None`` keeps the model where it is; "auto" picks one.
    """
    model = resolve_model(model)
    tile = check_tile(tile)
    overlap = check_overlap(overlap, tile)
    percentiles = check_percentiles(percentiles)
    value_range = check_value_range(value_range)
    search_budget = check_search_budget(search_budget)
    phases = None if phases is None else check_phases(phases)
    progress, cancel = check_callback(progress, "progress"), check_callback(cancel, "cancel")
    if data is None:
        raise RefSRError("image is missing (got None)")
    arr = np.asarray(data)
    if arr.size == 0:
        raise RefSRError(f"image of shape {arr.shape} is empty (an axis of length 0): too small to upscale")
    nd = arr.ndim
    loop_axes, (ya, xa), ca = resolve_axes(arr.shape, spatial_axes, channel_axis)
    order = loop_axes + [ya, xa] + ([ca] if ca is not None else [])
    moved = np.transpose(arr, order)
    loop_shape = moved.shape[: len(loop_axes)]
    user_range = value_range  # references use it too; otherwise each gets its own window
    if value_range is None and arr.size and arr.dtype.kind in "uif" and arr.dtype != np.uint8:
        if arr.dtype.kind != "f" or np.isfinite(arr).all():  # NaN is reported per slice below
            value_range = intensity_window(arr, percentiles)
    if device is not None:
        device = choose_device(device)
    n_slices = int(np.prod(loop_shape)) if loop_shape else 1
    runner = None
    images, confs, sources = [], [], []
    for idx in itertools.product(*(range(n) for n in loop_shape)):
        lr = prepare(moved[idx], "image", percentiles=percentiles, value_range=value_range)
        if runner is None:
            prepared_refs = _prepare_refs(refs, lr.channels in (0, 1), percentiles, user_range)
            runner = _Runner(model, prepared_refs, tile=tile, overlap=overlap, device=device, half=half,
                             budget=search_budget, progress=progress, cancel=cancel, total_slices=n_slices,
                             phases=phases)
        sr, s, index = runner.slice(lr)
        images.append(restore(sr, lr))
        confs.append(upsample_confidence(s, 4))
        sources.append(_source_map(index, runner.engine))
    out_img = np.stack(images).reshape(loop_shape + images[0].shape)
    out_conf = np.stack(confs).reshape(loop_shape + confs[0].shape)
    out_src = np.stack(sources).reshape(loop_shape + sources[0].shape)
    # back to the caller's axis order (spatial axes now ×4)
    inverse = np.argsort(order)
    image = np.transpose(out_img, inverse) if out_img.ndim == nd else out_img
    kept = [a for a in range(nd) if a != ca]
    kept_order = [a for a in order if a != ca]
    conf = np.transpose(out_conf, np.argsort(kept_order))
    src = np.transpose(out_src, list(np.argsort(kept_order)) + [len(kept)])
    return UpscaleResult(image, conf.astype(np.float32), src, runner.tile)


def upscale_detailed(model: RefSRModel, lr, ref, **options) -> UpscaleResult:
    """Upscale one 2D image (H, W[, C]); see :func:`upscale_nd` for the options."""
    arr = np.asarray(lr)
    channel_axis = -1 if arr.ndim == 3 else None
    if arr.ndim not in (2, 3):
        raise RefSRError(f"image must be (H, W) or (H, W, C); got shape {arr.shape} (use upscale_nd for stacks)")
    return upscale_nd(model, arr, ref, spatial_axes=(0, 1), channel_axis=channel_axis, **options)


def upscale(model: RefSRModel, lr, ref, *, tile: int = DEFAULT_TILE, device: str | torch.device | None = "auto",
            return_confidence: bool = False, progress: Progress | None = None, cancel: Cancel | None = None,
            **options):
    """×4 super-resolution of ``lr`` with texture from ``ref`` (one array or a list).

    Returns the image in ``lr``'s dtype and channel layout, or ``(image, confidence)``.
    """
    res = upscale_detailed(model, lr, ref, tile=tile, device=device, progress=progress, cancel=cancel, **options)
    return (res.image, res.confidence) if return_confidence else res.image


def region_context(tile: int = DEFAULT_TILE) -> int:
    """LR pixels of context a region needs on each side (where the image goes on) so that
    :class:`RegionUpscaler` gives exactly the whole image's result there: every tile of the
    whole-image plan that meets the region (at most ``tile - 1`` pixels beyond it) plus the LR
    margin of its LR↑."""
    return int(tile) + _LR_MARGIN


class RegionUpscaler:
    """Upscales regions of one large image so that they join into exactly what :func:`upscale_nd`
    gives for the whole image: the same tile plan and blending weights, one intensity window for
    the whole image, and the reference set encoded once (reused by every region and thread).

    ``colour``: whether the LR image has colour (references must match). ``value_range``: the whole
    image's intensity window (required for non-uint8 images, see
    :func:`~napari_refsr.normalize.intensity_window`); ``ref_range`` the caller's own fixed range,
    which references use too. Out-of-memory is an error here (a smaller tile would change the plan).
    """

    def __init__(self, model: RefSRModel, refs, *, colour: bool, value_range: tuple[float, float] | None = None,
                 ref_range: tuple[float, float] | None = None, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP, device: str | torch.device | None = None,
                 half: bool | None = None, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                 search_budget: int = DEFAULT_BUDGET, phases: int | None = None):
        if tile < MIN_TILE:
            raise RefSRError(f"tile size {tile} is too small; use at least {MIN_TILE}")
        prepared = _prepare_refs(refs, not colour, percentiles, ref_range)
        self.engine = _encode(model, prepared, None if device is None else choose_device(device), half,
                              int(search_budget), phases)
        self.tile, self.overlap = int(tile), int(overlap)
        self.value_range, self.percentiles = value_range, percentiles
        self.context = region_context(tile)

    def __call__(self, crop: np.ndarray, origin: tuple[int, int], size: tuple[int, int],
                 region: tuple[int, int, int, int]) -> np.ndarray:
        """×4 result of ``region`` (y0, y1, x0, x1 in whole-image LR pixels) of the ``size`` (H, W)
        image, given ``crop`` (h, w[, C]) whose top-left pixel is ``origin`` in the whole image; the
        crop must hold the region plus :func:`region_context` pixels wherever the image goes on."""
        crop = np.asarray(crop)
        if self.value_range is None and crop.dtype != np.uint8:
            raise ValueError("a region of a non-uint8 image needs the whole image's value_range")
        (oy, ox), (H, W), (y0, y1, x0, x1) = origin, size, region
        h, w = crop.shape[:2]
        c = self.context
        if not (oy <= y0 and ox <= x0 and oy + h >= y1 and ox + w >= x1 and (oy == 0 or y0 - oy >= c)
                and (ox == 0 or x0 - ox >= c) and (oy + h == H or oy + h - y1 >= c)
                and (ox + w == W or ox + w - x1 >= c)):
            raise ValueError(f"crop {crop.shape[:2]} at {origin} lacks the {c}-pixel context of region {region}")
        lr = prepare(crop, "image", percentiles=self.percentiles, value_range=self.value_range)
        window = Window(oy, ox, H, W, Tile(y0, y1, x0, x1))
        sr, _, _ = _run_slice(self.engine, lr, self.tile, self.overlap, lambda: None, window)
        alpha = None
        if lr.alpha is not None:  # the crop's alpha upscaled, then cut (bicubic needs the context)
            up = resize_bicubic(torch.from_numpy(lr.alpha), (h * 4, w * 4)).numpy()
            alpha = up[(y0 - oy) * 4 : (y1 - oy) * 4, (x0 - ox) * 4 : (x1 - ox) * 4]
        return restore(sr, lr, alpha=alpha)
