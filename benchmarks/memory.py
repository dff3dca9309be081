"""Memory benchmark: peak resident memory of ``fm2s-tile apply`` on a large uint16 volume.

Writes a synthetic OME-Zarr of ``--gib`` GiB (uint16, z planes of ``--side`` x ``--side``
pixels, one plane per chunk), trains a model on one plane, then runs the whole
``fm2s-tile apply`` command under ``/usr/bin/time -v`` and prints its peak resident set size,
wall time and throughput. Needs about twice ``--gib`` of free disk in ``--workdir``.

    python benchmarks/memory.py                       # 4 GiB, as in the project's issue
    python benchmarks/memory.py --gib 0.25 --tiles 128,256,512,1024,2048   # choose --tile
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
from fm2s.sample import synthetic_image
from fm2s.volume import OutputImage, Volume


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
    volume = Volume(data, "zyx", "synthetic", "", "0.5", ms, [data.shape])
    out = OutputImage(path, volume, np.uint16)
    da.store(data, out.arrays[0], lock=False, scheduler="threads")
    out.commit({"benchmark": "memory"})
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="volume size in GiB (uint16)")
    ap.add_argument("--side", type=int, default=2048, help="plane side in pixels")
    ap.add_argument("--tiles", default="", help="--tile values of the apply command, "
                    "comma-separated (default: the command's default)")
    ap.add_argument("--workdir", type=Path, default=Path("benchmark-memory"))
    ap.add_argument("--keep", action="store_true", help="keep the volumes afterwards")
    args = ap.parse_args()
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
        cmd = [shutil.which("fm2s-tile") or "fm2s-tile", "apply", str(model), str(src), "-o",
               str(out), "-q", "--provider", "cpu"] + (["--tile", tile] if tile else [])
        res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"apply failed:\n{res.stdout}\n{res.stderr}")
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)[1])
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", res.stderr)[1]
        print(res.stdout.strip())
        print(f"tile {tile or 'default'}: peak resident memory {peak_kib / 2**20:.2f} GiB "
              f"({peak_kib} KiB); wall {wall}; command: {' '.join(cmd)}", flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
