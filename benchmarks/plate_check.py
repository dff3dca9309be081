"""A plate at full size through the command line: valid, complete, every field as if alone.

Writes an HCS plate with ome-zarr-py (an independent writer): 2 x 3 wells x 2 fields, each
field 2 channels x 3 z x 256 x 256 uint16 (synthetic, ``fm2s.sample.synthetic_stack``),
NGFF 0.4 or 0.5. Then runs ``fm2s-tile train-and-apply plate.ome.zarr`` (default settings,
in a subprocess, as a user types it), validates the output with ome-zarr-models (plate,
wells, images), opens it with ome-zarr-py's reader, checks that ``fm2s-tile info`` lists
the 12 fields, and runs fields alone (``fm2s-tile train-and-apply plate.ome.zarr/A/1/0``)
to compare their chunks with the plate's, byte for byte. Prints one line per check and
the seconds; exits 1 if a check fails.

    python benchmarks/plate_check.py --version 0.5                 # every field alone too
    python benchmarks/plate_check.py --version 0.4 --alone A/1/0,B/3/1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

FIELDS = [f"{r}/{c}/{f}" for r in "AB" for c in "123" for f in "01"]


def write_plate(path: Path, version: str, seed: int = 0) -> Path:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    from fm2s.sample import synthetic_stack

    fmt = FormatV04() if version == "0.4" else FormatV05()
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    wells = [f"{r}/{c}" for r in "AB" for c in "123"]
    write_plate_metadata(root, ["A", "B"], ["1", "2", "3"], wells, fmt=fmt, field_count=2,
                         name="check plate")
    for well in wells:
        group = root.require_group(well)
        write_well_metadata(group, [{"path": "0"}, {"path": "1"}], fmt=fmt)
        for f in range(2):
            noisy, _ = synthetic_stack((1, 2, 3, 256, 256), rng)
            write_image(noisy[0], group.require_group(str(f)), axes="czyx", fmt=fmt,
                        scale_factors=[2], storage_options={"chunks": (1, 1, 256, 256)})
    return path


def chunks(root: Path) -> dict[str, bytes]:
    """Every array chunk file under ``root`` (metadata left out: it holds dates)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("zarr.json", ".zattrs", ".zgroup", ".zarray")
            and ".fm2s-run" not in p.parts}


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    exe = Path(sys.executable).with_name("fm2s-tile")  # the venv's command
    proc = subprocess.run([str(exe), *args], capture_output=True,
                          text=True)
    return proc, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", choices=["0.4", "0.5"], default="0.5")
    ap.add_argument("--alone", default="all", help="fields to run alone and compare "
                    "(comma-separated, or all)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--checks-only", action="store_true", help="the plate and its output "
                    "are in --out already: run the checks and the fields alone only")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="plate_check_"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "plate.ome.zarr", work / "plate.fm2s.ome.zarr"
    if not args.checks_only:
        write_plate(src, args.version)
    failed = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failed.append(what)

    proc, seconds = cli("train-and-apply", str(src), "-q") if not args.checks_only else \
        (subprocess.CompletedProcess([], 0), 0.0)
    check(proc.returncode == 0 and out.is_dir(), f"train-and-apply on the plate (NGFF "
          f"{args.version}) exits 0 in {seconds:.1f} s, writes {out.name}")
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        return 1
    if args.version == "0.4":
        from ome_zarr_models.v04.hcs import HCS
    else:
        from ome_zarr_models.v05.hcs import HCS
    hcs = HCS.from_zarr(zarr.open_group(str(out), mode="r"))
    images = sum(len(list(w.images)) if hasattr(w, "images") else 0 for w in hcs.well_groups)
    check(hcs.n_wells == 6, f"ome-zarr-models validates the plate: {hcs.n_wells} wells"
          + (f", {images} images" if images else ""))
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    check(type(node.specs[0]).__name__ == "Plate", f"ome-zarr-py reads a plate, first "
          f"field's array {node.data[0].shape}")
    info, _ = cli("info", str(out))
    listed = [f for f in FIELDS if f in info.stdout]
    check(info.returncode == 0 and len(listed) == 12 and "12 image(s)" in info.stdout,
          f"info lists {len(listed)} of the 12 fields: {info.stdout.splitlines()[0]}")
    for field in FIELDS:
        arr = zarr.open_array(str(out / field / "s0"), mode="r")
        src_arr = zarr.open_array(str(src / field / "s0"), mode="r")
        if arr.shape != src_arr.shape or arr.dtype != src_arr.dtype:
            check(False, f"{field}: shape / dtype {arr.shape} {arr.dtype}")
    alone = FIELDS if args.alone == "all" else args.alone.split(",")
    same = 0
    for field in alone:
        single = work / f"alone_{field.replace('/', '_')}.ome.zarr"
        proc, seconds = cli("train-and-apply", str(src / field), "-o", str(single), "-q")
        equal = proc.returncode == 0 and chunks(single) == chunks(out / field)
        same += equal
        print(f"     {field} alone: {seconds:.1f} s, chunks "
              f"{'identical' if equal else 'DIFFERENT'} ({len(chunks(single))} files)",
              flush=True)
    check(same == len(alone), f"{same} of {len(alone)} fields run alone give the plate's "
          "chunks byte for byte")
    print(f"{len(failed)} check(s) failed" if failed else "all checks hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
