"""Sharded against unsharded outputs (``--shards``): file counts, write time, same pixels.

Two measurements, each written twice (one file per chunk, then ``--shards auto``) into a
temporary folder on the local disk:

- ``writer``: the output writer alone (:class:`fm2s.writers.OutputImage`, the write tasks
  and the pyramid of a job) on a synthetic TCZYX uint16 volume, by default the issue's
  1 x 2 x 16 x 4096 x 4096 with three levels; no network, so that the writing is measured
  (the denoising costs the same either way);
- ``job``: the whole ``apply`` job (:func:`fm2s.jobs.apply`) with an untrained network of
  the default recipe on a smaller synthetic OME-Zarr, by default 1 x 16 x 2048 x 2048.

For each it prints the files of the output (all of them: chunks or shards and metadata),
their size, the seconds of the write, and whether every level holds the same pixels.

    python benchmarks/shards.py                      # both (minutes on 2 CPU cores)
    python benchmarks/shards.py --skip-job --shape 1,2,16,4096,4096 --json shards.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from fm2s.bench import untrained_model, write_volume
from fm2s.formats import V05
from fm2s.readers import Image
from fm2s.recipes import DEFAULT_RECIPE
from fm2s.tiling import aligned, write_grid, write_tasks
from fm2s.writers import OutputImage, downsample, shard_shapes


def _files(root: Path) -> tuple[int, int]:
    """Files under ``root`` and their bytes."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _same_pixels(a: Path, b: Path, levels: list[str]) -> bool:
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    return all(bool(da.all(da.from_zarr(ga[name]) == da.from_zarr(gb[name])).compute())
               for name in levels)


def _synthetic(shape: tuple[int, ...], seed: int) -> da.Array:
    """A lazy noisy uint16 TCZYX volume, one task per plane (the same every time)."""
    def plane(block_info=None):
        loc = block_info[None]["chunk-location"]
        h, w = block_info[None]["chunk-shape"][-2:]
        rng = np.random.default_rng([seed, *loc[:3]])
        y = np.linspace(0, 6 * np.pi, h)[:, None]
        x = np.linspace(0, 6 * np.pi, w)[None, :]
        expected = 200 + 150 * (np.sin(y + loc[2]) * np.cos(x)) ** 2
        return (rng.poisson(expected) + 100).astype(np.uint16).reshape((1, 1, 1, h, w))

    return da.map_blocks(plane, dtype=np.uint16, chunks=tuple((1,) * n for n in shape[:3])
                         + ((shape[3],), (shape[4],)), meta=np.empty((0,) * 5, np.uint16))


def _write(path: Path, data: da.Array, levels: list[tuple[int, ...]], shards) -> float:
    """Write ``data`` and its pyramid as a job does (:func:`fm2s.jobs._denoise`); seconds."""
    names = [str(i) for i in range(len(levels))]
    ms = {"name": "shards", "axes": [{"name": a, "type": t} for a, t in zip(
        "tczyx", ("time", "channel", "space", "space", "space"))],
        "datasets": [{"path": n, "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 2.0**i, 2.0**i]}]}
            for i, n in enumerate(names)]}
    image = Image(data, "tczyx", "synthetic", "synthetic", V05, ms, levels)
    per = shard_shapes(levels, shards, V05)
    start = time.perf_counter()
    out = OutputImage(path, image, np.dtype(np.uint16), shards=per).create(resumable=False)
    blocks = data.rechunk((1, 1, 1, 2048, 2048))  # the denoised blocks of a job
    with dask.config.set(scheduler="threads"):
        for level, array in enumerate(out.arrays):
            if level:
                blocks = downsample(da.from_zarr(out.arrays[level - 1]), levels[level],
                                    np.dtype(np.uint16))
            if per is not None:
                blocks = aligned(blocks, write_grid(array))
            da.compute(*write_tasks(blocks, array))
    out.commit({"benchmark": "shards"})
    return time.perf_counter() - start


def writer(shape: tuple[int, ...], levels: int, folder: Path, seed: int) -> dict:
    shapes = [shape[:3] + (-(-shape[3] // 2**i), -(-shape[4] // 2**i)) for i in range(levels)]
    data = _synthetic(shape, seed)
    result = {"shape": list(shape), "levels": levels, "voxels": math.prod(shape)}
    for name, shards in (("chunks", None), ("shards", "auto")):
        path = folder / f"writer-{name}.ome.zarr"
        seconds = _write(path, data, shapes, shards)
        files, size = _files(path)
        result[name] = {"files": files, "bytes": size, "seconds": round(seconds, 2)}
        print(f"writer, {name:<6}: {files:6d} files, {size / 1e9:.3f} GB, {seconds:.1f} s",
              file=sys.stderr)
    result["same_pixels"] = _same_pixels(folder / "writer-chunks.ome.zarr",
                                         folder / "writer-shards.ome.zarr",
                                         [str(i) for i in range(levels)])
    import zarr

    result["shard_shape"] = list(zarr.open_array(
        str(folder / "writer-shards.ome.zarr" / "0"), mode="r").shards)
    return result


def job(shape: tuple[int, ...], folder: Path, seed: int) -> dict:
    from fm2s.jobs import apply

    source = write_volume(folder / "in.ome.zarr", shape, seed)
    model = folder / "untrained.onnx"
    model.write_bytes(untrained_model(DEFAULT_RECIPE, seed))
    result = {"shape": list(shape), "voxels": math.prod(shape)}
    for name, shards in (("chunks", None), ("shards", "auto")):
        path = folder / f"job-{name}.ome.zarr"
        start = time.perf_counter()
        apply(model, source, path, provider="cpu", shards=shards)
        seconds = time.perf_counter() - start
        files, size = _files(path)
        result[name] = {"files": files, "bytes": size, "seconds": round(seconds, 2)}
        print(f"apply job, {name:<6}: {files:6d} files, {size / 1e9:.3f} GB, {seconds:.1f} s",
              file=sys.stderr)
    result["same_pixels"] = _same_pixels(folder / "job-chunks.ome.zarr",
                                         folder / "job-shards.ome.zarr", ["0", "1"])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,2,16,4096,4096",
                        help="T,C,Z,Y,X of the writer's volume")
    parser.add_argument("--levels", type=int, default=3, help="pyramid levels of the writer's")
    parser.add_argument("--job-shape", default="1,16,2048,2048",
                        help="T,Z,Y,X of the apply job's input")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--skip-writer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None,
                        help="where to write (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fm2s-shards-", dir=args.folder))
    results = {}
    try:
        if not args.skip_writer:
            results["writer"] = writer(tuple(int(v) for v in args.shape.split(",")),
                                       args.levels, folder, args.seed)
        if not args.skip_job:
            results["job"] = job(tuple(int(v) for v in args.job_shape.split(",")), folder,
                                 args.seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for name, r in results.items():
        ratio = r["chunks"]["files"] / r["shards"]["files"]
        print(f"{name}: {' x '.join(map(str, r['shape']))}: {r['chunks']['files']} files "
              f"unsharded, {r['shards']['files']} with --shards auto ({ratio:.1f} x fewer); "
              f"write {r['chunks']['seconds']:.1f} s vs {r['shards']['seconds']:.1f} s; "
              f"same pixels: {r['same_pixels']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
