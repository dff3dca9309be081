"""Saved-model and bit-depth consistency on real images (issue items 5 and 6).

For each group: ``train-and-apply --save-model`` on the 8-bit capture, then ``apply`` with
the saved model and onnxruntime directly on the raw pixels (max differences in grey levels);
then the same capture as 16-bit (x257, and x16 + 100) through ``train-and-apply``, PSNR
against the ground truth transformed alike, relative to each version's own data range.

    python benchmarks/consistency.py --groups Confocal_BPAE_G,WideField_BPAE_R
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tifffile
from common import DEFAULT_DATA, groups_in, microscope_of, psnr
from PIL import Image


def _run(*args: str) -> None:
    subprocess.run([shutil.which("fm2s-tile") or sys.exit("fm2s-tile is not installed"), *args],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--groups", default="")
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    groups = args.groups.split(",") if args.groups else groups_in(args.data)
    for group in groups:
        src = args.data / "raw" / f"{group}_1.png"
        raw = np.asarray(Image.open(src))
        gt = np.asarray(Image.open(args.data / "gt" / f"{group}.png")).astype(np.float64)
        common = ["--quiet", "--recipe", args.recipe, "--microscope", microscope_of(group),
                  "--device", "cpu", "--seed", str(args.seed)]
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            _run("train-and-apply", str(src), "-o", str(t / "a.png"), "--save-model",
                 str(t / "m.onnx"), *common)
            _run("apply", str(t / "m.onnx"), str(src), "-o", str(t / "b.png"), "--provider", "cpu")
            first = np.asarray(Image.open(t / "a.png")).astype(int)
            again = np.asarray(Image.open(t / "b.png")).astype(int)
            sess = ort.InferenceSession(str(t / "m.onnx"), providers=["CPUExecutionProvider"])
            direct = sess.run(None, {"raw": raw.astype(np.float32)[None, None]})[0][0, 0]
            direct = np.clip(np.rint(direct), 0, 255).astype(int)
            scores = {"8-bit": psnr(first, gt, 255.0)}
            for name, gain, offset in (("x257", 257, 0), ("x16+100", 16, 100)):
                img = (raw.astype(np.uint32) * gain + offset).astype(np.uint16)
                tifffile.imwrite(t / f"{name}.tif", img)
                _run("train-and-apply", str(t / f"{name}.tif"), "-o", str(t / f"{name}_out.tif"),
                     *common)
                out = tifffile.imread(t / f"{name}_out.tif")
                scores[name] = psnr(out, gt * gain + offset, 255.0 * gain)
        print(f"{group}_1: apply vs train-and-apply max |diff| {np.abs(again - first).max()} "
              f"grey levels, onnxruntime direct vs train-and-apply {np.abs(direct - first).max()}; "
              + ", ".join(f"{k} {v:.3f} dB" for k, v in scores.items())
              + f" (largest gap {max(abs(v - scores['8-bit']) for v in scores.values()):.3f} dB)",
              flush=True)


if __name__ == "__main__":
    main()
