"""A plane brighter than every training plane: PSNR gain per plane and the output maximum.

A synthetic 9-plane z-stack (``fm2s.sample.synthetic_stack``, uint16) whose plane 4 is
three times brighter (raw values and ground truth x 3), written as OME-Zarr and denoised
by ``fm2s-tile train-and-apply --train-planes 2`` (planes 0 and 8 train the model), the
whole command. Prints each plane's PSNR gain over its noisy input and the bright plane's
raw and denoised maxima; ``--physical`` makes plane 4's signal (not its offset) three times
brighter, with fresh shot noise, instead.

    python benchmarks/bright_plane.py [--seed 0] [--physical]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

from fm2s.sample import psnr, synthetic_stack


def bright_stack(seed: int, physical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(9, 192, 256) uint16 noisy planes and their float truth, plane 4 three times brighter."""
    noisy, truth = synthetic_stack((1, 1, 9, 192, 256), np.random.default_rng(seed))
    noisy, truth = noisy[0, 0].astype(np.float64), truth[0, 0].astype(np.float64)
    if physical:  # 3 x the signal above offset (100) and background (4), fresh noise
        rng = np.random.default_rng(seed + 100)
        truth[4] = 104 + 3 * (truth[4] - 104)
        noisy[4] = rng.poisson(truth[4] - 100) + rng.normal(0, 2, truth[4].shape) + 100
    else:
        noisy[4] *= 3
        truth[4] *= 3
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--physical", action="store_true")
    args = ap.parse_args()
    noisy, truth = bright_stack(args.seed, args.physical)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "z.ome.zarr", Path(tmp) / "z.fm2s.ome.zarr"
        group = zarr.open_group(src, mode="w")
        group.create_array("0", data=noisy, chunks=(1, 192, 256))
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{
            "axes": [{"name": a, "type": "space"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}
        cmd = [str(Path(sys.executable).parent / "fm2s-tile"), "train-and-apply", str(src),
               "-o", str(out), "--train-planes", "2", "--device", "cpu", "--seed",
               str(args.seed), "-q"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr)
        print(res.stdout.strip())
        clean = zarr.open_array(out / "0")[:]
    gains = [psnr(clean[i], truth[i]) - psnr(noisy[i], truth[i]) for i in range(9)]
    print("PSNR gain per plane (dB):", " ".join(f"{g:+.2f}" for g in gains))
    print(f"bright plane 4: {gains[4]:+.2f} dB, neighbours {gains[3]:+.2f} / {gains[5]:+.2f} dB; "
          f"raw max {noisy[4].max()}, denoised max {clean[4].max()}, training planes' max "
          f"{noisy[[0, 8]].max()}")


if __name__ == "__main__":
    main()
