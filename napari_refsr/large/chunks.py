"""Lazy ×4 upscaling of a dask array, chunk by chunk, equal to the in-memory result.

Each output chunk is the ×4 result of one LR chunk, computed by
:class:`~napari_refsr.pipeline.RegionUpscaler` from that chunk plus a halo of
:func:`~napari_refsr.pipeline.region_context` pixels (dask's ``overlap`` with ``boundary="none"``),
with the whole image's tile plan and intensity window: so the chunks join into exactly what
``upscale_nd`` gives in memory. The model and references travel as one :class:`Job`; each worker
process (or the one process of the threaded scheduler) encodes the references once and caches it.
"""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import dask.array as da
import numpy as np

from ..defaults import DEFAULT_SEARCH
from ..errors import RefSRError
from ..model import RefSRModel
from ..normalize import DEFAULT_PERCENTILES, MIN_SIZE
from ..pipeline import DEFAULT_OVERLAP, DEFAULT_TILE, RegionUpscaler, region_context, resolve_axes
from ..search import DEFAULT_BUDGET
from .paths import DEFAULT_CHUNK
from .window import whole_window

__all__ = ["upscale_dask", "Job", "DEFAULT_CHUNK", "ENCODED", "chunk_key"]

SCALE = 4

#: how many times this process encoded each job's references (tests check "once per worker")
ENCODED: collections.Counter = collections.Counter()
_CACHE: "collections.OrderedDict[str, RegionUpscaler]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2


@dataclass
class Job:
    """Everything a worker needs to upscale chunks (picklable: shipped to each worker once)."""

    model: RefSRModel
    refs: list[np.ndarray]
    options: dict[str, Any]  # RegionUpscaler keyword arguments
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __dask_tokenize__(self) -> str:  # never hash the weights
        return self.token

    def upscaler(self) -> RegionUpscaler:
        """This process's RegionUpscaler for the job (the references encoded on first use only)."""
        with _CACHE_LOCK:
            up = _CACHE.get(self.token)
            if up is None:
                up = RegionUpscaler(self.model, self.refs, **self.options)
                ENCODED[self.token] += 1
                _CACHE[self.token] = up
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
            return up


def chunk_key(token: str) -> str:
    """Name of the dask keys of a job's output chunks (for progress over chunks)."""
    return f"refsr-upscale-{token}"


def _bounds(n: int, chunk: int, context: int) -> list[int]:
    """Chunk boundaries along an axis of n pixels: chunks of ``chunk``, the last one merged into
    its neighbour when it would be thinner than the halo."""
    edges = list(range(0, n, chunk)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < context:
        del edges[-2]
    return edges


def _plane_order(loop: Sequence[int], spatial: tuple[int, int], channel: int | None) -> list[int]:
    return list(loop) + list(spatial) + ([channel] if channel is not None else [])


def _upscale_block(block: np.ndarray, job: Job, *, loop, spatial, channel, edges, depth, size,
                   block_id=None) -> np.ndarray:
    """One output chunk: the ×4 result of the block's core from the block with its halo."""
    up = job.upscaler()
    iy, ix = block_id[spatial[0]], block_id[spatial[1]]
    region = (edges[0][iy], edges[0][iy + 1], edges[1][ix], edges[1][ix + 1])
    origin = (region[0] - (depth[0] if iy > 0 else 0), region[2] - (depth[1] if ix > 0 else 0))
    order = _plane_order(loop, spatial, channel)
    moved = np.transpose(block, order)
    loop_shape = moved.shape[: len(loop)]
    planes = moved.reshape((-1,) + moved.shape[len(loop):])
    out = np.stack([up(plane, origin, size, region) for plane in planes])
    out = out.reshape(loop_shape + out.shape[1:])
    return np.transpose(out, np.argsort(order))


def _active_client():
    """The current dask.distributed client, if one is in use (else None)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def upscale_dask(
    model: RefSRModel,
    data,
    refs,
    *,
    spatial_axes: tuple[int, int] = (-2, -1),
    channel_axis: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: str | None = None,
    half: bool | None = None,
    value_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    search_budget: int = DEFAULT_BUDGET,
    client: Any = "active",
    phases: int | None = None,
    search: str = DEFAULT_SEARCH,
) -> da.Array:
    """``upscale_nd``'s image, as a lazy dask array: ``data`` (a dask array, zarr array or anything
    ``dask.array.asarray`` takes) is processed in ``chunk``×``chunk`` LR chunks with halos. Writing
    the result (``to_zarr``, :func:`~napari_refsr.large.write_ome_zarr`) never holds it in memory.

    ``client``: the ``dask.distributed`` client the result will run on (default: the active one,
    if any), to which the job (model + references) is scattered once, to every worker; None means
    the threaded scheduler, even while some client is active. The whole image's intensity window
    (non-uint8) is computed now, on that scheduler. The references are checked and encoded here
    too, so bad input fails before any work.
    """
    arr = data if isinstance(data, da.Array) else da.asarray(data)
    loop, (ya, xa), ca = resolve_axes(arr.shape, spatial_axes, channel_axis)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind not in "uif":
        raise RefSRError(f"image has unsupported dtype {arr.dtype}; use uint8, uint16 or float")
    if ca is not None and arr.shape[ca] not in (1, 3, 4):
        raise RefSRError(f"the channel axis {ca} has {arr.shape[ca]} channels; RefSR takes 1 (gray), 3 (RGB) "
                         "or 4 (RGBA): choose another channel axis or none")
    H, W = arr.shape[ya], arr.shape[xa]
    if min(H, W) < MIN_SIZE:
        raise RefSRError(f"image of size {(H, W)} is too small; it needs at least {MIN_SIZE}×{MIN_SIZE} pixels")
    context = region_context(tile)
    if chunk < context:
        raise RefSRError(f"chunks of {chunk} LR pixels are smaller than the halo of {context} pixels that "
                         f"{tile}-pixel tiles need; use chunks of at least {context} or smaller tiles")
    if isinstance(client, str):  # "active"
        client = _active_client()
    window = value_range if value_range is not None else whole_window(arr, percentiles,
                                                                      scheduler="threads" if client is None else client)
    colour = ca is not None and arr.shape[ca] >= 3
    options = dict(colour=colour, value_range=window, ref_range=value_range, tile=tile, overlap=overlap,
                   device=device, half=half, percentiles=percentiles, search_budget=search_budget,
                   phases=phases, search=search)
    job = Job(model, [np.asarray(r) for r in (refs if isinstance(refs, (list, tuple)) else [refs])], options)
    job.upscaler()  # checks the references now; the threaded scheduler reuses this one

    edges = (_bounds(H, chunk, context), _bounds(W, chunk, context))
    chunks: list[Any] = [1] * arr.ndim
    chunks[ya], chunks[xa] = tuple(np.diff(edges[0])), tuple(np.diff(edges[1]))
    if ca is not None:
        chunks[ca] = arr.shape[ca]
    arr = arr.rechunk(tuple(chunks))
    depth = tuple(context if len(e) > 2 else 0 for e in edges)
    haloed = da.overlap.overlap(arr, depth={ya: depth[0], xa: depth[1]}, boundary="none")
    out_chunks = list(arr.chunks)
    out_chunks[ya] = tuple(c * SCALE for c in arr.chunks[ya])
    out_chunks[xa] = tuple(c * SCALE for c in arr.chunks[xa])

    job_arg = client.scatter(job, broadcast=True, hash=False) if client is not None else job
    return da.map_blocks(
        _upscale_block, haloed, job_arg, dtype=arr.dtype, chunks=tuple(out_chunks), name=chunk_key(job.token),
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype), loop=loop, spatial=(ya, xa), channel=ca, edges=edges,
        depth=depth, size=(H, W))
