"""Memory benchmark: peak resident memory of ``fm2s-tile apply`` on a large uint16 volume.

Writes a synthetic OME-Zarr of ``--gib`` GiB (uint16, z planes of ``--side`` x ``--side``
pixels, one plane per chunk), trains a model on one plane, then runs the whole
``fm2s-tile apply`` command under ``/usr/bin/time -v`` and prints its peak resident set size,
wall time and throughput. Needs about twice ``--gib`` of free disk in ``--workdir``.

    python benchmarks/memory.py                       # 4 GiB, as in the project's issue
    python benchmarks/memory.py --gib 0.25 --tiles 128,256,512,1024,2048   # choose --tile
    python benchmarks/memory.py --tiff2d 16384         # one 16384 x 16384 2D TIFF, TIFF out
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np

import fm2s
from fm2s.formats import V05
from fm2s.readers import Image
from fm2s.sample import synthetic_image
from fm2s.writers import OutputImage


def make_volume(path: Path, planes: int, side: int, seed: int = 0) -> np.ndarray:
    """A (z, y, x) uint16 OME-Zarr: one noisy synthetic plane, shifted from plane to plane."""
    base, _ = synthetic_image((side, side), np.random.default_rng(seed))

    def plane(block_info=None):
        z = block_info[None]["chunk-location"][0]
        return np.roll(base, (7 * z, 3 * z), axis=(0, 1))[None]

    data = da.map_blocks(plane, dtype=np.uint16, chunks=((1,) * planes, (side,), (side,)))
    ms = {"name": path.name, "axes": [{"name": a, "type": "space", "unit": "micrometer"}
                                      for a in "zyx"],
          "datasets": [{"path": "0", "coordinateTransformations": [
              {"type": "scale", "scale": [0.5, 0.1, 0.1]}]}]}
    volume = Image(data, "zyx", "synthetic", "synthetic", V05, ms, [data.shape])
    out = OutputImage(path, volume, np.uint16).create(resumable=False)
    da.store(data, out.arrays[0], lock=False, scheduler="threads")
    out.commit({"benchmark": "memory"})
    return base


def make_tiff(path: Path, side: int, seed: int = 0) -> np.ndarray:
    """A 2D uint16 TIFF of side x side pixels (tifffile's default layout: one strip),
    tiled from a 2048 x 2048 synthetic image."""
    import tifffile

    base, _ = synthetic_image((2048, 2048), np.random.default_rng(seed))
    reps = -(-side // 2048)
    tifffile.imwrite(path, np.tile(base, (reps, reps))[:side, :side], photometric="minisblack")
    return base


def measure(cmd: list[str], label: str) -> None:
    """Run ``cmd`` under ``/usr/bin/time -v`` and print its peak resident memory."""
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"apply failed:\n{res.stdout}\n{res.stderr}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", res.stderr)[1]
    print(res.stdout.strip())
    print(f"{label}: peak resident memory {peak_kib / 2**20:.2f} GiB ({peak_kib} KiB); "
          f"wall {wall}; command: {' '.join(cmd)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="volume size in GiB (uint16)")
    ap.add_argument("--side", type=int, default=2048, help="plane side in pixels")
    ap.add_argument("--tiles", default="", help="--tile values of the apply command, "
                    "comma-separated (default: the command's default)")
    ap.add_argument("--workdir", type=Path, default=Path("benchmark-memory"))
    ap.add_argument("--keep", action="store_true", help="keep the volumes afterwards")
    ap.add_argument("--tiff2d", type=int, default=0, metavar="SIDE",
                    help="instead: apply to one 2D uint16 TIFF of SIDE x SIDE pixels, TIFF out")
    args = ap.parse_args()
    exe = shutil.which("fm2s-tile") or "fm2s-tile"
    if args.tiff2d:
        args.workdir.mkdir(exist_ok=True)
        src, out, model = (args.workdir / "big.tif", args.workdir / "big.fm2s.tif",
                           args.workdir / "model.onnx")
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        base = make_tiff(src, args.tiff2d)
        print(f"2D TIFF: {args.tiff2d} x {args.tiff2d} uint16 = "
              f"{args.tiff2d**2 * 2 / 2**30:.2f} GiB, written in {time.perf_counter() - t0:.0f} s")
        fm2s.train(base[:512, :512], device="cpu").save(model)
        measure([exe, "apply", str(model), str(src), "-o", str(out), "-q", "--provider", "cpu"],
                "2D TIFF")
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        return
    planes = max(1, round(args.gib * 2**30 / (2 * args.side**2)))
    args.workdir.mkdir(exist_ok=True)
    src, out, model = (args.workdir / "big.ome.zarr", args.workdir / "big.fm2s.ome.zarr",
                       args.workdir / "model.onnx")
    for p in (src, out):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    base = make_volume(src, planes, args.side)
    gib = planes * args.side**2 * 2 / 2**30
    print(f"volume: {planes} x {args.side} x {args.side} uint16 = {gib:.2f} GiB, written in "
          f"{time.perf_counter() - t0:.0f} s")
    fm2s.train(base[:512, :512], device="cpu").save(model)
    for tile in args.tiles.split(",") if args.tiles else [None]:
        shutil.rmtree(out, ignore_errors=True)
        cmd = [exe, "apply", str(model), str(src), "-o", str(out), "-q", "--provider", "cpu"] \
            + (["--tile", tile] if tile else [])
        measure(cmd, f"tile {tile or 'default'}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
