"""Inference: numpy images in, numpy images out, for every front end.

Steps: validate and normalise the LR image and the references (:mod:`.normalize`); crop each
reference to a multiple of 4 and make Ref↓↑ with PIL-exact bicubic (:mod:`.resize`); encode the
reference set once; search the image once (:func:`search_cells`: the exact shift-sum search of
:mod:`.shift_search`, cell by cell, each cell's level-3 texture features made from its LR crop
plus enough margin to equal the whole image's); run the main network tile by tile, each tile
taking its slice of S, of the index and of the textures transferred from it (LR↑ made per tile
from the LR crop plus a margin, identical to resizing the whole image); blend tiles
(:mod:`.tiling`); map the result back to the input's dtype and channels. On out-of-memory the
search budget (search) or the tile (network) is halved and the slice is redone.

The search cells are the partition of the image by every tile edge grown by one pixel
(:func:`~napari_refsr.tiling.plan_cells`), so the pixels a set of tiles needs (the tiles and their
1-pixel ring) are always whole cells. :class:`RegionUpscaler` (one chunk of an out-of-core image)
therefore searches exactly the cells the in-memory run searches there, with operands of the same
shapes, and its result equals the in-memory one bit for bit. Progress, phases and cancel:
:mod:`.progress`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .confidence import upsample_confidence
from .defaults import DEFAULT_OVERLAP, DEFAULT_SEARCH, DEFAULT_SEARCH_BUDGET, DEFAULT_TILE, MIN_TILE
from .devices import choose_device, is_out_of_memory, release_memory
from .errors import RefSRError
from .model import RefSRModel
from .normalize import DEFAULT_PERCENTILES, Prepared, intensity_window, prepare, restore, to_net
from .options import MIN_SEARCH_BUDGET, check_callback, check_overlap, check_percentiles
from .options import check_search_budget, check_search_mode, check_tile, check_value_range, resolve_model
from .progress import ENCODING, SEARCHING, TILES, Cancel, Phase, Progress, Tracker
from .phases import check_phases, phase_views, resolve_phases
from .resize import down_up, resize_bicubic
from .search import decode_index
from .coarse_search import coarse_steps, prepare_coarse_keys
from .shift_search import count_steps, plan_steps, prepare_keys, use_fused
from .tiling import Blender, Tile, grow, intersects, plan_cells, plan_tiles

MIN_REF = 16  # reference pixels (a 4×4 grid of searchable patches)
_LR_MARGIN = 3  # LR pixels of context that make a tile's LR↑ equal the whole image's
# LR pixels of context that make a cell's level-3 features, with their 1-pixel ring, equal the
# whole image's: the ring's receptive field reaches 2.5 LR pixels (10 LR↑ pixels) further, and
# bicubic LR↑ 2 more (measured: 4 is not enough, 5 is exact)
FEATURE_MARGIN = 5

__all__ = ["UpscaleResult", "upscale", "upscale_detailed", "upscale_nd", "RegionUpscaler", "region_context",
           "resolve_axes", "search_cells", "DEFAULT_TILE", "DEFAULT_OVERLAP", "MIN_TILE"]


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


def _lr_and_up(lr: Prepared, t: Tile, device, dtype, margin: int = _LR_MARGIN) -> tuple[torch.Tensor, torch.Tensor]:
    """LR crop (1, 3, h, w) and its LR↑ (1, 3, 4h, 4w) in [-1, 1] for region ``t``; LR↑ is made
    from the crop plus ``margin`` pixels (where the image has them), so it equals the whole
    image's LR↑ there."""
    _, H, W = lr.pixels.shape
    ctx = grow(t, margin, H, W)
    crop = lr.pixels[:, ctx.y0 : ctx.y1, ctx.x0 : ctx.x1].to(device, torch.float32)
    up = resize_bicubic(crop, ((ctx.y1 - ctx.y0) * 4, (ctx.x1 - ctx.x0) * 4), quantize=lr.quantize)
    ty, tx = t.y0 - ctx.y0, t.x0 - ctx.x0
    th, tw = t.y1 - t.y0, t.x1 - t.x0
    lr_t = to_net(crop[:, ty : ty + th, tx : tx + tw])[None].to(dtype)
    up_t = to_net(up[:, ty * 4 : (ty + th) * 4, tx * 4 : (tx + tw) * 4])[None].to(dtype)
    return lr_t, up_t

class _Engine:
    """The network on its device with the reference set encoded once; searches cells, runs tiles."""

    def __init__(self, model: RefSRModel, refs: Sequence[Prepared], device, half, phases: int | None = None,
                 search: str = DEFAULT_SEARCH):
        self.approximate = search == "coarse"  # coarse-to-fine search (napari_refsr.coarse_search)
        self.model = model.to(device if device is not None else model.device, half)
        self.device = self.model.device
        self.dtype = torch.float16 if self.model.half else torch.float32
        self.net = self.model.network
        self.phases = resolve_phases(phases, self.net, [tuple(p.pixels.shape[1:]) for p in refs],
                                     element_bytes=2 if self.model.half else 4)
        self._copies = ([], [])  # each searched copy and its Ref↓↑, until encode()
        self.ref_shapes = []  # key grid of each searched copy
        self.ref_origins = []  # (reference number, dy, dx) of each searched copy (napari_refsr.phases)
        for n, p in enumerate(refs):
            for pix, (dy, dx) in phase_views(p.pixels.to(self.device, torch.float32), self.phases):
                self._copies[0].append(to_net(pix)[None].to(self.dtype))
                self._copies[1].append(to_net(down_up(pix, 4, quantize=p.quantize))[None].to(self.dtype))
                self.ref_shapes.append((pix.shape[1] // 4, pix.shape[2] // 4))
                self.ref_origins.append((n, dy, dx))
        self.bank = self.keys = None
        # float32 products unless the model runs in half
        self.product = torch.float16 if self.model.half else None

    @property
    def encode_steps(self) -> int:
        """Progress steps of :meth:`encode`: keys and values of every searched copy."""
        return 2 * len(self.ref_shapes)

    def encode(self, tracker: Tracker | None = None) -> None:
        """Encode the reference copies once (``tracker``: its steps, cancel inside the extractor);
        the keys' padding and norms are made here too."""
        refs, refs_du = self._copies
        with torch.inference_mode(), (tracker.cancel_inside(self.net) if tracker else contextlib.nullcontext()):
            if tracker is not None:
                tracker.start(ENCODING, self.encode_steps)
            self.bank = self.net.encode_references(refs, refs_du, step=tracker.step if tracker else None)[0]
        self._copies = ([], [])
        if self.approximate and self.bank.keys[0].shape[0] != self.net.search_channels:  # its steps count on it
            raise RuntimeError(f"{type(self.net).__name__}.search_channels is {self.net.search_channels}, "
                               f"its features have {self.bank.keys[0].shape[0]}")
        self.keys = (prepare_coarse_keys(self.bank.keys) if self.approximate
                     else prepare_keys(self.bank.keys, product_dtype=self.product))

    def cell_query(self, lr: Prepared, cell: Tile) -> torch.Tensor:
        """Level-3 features of ``cell`` with their 1-pixel ring (C, h+2, w+2): computed on the
        cell plus ``FEATURE_MARGIN`` pixels of context, so they equal the whole image's; zeros
        outside the image (the search's own padding)."""
        _, H, W = lr.pixels.shape
        ctx = grow(cell, FEATURE_MARGIN, H, W)
        _, up = _lr_and_up(lr, ctx, self.device, self.dtype, margin=0)
        feats = self.net.extract(up)[2][0]
        ring = grow(cell, 1, H, W)
        q = feats[:, ring.y0 - ctx.y0 : ring.y1 - ctx.y0, ring.x0 - ctx.x0 : ring.x1 - ctx.x0]
        missing = (1 - (cell.x0 - ring.x0), 1 - (ring.x1 - cell.x1), 1 - (cell.y0 - ring.y0), 1 - (ring.y1 - cell.y1))
        return F.pad(q, missing)  # the ring's part outside the image: zeros

    def search_steps(self, cells: Sequence[Tile], budget: int) -> int:
        """Progress steps of searching ``cells`` with ``budget`` scratch bytes."""
        shapes = self.ref_shapes
        steps = 0
        for c in cells:
            shape = (c.y1 - c.y0, c.x1 - c.x0)
            if self.approximate:
                steps += coarse_steps(shape, shapes, channels=self.net.search_channels, budget_bytes=budget,
                                      device=self.device)
            else:
                steps += count_steps(shape, shapes, plan_steps(shape, shapes, budget_bytes=budget, device=self.device))
        return steps

    def run(self, lr: Prepared, tile: Tile, s_map: torch.Tensor, idx_map: torch.Tensor) -> np.ndarray:
        """SR (3, 4h, 4w) of one tile, from its slice of S and of the index (the textures are
        transferred from the index with a 1-pixel ring, so they equal the whole image's
        textures on the tile)."""
        _, H, W = lr.pixels.shape
        lr_t, up_t = _lr_and_up(lr, tile, self.device, self.dtype)
        ring = grow(tile, 1, H, W)
        sl = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
        with torch.inference_mode():
            textures = self.net.textures(idx_map[ring.y0 : ring.y1, ring.x0 : ring.x1], self.bank)
            oy, ox = tile.y0 - ring.y0, tile.x0 - ring.x0
            th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
            cut = [t[None, :, oy * s : (oy + th) * s, ox * s : (ox + tw) * s] for t, s in zip(textures, (1, 2, 4))]
            s_t = s_map[sl][None, None].to(self.dtype)
            out = self.net.decode(lr_t, up_t, s_t, *cut)
        return out[0].float().cpu().numpy()


def search_cells(engine: _Engine, lr: Prepared, cells: Sequence[Tile], *, budget_bytes: int = DEFAULT_SEARCH_BUDGET,
                 tracker: Tracker | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S (H, W) float32 and the global hard-attention index (H, W) int64 of the prepared LR image
    (or crop) ``lr`` on ``cells`` (its pixels; elsewhere S is NaN and the index -1), each cell
    searched on its own features. ``tracker`` (if given) counts the search steps and polls its
    cancel between them."""
    _, H, W = lr.pixels.shape
    dev = engine.device
    s_map = torch.full((H, W), float("nan"), dtype=torch.float32, device=dev)
    idx_map = torch.full((H, W), -1, dtype=torch.long, device=dev)
    # the fused kernel is compiled once per process: worth it for the whole job's search, not per cell
    n_keys = sum(h * w for h, w in engine.ref_shapes)
    work = sum((c.y1 - c.y0) * (c.x1 - c.x0) for c in cells) * n_keys * engine.bank.keys[0].shape[0]
    if engine.approximate:
        work /= engine.keys.factor**4  # the coarse search's pairs
    fuse = use_fused(None, torch.device(dev), work)
    for cell in cells:
        with torch.inference_mode():
            q = engine.cell_query(lr, cell)
            extra = tracker.search_callbacks() if tracker is not None else {}
            options = dict(approximate=True) if engine.approximate else dict(product_dtype=engine.product)
            s, idx = engine.net.attend(q, engine.bank, keys=engine.keys, budget_bytes=budget_bytes, fuse=fuse,
                                       **options, **extra)
        s_map[cell.y0 : cell.y1, cell.x0 : cell.x1] = s.float()
        idx_map[cell.y0 : cell.y1, cell.x0 : cell.x1] = idx
    return s_map, idx_map


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

    def tiles(self, tile: int, overlap: int) -> list[Tile]:
        """The tiles of the whole image's plan that meet the region (whole-image pixels)."""
        return [t for t in plan_tiles(self.height, self.width, tile, overlap) if intersects(t, self.region)]

    def cells(self, tile: int, overlap: int) -> list[Tile]:
        """The search cells (crop pixels) those tiles need: the cells inside the tiles and their
        1-pixel ring (always whole cells, see :func:`~napari_refsr.tiling.plan_cells`)."""
        tiles = self.tiles(tile, overlap)
        need = grow(Tile(min(t.y0 for t in tiles), max(t.y1 for t in tiles), min(t.x0 for t in tiles),
                         max(t.x1 for t in tiles)), 1, self.height, self.width)
        return [self.local(c) for c in plan_cells(self.height, self.width, tile, overlap) if intersects(c, need)]


def _whole(lr: Prepared) -> Window:
    h, w = lr.pixels.shape[1:]
    return Window(0, 0, h, w, Tile(0, h, 0, w))


def _blend_tiles(engine: _Engine, lr: Prepared, window: Window, tile: int, overlap: int, s_map, idx_map,
                 step=None) -> np.ndarray:
    """SR (3, 4h, 4w) of ``window.region``: its tiles run on their slices of S and the index, blended."""
    blend = Blender(window.height, window.width, overlap, window.region)
    for t in window.tiles(tile, overlap):
        sr = engine.run(lr, window.local(t), s_map, idx_map)
        blend.add(t, "sr", np.moveaxis(sr, 0, -1), scale=4)
        if step is not None:
            step()
    return np.moveaxis(blend.result("sr"), -1, 0)


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


@contextlib.contextmanager
def _encoding():
    """Around making the engine and encoding the references: out-of-memory becomes advice."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        if is_out_of_memory(err):
            raise RefSRError("out of memory while encoding the reference images; use smaller "
                             "references, fewer of them, fewer phases, or device 'cpu'") from err
        raise


class _Runner:
    """Runs slices with a shared engine, progress phases, cancel and out-of-memory retries."""

    def __init__(self, model, refs, *, tile, overlap, device, half, budget, tracker: Tracker, total_slices,
                 phases=None, search=DEFAULT_SEARCH):
        self.args = (model, refs, device, half)
        self.phases, self.search = phases, search
        self.tile, self.overlap, self.budget = int(tile), int(overlap), int(budget)
        self.tracker = tracker
        self.total_slices = total_slices
        self.slices_done = 0
        self.engine = None

    def _steps(self, lr: Prepared) -> tuple[int, int]:
        """(search steps, tiles) of one slice with the current tile and budget."""
        window = _whole(lr)
        return (self.engine.search_steps(window.cells(self.tile, self.overlap), self.budget),
                len(window.tiles(self.tile, self.overlap)))

    def _start(self, lr: Prepared) -> _Engine:
        """Encode the references (two steps per searched copy) and plan every slice's steps (all
        slices are alike)."""
        with _encoding():
            self.engine = _Engine(*self.args, self.phases, self.search)
            self.tracker.add(self.engine.encode_steps + self.total_slices * sum(self._steps(lr)))
            self.engine.encode(self.tracker)
        return self.engine

    def _retry(self, err: Exception, engine: _Engine) -> None:
        """After out-of-memory: halve the search budget (in the search) or the tile (in the
        network), or give up with advice when it is already at its minimum."""
        if not is_out_of_memory(err):
            raise err
        if self.tracker.name == SEARCHING:
            if self.budget <= MIN_SEARCH_BUDGET:
                raise RefSRError(f"out of memory in the texture search on {engine.device}; use device "
                                 "'cpu', smaller references or a smaller image") from err
            self.budget = max(MIN_SEARCH_BUDGET, self.budget // 2)
        else:
            if self.tile <= MIN_TILE:
                raise RefSRError(f"out of memory even with {self.tile}-pixel tiles on {engine.device}; "
                                 "use device 'cpu' or a smaller image") from err
            self.tile = max(MIN_TILE, self.tile // 2)  # the cells follow the tiles: searched again
        release_memory(engine.device)

    def slice(self, lr: Prepared):
        """(SR (3, 4H, 4W), S (H, W), index (H, W)) of one 2D slice."""
        self.tracker.check()
        engine = self.engine or self._start(lr)
        start = self.tracker.done
        window = _whole(lr)
        while True:
            n_search, n_tiles = self._steps(lr)
            self.tracker.rewind(start, (n_search + n_tiles) * (self.total_slices - self.slices_done))
            try:
                self.tracker.start(SEARCHING, n_search)
                s_map, idx_map = search_cells(engine, lr, window.cells(self.tile, self.overlap),
                                              budget_bytes=self.budget, tracker=self.tracker)
                self.tracker.start(TILES, n_tiles)
                with self.tracker.cancel_inside(engine.net):
                    sr = _blend_tiles(engine, lr, window, self.tile, self.overlap, s_map, idx_map,
                                      self.tracker.step)
                _check_finite_output(sr, engine)
                break
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                self._retry(err, engine)
        self.slices_done += 1
        return sr, s_map.cpu().numpy(), idx_map.cpu().numpy()


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
    search_budget: int = DEFAULT_SEARCH_BUDGET,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    phase: Phase | None = None,
    phases: int | None = None,
    search: str = DEFAULT_SEARCH,
) -> UpscaleResult:
    """Upscale every 2D slice of ``data`` (Y, X = ``spatial_axes``; channels on ``channel_axis``)
    against one reference set. Other axes (Z, T, …) are looped over and kept.

    ``phases``: reference copies per axis searched at sub-LR-pixel offsets
    (:mod:`napari_refsr.phases`; None = the network's own setting, 1 = the published search).
    ``search``: "exact" (the best reference patch everywhere) or "coarse" (coarse to fine,
    approximate and faster on big references: :mod:`napari_refsr.coarse_search`).

    For non-uint8 data one intensity window (percentiles of the whole array) serves every slice,
    so a stack stays consistent. ``device=None`` keeps the model where it is; "auto" picks one.
    ``progress(done, total)``, ``cancel()`` and ``phase(name, done, total)``: see :mod:`.progress`.
    """
    model = resolve_model(model)
    tile = check_tile(tile)
    overlap = check_overlap(overlap, tile)
    percentiles = check_percentiles(percentiles)
    value_range = check_value_range(value_range)
    search_budget = check_search_budget(search_budget)
    phases = None if phases is None else check_phases(phases)
    search = check_search_mode(search)
    progress, cancel = check_callback(progress, "progress"), check_callback(cancel, "cancel")
    phase = check_callback(phase, "phase")
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
    tracker = Tracker(progress, cancel, phase)
    images, confs, sources = [], [], []
    for idx in itertools.product(*(range(n) for n in loop_shape)):
        lr = prepare(moved[idx], "image", percentiles=percentiles, value_range=value_range)
        if runner is None:
            prepared_refs = _prepare_refs(refs, lr.channels in (0, 1), percentiles, user_range)
            runner = _Runner(model, prepared_refs, tile=tile, overlap=overlap, device=device, half=half,
                             budget=search_budget, tracker=tracker, total_slices=n_slices, phases=phases,
                             search=search)
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
    whole-image plan that meets the region (at most ``tile - 1`` pixels beyond it), its 1-pixel
    ring of search cells, and those cells' feature margin (which covers the tiles' LR↑ margin)."""
    return int(tile) + FEATURE_MARGIN


class RegionUpscaler:
    """Upscales regions of one large image so that they join into exactly what :func:`upscale_nd`
    gives for the whole image: the same tile plan, search cells and blending weights, one
    intensity window for the whole image, and the reference set encoded once (reused by every
    region and thread). Each region searches the cells its tiles need (the halo's cells are
    searched again by the neighbouring region: the whole image's S and index are never held).

    ``colour``: whether the LR image has colour (references must match). ``value_range``: the whole
    image's intensity window (required for non-uint8 images, see
    :func:`~napari_refsr.normalize.intensity_window`); ``ref_range`` the caller's own fixed range,
    which references use too. Out-of-memory is an error here (a smaller tile would change the plan).
    """

    def __init__(self, model: RefSRModel, refs, *, colour: bool, value_range: tuple[float, float] | None = None,
                 ref_range: tuple[float, float] | None = None, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP, device: str | torch.device | None = None,
                 half: bool | None = None, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                 search_budget: int = DEFAULT_SEARCH_BUDGET, phases: int | None = None,
                 search: str = DEFAULT_SEARCH):
        if tile < MIN_TILE:
            raise RefSRError(f"tile size {tile} is too small; use at least {MIN_TILE}")
        prepared = _prepare_refs(refs, not colour, percentiles, ref_range)
        with _encoding():
            self.engine = _Engine(model, prepared, None if device is None else choose_device(device), half, phases,
                                  check_search_mode(search))
            self.engine.encode()
        self.tile, self.overlap, self.budget = int(tile), int(overlap), int(search_budget)
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
        s_map, idx_map = search_cells(self.engine, lr, window.cells(self.tile, self.overlap), budget_bytes=self.budget)
        sr = _blend_tiles(self.engine, lr, window, self.tile, self.overlap, s_map, idx_map)
        alpha = None
        if lr.alpha is not None:  # the crop's alpha upscaled, then cut (bicubic needs the context)
            up = resize_bicubic(torch.from_numpy(lr.alpha), (h * 4, w * 4)).numpy()
            alpha = up[(y0 - oy) * 4 : (y1 - oy) * 4, (x0 - ox) * 4 : (x1 - ox) * 4]
        return restore(sr, lr, alpha=alpha)
