"""FMD captures as stacks: per-frame PSNR of ``train-and-apply`` on an OME-Zarr vs the 2D engine.

For each group, the four captures of ``../shared/data/fmd/raw`` become a T=4 timelapse written
by ome-zarr-py (NGFF 0.4, 3 levels) and a Z=4 stack written with zarr and hand-written NGFF
0.5 metadata (2 levels); ``fm2s-tile train-and-apply`` denoises each; the outputs are
validated with ome-zarr-models and their metadata compared with the input's; each frame's
PSNR against the group's ground truth is compared with the 2D engine on that capture alone.

    python benchmarks/stack_quality.py                      # all six groups
    python benchmarks/stack_quality.py --groups Confocal_BPAE_G --seed 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

FMD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd"
GROUPS = ("Confocal_BPAE_G", "Confocal_FISH", "TwoPhoton_BPAE_B", "TwoPhoton_MICE",
          "WideField_BPAE_G", "WideField_BPAE_R")


def microscope(group: str) -> str:
    """The noise preset of an FMD group (its name's first word)."""
    return group.split("_")[0].lower()


def load(fmd: Path, group: str) -> tuple[np.ndarray, np.ndarray]:
    """The four captures (4, 512, 512) uint8 and the ground truth (float)."""
    raw = np.stack([np.asarray(Image.open(fmd / "raw" / f"{group}_{k}.png")) for k in range(1, 5)])
    gt = np.asarray(Image.open(fmd / "gt" / f"{group}.png")).astype(np.float64)
    return raw, gt


def write_timelapse_v04(path: Path, frames: np.ndarray) -> None:
    """T=4 timelapse, NGFF 0.4, 3 levels, written by ome-zarr-py."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    import dask

    with dask.config.set(scheduler="threads"):  # not any dask client of the process
        write_image(frames, root, axes="tyx", fmt=FormatV04(), scale_factors=[2, 4],
                    storage_options={"chunks": (1, 256, 256)},
                    scale={"t": 30.0, "y": 0.2, "x": 0.2},
                    axes_units={"t": "second", "y": "micrometer", "x": "micrometer"})
    root.attrs["omero"] = {"channels": [{"label": "FMD", "color": "FFFFFF", "active": True,
                                         "window": {"start": 0, "end": 255, "min": 0,
                                                    "max": 255}}]}


def write_zstack_v05(path: Path, frames: np.ndarray) -> None:
    """Z=4 stack (c=1, z, y, x), NGFF 0.5, 2 levels, zarr with hand-written metadata."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = frames[None]
    levels = [data, data[..., ::2, ::2]]
    for i, level in enumerate(levels):
        arr = root.create_array(str(i), shape=level.shape, dtype=level.dtype,
                                chunks=(1, 1) + level.shape[-2:],
                                dimension_names=["c", "z", "y", "x"])
        arr[:] = level
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": path.name,
        "axes": [{"name": "c", "type": "channel"},
                 {"name": "z", "type": "space", "unit": "micrometer"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.8, 0.2 * 2**i, 0.2 * 2**i]},
            {"type": "translation", "translation": [0.0, 0.0, 0.1 * i, 0.1 * i]}]}
            for i in range(2)]}],
        "omero": {"channels": [{"label": "FMD", "color": "00FF00", "active": True,
                                "window": {"start": 0, "end": 255, "min": 0, "max": 255}}]}}


def ngff_meta(path: Path) -> dict:
    """The NGFF metadata of an image (0.4 or 0.5), the version keys left out."""
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    meta = attrs.get("ome", attrs)
    ms = {k: v for k, v in meta["multiscales"][0].items()
          if k not in ("version", "type", "metadata")}
    return {"multiscale": ms, "omero": meta.get("omero"),
            "shapes": [zarr.open_array(str(path / d["path"]), mode="r").shape
                       for d in ms["datasets"]]}


def validate(path: Path, version: str) -> None:
    """ome-zarr-models' validation of an image (raises when invalid)."""
    if version == "0.4":
        from ome_zarr_models.v04.image import Image as NGFFImage
    else:
        from ome_zarr_models.v05.image import Image as NGFFImage
    NGFFImage.from_zarr(zarr.open_group(str(path), mode="r"))


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((image.astype(np.float64) - truth) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def engine_2d(frames: np.ndarray, gt: np.ndarray, preset: str, seed: int) -> list[float]:
    """PSNR of the 2D engine on each capture alone."""
    import fm2s

    return [psnr(fm2s.denoise(f, microscope=preset, device="cpu", seed=seed), gt) for f in frames]


def run_stack(work: Path, group: str, frames: np.ndarray, gt: np.ndarray, layout: str,
              seed: int) -> dict:
    """Write one stack, run the command on it, check it; returns figures."""
    version = "0.4" if layout == "T" else "0.5"
    src = work / f"{group}_{layout}.ome.zarr"
    (write_timelapse_v04 if layout == "T" else write_zstack_v05)(src, frames)
    out = work / f"{group}_{layout}.fm2s.ome.zarr"
    cmd = [str(Path(sys.executable).parent / "fm2s-tile"), "train-and-apply", str(src), "-o",
           str(out), "--microscope", microscope(group), "--device", "cpu", "--seed", str(seed),
           "-q"]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {res.stderr.strip()}")
    wall = time.perf_counter() - start
    validate(out, version)
    meta_in, meta_out = ngff_meta(src), ngff_meta(out)
    path0 = meta_out["multiscale"]["datasets"][0]["path"]
    denoised = zarr.open_array(str(out / path0), mode="r")[:].reshape(frames.shape)
    return {"layout": layout, "ngff": version, "wall": wall,
            "metadata_equal": meta_in == meta_out, "levels": len(meta_out["shapes"]),
            "dtype": str(denoised.dtype), "psnr": [psnr(d, gt) for d in denoised]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fmd", type=Path, default=FMD)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in args.groups.split(","):
            frames, gt = load(args.fmd, group)
            ref = engine_2d(frames, gt, microscope(group), args.seed)
            for layout in ("T", "Z"):
                r = run_stack(Path(tmp), group, frames, gt, layout, args.seed)
                gaps = [s - e for s, e in zip(r["psnr"], ref)]
                rows.append({"group": group, **r, "engine_2d": ref, "gap": gaps})
                print(f"{group} {layout}=4 NGFF {r['ngff']}: valid, metadata equal "
                      f"{r['metadata_equal']}, {r['levels']} levels, {r['dtype']}, "
                      f"{r['wall']:.0f} s; frame PSNR "
                      + " ".join(f"{s:.2f}" for s in r["psnr"]) + " | 2D engine "
                      + " ".join(f"{e:.2f}" for e in ref) + " | gap "
                      + " ".join(f"{g:+.2f}" for g in gaps), flush=True)
    worst = max(abs(g) for r in rows for g in r["gap"])
    print(f"largest |stack - 2D| per-frame PSNR gap: {worst:.2f} dB over {len(rows)} stacks")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
