"""What ``--share-models`` costs in quality: per-field models against one shared model.

Per FMD group, its 4 captures become the 4 fields of one well of an HCS plate (written by
ome-zarr-py, NGFF 0.5), denoised twice as ``fm2s-tile train-and-apply`` does: with a model
per field (the default) and with ``share_models=True`` (one model trained on planes of the
4 fields). Prints per group the mean PSNR over the 4 fields against the ground truth (data
range 255) of each, their difference, the trainings and the seconds. With ``--folder``
also the folder of the 24 raw captures in one run (what ``fm2s-tile train-and-apply raw/
-o OUT`` calls) against each capture run alone, pixel for pixel. ``--json``: the figures,
written after each group.

    python benchmarks/share_models.py --json share.json
    python benchmarks/share_models.py --groups Confocal_FISH --folder
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


def _plate_psnr(out: Path, truth: np.ndarray, fields: int) -> list[float]:
    return [psnr(zarr.open_array(str(out / f"A/1/{i}/s0"), mode="r")[:], truth)
            for i in range(fields)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary "
                    "one)")
    ap.add_argument("--groups", default=None, help="comma-separated groups (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--folder", action="store_true", help="also run the folder of all raw "
                    "captures in one run, and each capture alone, and compare their pixels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="share_models_"))
    work.mkdir(parents=True, exist_ok=True)
    raw = args.data / "raw"
    groups = args.groups.split(",") if args.groups else groups_in(args.data)
    result: dict = {"seed": args.seed, "device": args.device, "groups": {}}

    def save() -> None:  # after each stage: a partial run keeps its figures
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")

    print(f"{'group':<18}{'per field':>10}{'shared':>9}{'shared - per':>14}"
          f"{'trainings':>11}{'seconds':>9}{'shared s':>10}", flush=True)
    for group in groups:
        captures = sorted(raw.glob(f"{group}_[0-9].png"))
        truth = _png(args.data / "gt" / f"{group}.png")
        plate = open_collection(str(_plate(work / f"{group}.ome.zarr", captures)))
        runs = {}
        for shared in (False, True):
            t0 = time.perf_counter()
            out = work / f"{group}.{'shared' if shared else 'per_field'}.ome.zarr"
            report = train_and_apply_many(plate, out, device=args.device, seed=args.seed,
                                          share_models=shared, overwrite=True)
            runs[shared] = (_plate_psnr(out, truth, len(captures)), report.trainings,
                            time.perf_counter() - t0)
        (per, n_per, s_per), (sh, n_sh, s_sh) = runs[False], runs[True]
        row = {"per_field": [round(p, 3) for p in per], "shared": [round(p, 3) for p in sh],
               "mean_per_field": round(statistics.mean(per), 3),
               "mean_shared": round(statistics.mean(sh), 3),
               "trainings_per_field": n_per, "trainings_shared": n_sh,
               "seconds_per_field": round(s_per, 1), "seconds_shared": round(s_sh, 1)}
        row["difference"] = round(row["mean_shared"] - row["mean_per_field"], 3)
        result["groups"][group] = row
        save()
        print(f"{group:<18}{row['mean_per_field']:>10.2f}{row['mean_shared']:>9.2f}"
              f"{row['difference']:>+14.2f}{f'{n_per} / {n_sh}':>11}{s_per:>9.1f}{s_sh:>10.1f}",
              flush=True)
    diffs = [g["difference"] for g in result["groups"].values()]
    print(f"mean difference over {len(diffs)} groups: {statistics.mean(diffs):+.2f} dB",
          flush=True)
    if args.folder:
        _folder(args, raw, work, result)
    save()


def _folder(args, raw: Path, work: Path, result: dict) -> None:
    """The folder of raw captures in one run, then each capture alone: the same pixels?"""
    start = time.perf_counter()
    folder = train_and_apply_many(open_collection(str(raw)), work / "folder",
                                  device=args.device, seed=args.seed)
    seconds = time.perf_counter() - start
    same, worst = 0, 0
    for row in folder.rows:
        single = work / "single" / row.name
        single.parent.mkdir(exist_ok=True)
        train_and_apply(raw / row.name, single, device=args.device, seed=args.seed)
        a, b = _png(single).astype(int), _png(Path(row.output)).astype(int)
        worst = max(worst, int(np.abs(a - b).max()))
        same += int(np.array_equal(a, b))
    result["folder"] = {"images": len(folder.rows), "trainings": folder.trainings,
                        "failed": len(folder.failed), "seconds": round(seconds, 1),
                        "identical_to_single_runs": same, "max_abs_diff": worst}
    print(f"folder run: {len(folder.rows)} captures, {folder.trainings} trainings, "
          f"{seconds:.1f} s, {len(folder.failed)} failed; single runs: {same} of "
          f"{len(folder.rows)} identical (largest difference {worst} grey levels)", flush=True)


if __name__ == "__main__":
    main()
