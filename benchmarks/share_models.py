"""What ``--share-models`` costs in quality: per-field models against one shared model.

Runs the FMD captures as fm2s-tile runs them for a facility:

1. the folder of the 24 raw captures in one run (``train_and_apply_many`` on the folder,
   what ``fm2s-tile train-and-apply raw/ -o OUT`` calls): one model per capture;
2. with ``--singles``, each capture alone (``train_and_apply``), checked pixel for pixel
   against the folder run's output (the same seed must give the same pixels);
3. per group, its 4 captures as the 4 fields of one well of an HCS plate (written by
   ome-zarr-py), denoised with ``share_models=True``: one model trained on the 4 fields.

Prints, per group, the mean PSNR over the 4 captures (against the ground truth, data range
255) with per-capture models and with the shared model, and the difference; the trainings
and seconds of each. Writes the figures as JSON with ``--json``.

    python benchmarks/share_models.py --out /tmp/share --singles --json share.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from common import DEFAULT_DATA, groups_in, psnr
from PIL import Image

from fm2s.batch import train_and_apply_many
from fm2s.jobs import train_and_apply
from fm2s.layouts import open_collection


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _plate(path: Path, captures: list[Path]) -> Path:
    """One well (A/1) whose fields are the captures, written by ome-zarr-py (NGFF 0.5)."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_plate_metadata(root, ["A"], ["1"], ["A/1"], fmt=fmt, field_count=len(captures))
    well = root.require_group("A/1")
    write_well_metadata(well, [{"path": str(i)} for i in range(len(captures))], fmt=fmt)
    for i, capture in enumerate(captures):
        pixels = _png(capture)
        write_image(pixels, well.require_group(str(i)), axes="yx", fmt=fmt, scale_factors=[],
                    storage_options={"chunks": pixels.shape})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary "
                    "one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--singles", action="store_true", help="also run each capture alone and "
                    "compare its pixels with the folder run's")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="share_models_"))
    work.mkdir(parents=True, exist_ok=True)
    raw = args.data / "raw"
    groups = groups_in(args.data)
    result: dict = {"seed": args.seed, "device": args.device, "groups": {}}

    start = time.perf_counter()
    folder = train_and_apply_many(open_collection(str(raw)), work / "folder",
                                  device=args.device, seed=args.seed)
    result["folder"] = {"images": len(folder.rows), "trainings": folder.trainings,
                        "failed": len(folder.failed),
                        "seconds": round(time.perf_counter() - start, 1)}
    print(f"folder run: {len(folder.rows)} captures, {folder.trainings} trainings, "
          f"{result['folder']['seconds']} s, {len(folder.failed)} failed", flush=True)
    outputs = {r.name: Path(r.output) for r in folder.rows}

    if args.singles:
        same, worst = 0, 0
        for name, out in outputs.items():
            single = work / "single" / name
            single.parent.mkdir(exist_ok=True)
            if not single.exists():
                train_and_apply(raw / name, single, device=args.device, seed=args.seed)
            a, b = _png(single).astype(int), _png(out).astype(int)
            worst = max(worst, int(np.abs(a - b).max()))
            same += int(np.array_equal(a, b))
        result["singles"] = {"identical": same, "of": len(outputs), "max_abs_diff": worst}
        print(f"single runs: {same} of {len(outputs)} identical to the folder run's output "
              f"(largest difference {worst} grey levels)", flush=True)

    print(f"{'group':<18}{'per capture':>12}{'shared':>9}{'shared - per':>14}"
          f"{'trainings':>11}{'seconds':>9}")
    for group in groups:
        captures = sorted(raw.glob(f"{group}_[0-9].png"))
        truth = _png(args.data / "gt" / f"{group}.png")
        per = [psnr(_png(outputs[c.name]), truth) for c in captures]
        plate = _plate(work / f"{group}.ome.zarr", captures)
        t0 = time.perf_counter()
        out = work / f"{group}.shared.ome.zarr"
        report = train_and_apply_many(open_collection(str(plate)), out, device=args.device,
                                      seed=args.seed, share_models=True, overwrite=True)
        seconds = time.perf_counter() - t0
        shared = [psnr(zarr.open_array(str(out / f"A/1/{i}/s0"), mode="r")[:], truth)
                  for i in range(len(captures))]
        row = {"per_capture": [round(p, 3) for p in per], "shared": [round(p, 3) for p in shared],
               "mean_per_capture": round(statistics.mean(per), 3),
               "mean_shared": round(statistics.mean(shared), 3),
               "trainings": report.trainings, "seconds": round(seconds, 1)}
        row["difference"] = round(row["mean_shared"] - row["mean_per_capture"], 3)
        result["groups"][group] = row
        print(f"{group:<18}{row['mean_per_capture']:>12.2f}{row['mean_shared']:>9.2f}"
              f"{row['difference']:>+14.2f}{row['trainings']:>11}{row['seconds']:>9.1f}",
              flush=True)
    diffs = [g["difference"] for g in result["groups"].values()]
    print(f"mean difference over {len(diffs)} groups: {statistics.mean(diffs):+.2f} dB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
