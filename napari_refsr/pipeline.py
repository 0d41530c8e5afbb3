"""Inference: numpy images in, numpy images out, for every front end.

Steps: validate and normalise the LR image and the references (:mod:`.normalize`); crop each
reference to a multiple of 4 and make Ref↓↑ with PIL-exact bicubic (:mod:`.resize`); encode the
reference set once; search the whole LR image once (:func:`search_image`: its level-3 texture
features made piece by piece with enough margin to equal the whole image's, then the exact
shift-sum search, :mod:`.shift_search`); run the main network tile by tile over the LR image, each
tile taking its slice of S, of the index and of the textures transferred from it (LR↑ made per
tile from the LR crop plus a margin, identical to resizing the whole image); blend tiles
(:mod:`.tiling`); map the result back to the input's dtype and channels. On out-of-memory the
search budget (search) or the tile (network) is halved and that part is redone.

So the tiled result is defined as: S and the index of the whole image's features (exactly, not
per tile), the textures they select, and the network's output blended over overlapping tiles.
Progress, phases and cancel: :mod:`.progress`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import DEFAULT_OVERLAP, DEFAULT_SEARCH_BUDGET, DEFAULT_TILE, MIN_TILE
from .devices import choose_device, is_out_of_memory, release_memory
from .errors import RefSRError
from .model import RefSRModel
from .normalize import DEFAULT_PERCENTILES, Prepared, intensity_window, prepare, restore, to_net
from .progress import ENCODING, SEARCHING, TILES, Cancel, Phase, Progress, Tracker
from .resize import down_up, resize_bicubic
from .search import decode_index
from .shift_search import count_steps, plan_steps
from .tiling import Blender, Tile, plan_tiles

MIN_REF = 16  # reference pixels (a 4×4 grid of searchable patches)
_LR_MARGIN = 3  # LR pixels of context that make a tile's LR↑ equal the whole image's
FEATURE_MARGIN = 4  # LR pixels of context that make a piece's level-3 features equal the whole image's
FEATURE_BYTES = 16 * 2**10  # ~peak bytes of the texture extractor per LR pixel (16 LR↑ pixels × 64 ch × 4 maps)

__all__ = ["UpscaleResult", "upscale", "upscale_detailed", "upscale_nd", "search_image", "plan_pieces",
           "DEFAULT_TILE", "DEFAULT_OVERLAP", "MIN_TILE"]


@dataclass
class UpscaleResult:
    """Output of a run: the ×4 image, the confidence S at output size, and where textures came from."""

    image: np.ndarray  # input dtype and channels, spatial axes ×4
    confidence: np.ndarray  # float32, spatial axes ×4: the soft attention S (max relevance)
    source: np.ndarray  # int32 (..., H, W, 3) at LR size: reference number, row, column (ref pixels)
    tile: int  # the tile size that finally ran (smaller than asked after an out-of-memory retry)


def _as_list(ref) -> list:
    if isinstance(ref, (list, tuple)):
        return list(ref)
    return [ref]


def _lr_and_up(lr: Prepared, t: Tile, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """LR crop (1, 3, h, w) and its LR↑ (1, 3, 4h, 4w) in [-1, 1] for region ``t``; LR↑ is made
    from the crop plus a margin, so it equals the whole image's LR↑ there."""
    _, H, W = lr.pixels.shape
    y0, y1 = max(0, t.y0 - _LR_MARGIN), min(H, t.y1 + _LR_MARGIN)
    x0, x1 = max(0, t.x0 - _LR_MARGIN), min(W, t.x1 + _LR_MARGIN)
    crop = lr.pixels[:, y0:y1, x0:x1].to(device, torch.float32)
    up = resize_bicubic(crop, ((y1 - y0) * 4, (x1 - x0) * 4), quantize=lr.quantize)
    ty, tx = t.y0 - y0, t.x0 - x0
    th, tw = t.y1 - t.y0, t.x1 - t.x0
    lr_t = to_net(crop[:, ty : ty + th, tx : tx + tw])[None].to(dtype)
    up_t = to_net(up[:, ty * 4 : (ty + th) * 4, tx * 4 : (tx + tw) * 4])[None].to(dtype)
    return lr_t, up_t


def _grow(t: Tile, by: int, height: int, width: int) -> Tile:
    return Tile(max(0, t.y0 - by), min(height, t.y1 + by), max(0, t.x0 - by), min(width, t.x1 + by))


def plan_pieces(height: int, width: int, budget_bytes: int) -> list[Tile]:
    """Non-overlapping pieces of an LR image whose texture features fit ``budget_bytes`` (with
    their margins): full-width bands where at least 32 rows fit, square pieces otherwise."""
    pixels = max(1, budget_bytes // FEATURE_BYTES)
    if width * 32 <= pixels:
        rows = max(1, pixels // width - 2 * FEATURE_MARGIN)
        return [Tile(y, min(height, y + rows), 0, width) for y in range(0, height, rows)]
    side = max(8, math.isqrt(pixels) - 2 * FEATURE_MARGIN)
    return [Tile(y, min(height, y + side), x, min(width, x + side))
            for y in range(0, height, side) for x in range(0, width, side)]


def _piece_query(net, lr: Prepared, piece: Tile, device, dtype) -> torch.Tensor:
    """Level-3 features of ``piece`` with their 1-pixel ring (C, h+2, w+2): computed on the piece
    plus ``FEATURE_MARGIN`` pixels of context, so they equal the whole image's; zeros outside the
    image (the search's own padding)."""
    _, H, W = lr.pixels.shape
    ctx = _grow(piece, FEATURE_MARGIN, H, W)
    _, up = _lr_and_up(lr, ctx, device, dtype)
    feats = net.extract(up)[2][0]
    ring = _grow(piece, 1, H, W)
    q = feats[:, ring.y0 - ctx.y0 : ring.y1 - ctx.y0, ring.x0 - ctx.x0 : ring.x1 - ctx.x0]
    missing = (1 - (piece.x0 - ring.x0), 1 - (ring.x1 - piece.x1), 1 - (piece.y0 - ring.y0), 1 - (ring.y1 - piece.y1))
    return F.pad(q, missing)  # the ring's part outside the image: zeros


def _search_plan(lr: Prepared, bank, budget: int, device) -> tuple[list[Tile], int]:
    """The pieces :func:`search_image` searches and its number of progress steps."""
    pieces = plan_pieces(*lr.pixels.shape[1:], budget)
    shapes = bank.shapes
    steps = 0
    for p in pieces:
        shape = (p.y1 - p.y0, p.x1 - p.x0)
        steps += count_steps(shape, shapes, plan_steps(shape, shapes, budget_bytes=budget, device=device))
    return pieces, steps


def search_image(model: RefSRModel, lr: Prepared, bank, *, budget_bytes: int = DEFAULT_SEARCH_BUDGET,
                 tracker: Tracker | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S (H, W) float32 and the global hard-attention index (H, W) int64 of a whole prepared LR
    image against an encoded reference ``bank``, searched once, piece by piece: the same values
    as searching the whole image's level-3 features at once. ``tracker`` (if given) counts the
    search steps (planned beforehand with :func:`_search_plan`) and polls its cancel between them."""
    net, dev = model.network, model.device
    dtype = torch.float16 if model.half else torch.float32
    product = torch.float16 if model.half else None  # float32 products unless the model runs in half
    _, H, W = lr.pixels.shape
    s_all = torch.empty(H, W, dtype=torch.float32, device=dev)
    idx_all = torch.empty(H, W, dtype=torch.long, device=dev)
    for piece in plan_pieces(H, W, budget_bytes):
        with torch.inference_mode():
            q = _piece_query(net, lr, piece, dev, dtype)
            extra = tracker.search_callbacks() if tracker is not None else {}
            s, idx = net.attend(q, bank, budget_bytes=budget_bytes, product_dtype=product, **extra)
        s_all[piece.y0 : piece.y1, piece.x0 : piece.x1] = s.float()
        idx_all[piece.y0 : piece.y1, piece.x0 : piece.x1] = idx
    return s_all, idx_all


class _Engine:
    """The network on its device with the reference set encoded once; searches images, runs tiles."""

    def __init__(self, model: RefSRModel, refs: Sequence[Prepared], device, half):
        self.model = model.to(device if device is not None else model.device, half)
        self.device = self.model.device
        self.dtype = torch.float16 if self.model.half else torch.float32
        self.net = self.model.network
        ref_t, ref_du = [], []
        self.ref_shapes = []
        for p in refs:
            h, w = (p.pixels.shape[1] // 4) * 4, (p.pixels.shape[2] // 4) * 4
            pix = p.pixels[:, :h, :w].to(self.device, torch.float32)
            ref_t.append(to_net(pix)[None].to(self.dtype))
            ref_du.append(to_net(down_up(pix, 4, quantize=p.quantize))[None].to(self.dtype))
            self.ref_shapes.append((h // 4, w // 4))
        with torch.inference_mode():
            self.bank = self.net.encode_references(ref_t, ref_du)[0]

    def run(self, lr: Prepared, tile: Tile, s_all: torch.Tensor, idx_all: torch.Tensor) -> np.ndarray:
        """SR (3, 4h, 4w) of one tile, from its slice of the whole image's S and index (the
        textures are transferred from the index with a 1-pixel ring, so they equal the whole
        image's textures on the tile)."""
        _, H, W = lr.pixels.shape
        lr_t, up_t = _lr_and_up(lr, tile, self.device, self.dtype)
        ring = _grow(tile, 1, H, W)
        sl = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
        with torch.inference_mode():
            textures = self.net.textures(idx_all[ring.y0 : ring.y1, ring.x0 : ring.x1], self.bank)
            oy, ox = tile.y0 - ring.y0, tile.x0 - ring.x0
            th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
            cut = []
            for t, scale in zip(textures, (1, 2, 4)):
                cut.append(t[None, :, oy * scale : (oy + th) * scale, ox * scale : (ox + tw) * scale])
            s_t = s_all[sl][None, None].to(self.dtype)
            out = self.net.decode(lr_t, up_t, s_t, *cut)
        return out[0].float().cpu().numpy()


def _prepare_refs(refs, lr: Prepared, percentiles, value_range) -> list[Prepared]:
    refs = _as_list(refs)
    if not refs:
        raise RefSRError("at least one reference image is needed")
    out = []
    gray_lr = lr.channels in (0, 1)
    for i, r in enumerate(refs, 1):
        p = prepare(r, f"reference {i}", percentiles=percentiles, value_range=value_range, min_size=MIN_REF)
        if (p.channels in (0, 1)) != gray_lr:
            raise RefSRError(f"reference {i} is {'grayscale' if p.channels in (0, 1) else 'colour'} "
                             f"but the image is {'grayscale' if gray_lr else 'colour'}; "
                             "give references with the same kind of channels")
        out.append(p)
    return out


def _source_map(index: np.ndarray, shapes) -> np.ndarray:
    """Hard-attention indices → (H, W, 3): reference number, and the centre of the matched 4×4
    block in reference pixels (row, column)."""
    decoded = decode_index(index, shapes)
    decoded[..., 1:] = decoded[..., 1:] * 4 + 2
    return decoded.astype(np.int32)


class _Runner:
    """Runs slices with a shared engine, progress, cancel and out-of-memory retries."""

    def __init__(self, model, refs, *, tile, overlap, device, half, budget, tracker: Tracker, total_slices):
        if tile < MIN_TILE:
            raise RefSRError(f"tile size {tile} is too small; use at least {MIN_TILE}")
        self.args = (model, refs, device, half)
        self.tile, self.overlap, self.budget = int(tile), int(overlap), int(budget)
        self.tracker = tracker
        self.total_slices = total_slices
        self.slices_done = 0
        self.engine = None

    def _search_steps(self, lr: Prepared) -> int:
        return _search_plan(lr, self.engine.bank, self.budget, self.engine.device)[1]

    def _tile_steps(self, lr: Prepared) -> int:
        return len(plan_tiles(*lr.pixels.shape[1:], self.tile, self.overlap))

    def _start(self, lr: Prepared) -> _Engine:
        """Encode the references (one step) and plan every slice's steps (all slices are alike)."""
        model, refs, device, half = self.args
        self.tracker.add(1)
        self.tracker.start(ENCODING, 1)
        try:
            self.engine = _Engine(model, refs, device, half)
        except Exception as err:  # noqa: BLE001 - re-raised with advice
            if is_out_of_memory(err):
                raise RefSRError("out of memory while encoding the reference images; use smaller "
                                 "references, fewer of them, or device 'cpu'") from err
            raise
        self.tracker.add(self.total_slices * (self._search_steps(lr) + self._tile_steps(lr)))
        self.tracker.step()
        return self.engine

    def _search(self, engine: _Engine, lr: Prepared):
        self.tracker.start(SEARCHING, self._search_steps(lr))
        while True:
            try:
                return search_image(engine.model, lr, engine.bank, budget_bytes=self.budget, tracker=self.tracker)
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                if self.budget <= 16 * 2**20:
                    raise RefSRError(f"out of memory in the texture search on {engine.device}; use device "
                                     "'cpu', smaller references or a smaller image") from err
                release_memory(engine.device)
                self.budget = max(16 * 2**20, self.budget // 2)
                self._replan(SEARCHING, self._search_steps(lr))

    def _tiles(self, engine: _Engine, lr: Prepared, s_all, idx_all) -> np.ndarray:
        h, w = lr.pixels.shape[1:]
        self.tracker.start(TILES, self._tile_steps(lr))
        while True:
            blend = Blender(h, w, self.overlap)
            try:
                with self.tracker.cancel_inside(engine.net):
                    for t in plan_tiles(h, w, self.tile, self.overlap):
                        sr = engine.run(lr, t, s_all, idx_all)
                        blend.add(t, "sr", np.moveaxis(sr, 0, -1), scale=4)
                        self.tracker.step()
                return np.moveaxis(blend.result("sr"), -1, 0)
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                if self.tile <= MIN_TILE:
                    raise RefSRError(f"out of memory even with {self.tile}-pixel tiles on {engine.device}; "
                                     "use device 'cpu' or a smaller image") from err
                release_memory(engine.device)
                self.tile = max(MIN_TILE, self.tile // 2)
                self._replan(TILES, self._tile_steps(lr))  # the slice's tiles are redone, smaller

    def _replan(self, name: str, steps: int) -> None:
        self.tracker.replan(steps, repeats=self.total_slices - self.slices_done)
        self.tracker.start(name, steps)

    def slice(self, lr: Prepared):
        """(SR (3, 4H, 4W), S (H, W), index (H, W)) of one 2D slice."""
        self.tracker.check()
        engine = self.engine or self._start(lr)
        s_all, idx_all = self._search(engine, lr)
        sr = self._tiles(engine, lr, s_all, idx_all)
        self.slices_done += 1
        return sr, s_all.cpu().numpy(), idx_all.cpu().numpy()


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
    search_budget: int = DEFAULT_SEARCH_BUDGET,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    phase: Phase | None = None,
) -> UpscaleResult:
    """Upscale every 2D slice of ``data`` (Y, X = ``spatial_axes``; channels on ``channel_axis``)
    against one reference set. Other axes (Z, T, …) are looped over and kept.

    For non-uint8 data one intensity window (percentiles of the whole array) serves every slice,
    so a stack stays consistent. ``device=None`` keeps the model where it is; "auto" picks one.
    ``progress(done, total)``, ``cancel()`` and ``phase(name, done, total)``: see :mod:`.progress`.
    """
    arr = np.asarray(data)
    if arr.ndim < 2:
        raise RefSRError(f"image must have at least 2 dimensions, got shape {arr.shape}")
    nd = arr.ndim
    try:
        ya, xa = (a % nd for a in spatial_axes)
        ca = None if channel_axis is None else channel_axis % nd
    except (TypeError, ValueError) as err:
        raise RefSRError(f"invalid axes {spatial_axes}, {channel_axis}") from err
    if ya == xa or ca in (ya, xa) or not (-nd <= spatial_axes[0] < nd and -nd <= spatial_axes[1] < nd):
        raise RefSRError(f"spatial axes {spatial_axes} and channel axis {channel_axis} must be distinct axes of a {nd}D image")
    loop_axes = [a for a in range(nd) if a not in (ya, xa, ca)]
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
    tracker = Tracker(progress, cancel, phase)
    images, confs, sources = [], [], []
    for idx in itertools.product(*(range(n) for n in loop_shape)):
        lr = prepare(moved[idx], "image", percentiles=percentiles, value_range=value_range)
        if runner is None:
            prepared_refs = _prepare_refs(refs, lr, percentiles, user_range)
            runner = _Runner(model, prepared_refs, tile=tile, overlap=overlap, device=device, half=half,
                             budget=search_budget, tracker=tracker, total_slices=n_slices)
        sr, s, index = runner.slice(lr)
        images.append(restore(sr, lr))
        confs.append(resize_bicubic(torch.from_numpy(s.astype(np.float32)), (s.shape[0] * 4, s.shape[1] * 4)).numpy())
        sources.append(_source_map(index, runner.engine.ref_shapes))
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
