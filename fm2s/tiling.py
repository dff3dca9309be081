"""Tiled inference over dask arrays.

Every YX plane is cut into blocks aligned with the output's chunks; each block gets a
halo equal to the model's receptive field (``dask.array.map_overlap``) and is denoised
in tiles of ``tile`` pixels that get the same halo. A pixel's result then depends only
on pixels the whole-plane inference would also use, in the same arithmetic, so the
tiled result equals the whole-plane result exactly, whatever the tile and chunk sizes.

How each plane meets its model (an affine map into the model's range, and the output
clamp: :func:`fm2s.normalize.range_map`) is decided from statistics of the whole plane
(:func:`plane_stats`), so this too is the same for every tiling.

numpy, dask and onnxruntime only: no torch on this side.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import dask.array as da
import numpy as np

from .normalize import PERCENTILES, percentiles, range_map, subsample_step
from .pixels import MIN_SIDE, cast_like
from .recipes import DEFAULT_TILE, WRITE_CHUNK
from .runs import Done
from .runtime import shared_denoiser

#: environment variable: "1" sends every tile of a block at one shape (opt-in, for the CUDA
#: provider, whose cuDNN plans are made per input shape; not yet measured on a GPU)
UNIFORM_TILES_ENV = "FM2S_UNIFORM_TILES"


def min_window(tile: int, halo: int) -> int:
    """The halo-padded minimum: the narrowest side of an array :func:`tiled` sends (unless
    the whole extent is narrower): a core of ``max(halo, MIN_SIDE)`` pixels (at most the
    tile) with its halo on both sides."""
    return 2 * halo + min(tile, max(halo, MIN_SIDE))


def windows(start: int, stop: int, n: int, tile: int, halo: int,
            uniform: bool = False) -> list[tuple[int, int, int, int]]:
    """Along one axis of length ``n``: the tiles of :func:`tiled` that compute
    [start, stop), as (window start, window end, computed start, computed end).

    Computed parts are ``tile`` pixels (the last one what is left); a window is its
    computed part and ``halo`` pixels either side, within [0, n). A window narrower than
    :func:`min_window` (a sliver left at the end) is widened inward over pixels that exist
    (it reads more context, computes the same pixels), so every window is at least
    ``min(n, min_window(tile, halo))``; with ``uniform``, every window is widened to
    ``min(n, tile + 2 * halo)``: one shape. Widening moves no computed pixel nearer than
    ``halo`` to a cut edge, so results stay those of the whole plane.
    """
    width = min(n, tile + 2 * halo if uniform else min_window(tile, halo))
    out = []
    for v0 in range(start, stop, tile):
        v1 = min(v0 + tile, stop)
        a, b = max(v0 - halo, 0), min(v1 + halo, n)
        if b - a < width:  # widen inward: to the right at the start, else to the left
            if a == 0:
                b = width
            else:
                a = max(b - width, 0)
                b = max(b, a + width)
        out.append((a, b, v0, v1))
    return out


def tiled(plane: np.ndarray, run: Callable[[np.ndarray], np.ndarray], tile: int,
          halo: int, skip: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
          uniform: bool = False) -> np.ndarray:
    """Apply ``run`` to an (..., H, W) array in tiles of ``tile`` pixels with ``halo`` context.

    ``run`` maps an (N, h, w) float32 array to an array of the same shape and looks at
    most ``halo`` pixels away; the result equals ``run`` on the whole array. ``skip``:
    ((top, bottom), (left, right)) margins that are context only: their pixels are read
    but not computed (left 0 in the result). No array narrower than
    :func:`min_window` is sent (unless the plane is); ``uniform``: every array sent has one
    shape (see :func:`windows`).
    """
    shape = plane.shape
    h, w = shape[-2:]
    flat = np.ascontiguousarray(plane.reshape((-1, h, w)), dtype=np.float32)
    out = np.zeros(flat.shape, np.float32)
    (top, bottom), (left, right) = skip
    rows = windows(top, h - bottom, h, tile, halo, uniform)
    cols = windows(left, w - right, w, tile, halo, uniform)
    for y0, y1, y, ye in rows:
        for x0, x1, x, xe in cols:
            res = run(np.ascontiguousarray(flat[:, y0:y1, x0:x1]))
            out[:, y:ye, x:xe] = res[:, y - y0:ye - y0, x - x0:xe - x0]
    return out.reshape(shape)


def tiles_in(shape: tuple[int, int], tile: int) -> int:
    """Number of tiles :func:`tiled` runs on an (H, W) array."""
    return -(-shape[0] // tile) * -(-shape[1] // tile)


#: the smallest block side: a task reads, denoises and writes at least this much of a plane
#: (fewer tasks and fewer halos to exchange between them; benchmarks/RESULTS.md)
BLOCK_SIDE = 2048


def block_chunks(shape: tuple[int, ...], tile: int, halo: int, chunk: int = WRITE_CHUNK,
                 block: int = BLOCK_SIDE) -> tuple[tuple[int, ...], ...]:
    """Dask chunks for tiled inference: one plane deep, YX blocks made of whole output chunks.

    A block is the smallest multiple of the output chunk that holds a tile and
    ``block`` pixels, so blocks never share an output chunk; a last block thinner than
    the halo joins its neighbour.
    """
    chunks: list[tuple[int, ...]] = [(1,) * n for n in shape[:-2]]
    for n in shape[-2:]:
        c = min(n, chunk)
        side = c * max(1, -(-min(max(tile, block), n) // c))
        sizes = [side] * (n // side) + ([n % side] if n % side else [])
        if len(sizes) > 1 and sizes[-1] < max(halo, 1):
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        chunks.append(tuple(sizes))
    return tuple(chunks)


def plane_stats(data: da.Array) -> da.Array:
    """``[min, max, p1, p99]`` of every YX plane: ``data.shape[:-2] + (4,)``.

    One read of the data; the percentiles come from a regular subsample of each plane
    (:func:`fm2s.normalize.subsample_step`), so memory stays bounded by the chunks.
    """
    lead = data.ndim - 2
    lo = data.min(axis=(-2, -1)).astype(np.float64)
    hi = data.max(axis=(-2, -1)).astype(np.float64)
    s = subsample_step(data.shape)
    sample = data[..., ::s, ::s]
    sample = sample.rechunk((1,) * lead + sample.shape[-2:])
    n = len(PERCENTILES)
    pct = sample.map_blocks(lambda b: percentiles(b).reshape((1,) * lead + (n,)),
                            chunks=(1,) * lead + (n,), drop_axis=lead + 1, dtype=np.float64,
                            meta=np.empty((0,) * (lead + 1), np.float64))
    return da.concatenate([lo[..., None], hi[..., None], pct], axis=-1)


def plane_maps(stats: np.ndarray, references: Sequence[Sequence[float]],
               c_axis: int | None = None) -> np.ndarray:
    """The :func:`~fm2s.normalize.range_map` of every plane: ``stats.shape[:-1] + (4,)``.

    ``references`` holds one model reference for all planes, or one per index along
    ``c_axis``.
    """
    maps = np.empty(stats.shape[:-1] + (4,), np.float64)
    for index in np.ndindex(stats.shape[:-1]):
        ref = references[index[c_axis] if len(references) > 1 else 0]
        maps[index] = range_map(stats[index], ref)
    return maps


def _halo_margins(block_info: dict, halo: int) -> tuple[tuple[int, int], ...]:
    """The halo map_overlap added on each side of a block's Y and X (none at the edges)."""
    where, count = block_info[None]["chunk-location"], block_info[None]["num-chunks"]
    return tuple((halo if where[ax] > 0 else 0, halo if where[ax] < count[ax] - 1 else 0)
                 for ax in (-2, -1))


def _denoise_block(block: np.ndarray, models: tuple[bytes, ...], provider: str, tile: int,
                   halo: int, out_dtype: np.dtype, c_axis: int | None, maps: np.ndarray | None,
                   precision: str = "fp32", uniform: bool = False,
                   block_info: dict | None = None) -> np.ndarray:
    where = block_info[None]["chunk-location"]
    channel = where[c_axis] if c_axis is not None else 0
    model = shared_denoiser(models[channel if len(models) > 1 else 0], provider, precision)
    skip = _halo_margins(block_info, halo)  # map_overlap trims these: not computed
    if maps is None:
        return cast_like(tiled(block, model, tile, halo, skip, uniform), out_dtype)
    a, b, lo, hi = maps[tuple(where[:-2])]
    clamp = (lo, hi)

    def run(x: np.ndarray) -> np.ndarray:
        return model(x, clamp)

    if a == 1.0 and b == 0.0:
        return cast_like(tiled(block, run, tile, halo, skip, uniform), out_dtype)
    a, b = np.float32(a), np.float32(b)
    mapped = block.astype(np.float32) * a + b
    return cast_like((tiled(mapped, run, tile, halo, skip, uniform) - b) / a, out_dtype)


def denoise_array(data: da.Array, models: Sequence[bytes], halo: int, tile: int = DEFAULT_TILE,
                  c_axis: int | None = None, dtype: np.dtype | None = None,
                  provider: str = "cpu", chunk: int = WRITE_CHUNK,
                  maps: np.ndarray | None = None, precision: str = "fp32",
                  block: int = BLOCK_SIDE, uniform: bool | None = None) -> da.Array:
    """Lazily denoise every YX plane of ``data`` with ONNX models, tile by tile.

    Parameters
    ----------
    data
        Dask array whose last two axes are Y and X.
    models
        Serialized ONNX models: one for all planes, or one per index along ``c_axis``.
    halo
        Receptive-field radius of the models, in pixels.
    tile
        Tile side in pixels of one onnxruntime call.
    c_axis
        The channel axis, when ``models`` holds one model per channel.
    dtype
        Output pixel type (default: the input's; integers rounded and clipped).
    provider
        onnxruntime provider (``cpu``, ``cuda`` or ``auto``), resolved where tasks run.
    chunk
        Output chunk side: blocks are made of whole output chunks.
    maps
        ``(a, b, low, high)`` per plane, shape ``data.shape[:-2] + (4,)``
        (:func:`plane_maps`): the plane goes into the model as ``a * x + b``, its output
        is clamped to [low, high] and comes back as ``(y - b) / a``. None: every plane
        as it is, with the model's own clamp.
    uniform
        Send every tile of a block at one shape (:func:`windows`; opt-in, for the CUDA
        provider's per-shape cuDNN plans; the result is the same). None: as the
        environment variable :data:`UNIFORM_TILES_ENV` says (``1``: on).

    Returns
    -------
    dask.array.Array
        Same shape as ``data``, chunked into blocks of whole output chunks.
    """
    if tile < 1 or halo < 0:
        raise ValueError("tile must be positive and halo non-negative")
    if len(models) > 1 and (c_axis is None or data.shape[c_axis] != len(models)):
        raise ValueError("one model per channel needs c_axis and as many models as channels")
    if maps is not None and maps.shape != data.shape[:-2] + (4,):
        raise ValueError(f"maps of shape {maps.shape} do not fit data of shape {data.shape}")
    dtype = np.dtype(dtype or data.dtype)
    if uniform is None:
        uniform = os.environ.get(UNIFORM_TILES_ENV) == "1"
    data = data.rechunk(block_chunks(data.shape, tile, halo, chunk, block))
    depth = {data.ndim - 2: halo, data.ndim - 1: halo}
    return data.map_overlap(
        _denoise_block, depth=depth, boundary="none", allow_rechunk=False, dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype), models=tuple(models), provider=provider,
        tile=tile, halo=halo, out_dtype=dtype, c_axis=c_axis, maps=maps, precision=precision,
        uniform=uniform)


def write_grid(target) -> tuple[int, ...]:
    """The unit a task writes into the zarr array ``target``: its shard (a sharded
    array: a shard is written whole, never in part) or its chunk."""
    return tuple(getattr(target, "shards", None) or target.chunks)


def aligned(array: da.Array, grid: tuple[int, ...]) -> da.Array:
    """``array`` rechunked to blocks of one unit of ``grid`` (a shard) each, so that each
    write task writes whole shards and no two tasks write one."""
    chunks = tuple((g,) * (n // g) + ((n % g,) if n % g else ()) for n, g in
                   zip(array.shape, grid))
    return array if chunks == array.chunks else array.rechunk(chunks)


def check_aligned(chunks: tuple[tuple[int, ...], ...], grid: tuple[int, ...]) -> None:
    """Refuse blocks (dask ``chunks``) with a boundary inside a unit of ``grid``: two tasks
    would write one chunk or shard (a read-modify-write race that tears shards)."""
    for ax, (sizes, g) in enumerate(zip(chunks, grid)):
        inner = np.cumsum(sizes)[:-1]
        if np.any(inner % g):
            raise ValueError(f"blocks {sizes} of axis {ax} do not consist of whole write "
                             f"units of {g}: two tasks would write one chunk or shard")


def block_regions(array: da.Array) -> list[tuple[slice, ...]]:
    """The region of every block of ``array``, in the order of :func:`write_tasks`."""
    bounds = [np.cumsum((0,) + c) for c in array.chunks]
    return [tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index))
            for index in np.ndindex(*array.numblocks)]


def chunk_indices(region: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Grid positions of the (regular) chunks ``chunks`` that ``region`` covers."""
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks)]
    return [tuple(i) for i in itertools.product(*ranges)]


def pending_blocks(array: da.Array, target, done: Done, level: int) -> list[int]:
    """Blocks of ``array`` (in task order) with a chunk of ``target`` not marked in ``done``."""
    written = done.listing(level)
    grid = write_grid(target)
    return [i for i, region in enumerate(block_regions(array))
            if not all(Done.key(ix) in written for ix in chunk_indices(region, grid))]


def write_tasks(array: da.Array, target, done: Done | None = None, level: int = 0,
                blocks: Sequence[int] | None = None) -> list:
    """One dask task per block that writes it into the zarr array ``target``.

    Blocks must be made of whole chunks of ``target`` (as :func:`denoise_array` and
    :func:`fm2s.writers.downsample` make them), or of whole shards of a sharded
    ``target`` (:func:`aligned`), so that no two tasks write one chunk or shard
    (:func:`check_aligned` refuses others). With ``done``, a task writes only the chunks
    (shards) not yet marked there (as level ``level``) and marks each one it writes;
    ``blocks`` keeps only those tasks (by index, e.g. :func:`pending_blocks`). Each task
    returns the number of voxels it wrote.
    """
    check_aligned(array.chunks, write_grid(target))
    counts = array.map_blocks(_write_block, target=target, done=done, level=level,
                              dtype=np.int64, chunks=tuple((1,) * len(c) for c in array.chunks),
                              meta=np.empty((0,) * array.ndim, np.int64))
    tasks = list(counts.to_delayed().ravel())
    return tasks if blocks is None else [tasks[i] for i in blocks]


def _array_folder(target) -> str:
    """The folder of a zarr array on a local store (for error messages)."""
    try:
        return str(Path(target.store.root) / target.path)
    except (AttributeError, TypeError):
        return str(target.store_path)


def _write_block(block: np.ndarray, target, done: Done | None = None, level: int = 0,
                 block_info: dict | None = None) -> np.ndarray:
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
    grid = write_grid(target)
    indices = chunk_indices(region, grid)
    todo = indices if done is None else [i for i in indices if not done.is_done(level, i)]
    try:
        if len(todo) == len(indices):  # one write of the whole block (zarr encodes in parallel)
            target[region] = block
        else:  # a resumed block: only its chunks (shards) not written yet, each whole
            for index in todo:
                part = tuple(slice(max(i * c, s.start), min((i + 1) * c, s.stop))
                             for i, c, s in zip(index, grid, region))
                target[part] = block[tuple(slice(p.start - s.start, p.stop - s.start)
                                           for p, s in zip(part, region))]
    except OSError as exc:  # disk full, file size limit: name the array
        raise OSError(exc.errno, exc.strerror, _array_folder(target)) from None
    if done is not None:
        for index in todo:
            done.mark(level, index)
    voxels = sum(math.prod(min((i + 1) * c, s.stop) - max(i * c, s.start)
                           for i, c, s in zip(index, grid, region)) for index in todo)
    return np.full((1,) * block.ndim, voxels, np.int64)
