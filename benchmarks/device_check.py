"""Every GPU check of the project in one run, each figure written as JSON under ``--out``.

Run by ``benchmarks/device_check.sh`` on the device machine (see ../shared/DEVICE.md);
``--cpu`` runs the same steps on the CPU provider with small sizes (a dry run of the
script itself, used by the test suite).

Steps (each bounded by its own timeout, so the whole stays within ``--budget`` seconds):
1. ``env.json``: GPU (nvidia-smi), torch, onnxruntime and its providers.
2. ``gpu_tests.json``: ``pytest -m gpu`` (CUDA training, CUDA provider).
3. ``tiling.json``: tiled vs whole-plane output on the provider, several tile sizes.
4. ``bench.json`` / ``bench.png``: ``fm2s-tile bench`` (session, I/O binding, pipeline,
   torch; fp32 and fp16).
5. ``train.json``: ``train-and-apply --device cuda`` with default settings (the ``fast``
   recipe, ``--microscope auto``) on the six FMD images (synthetic 512 x 512 images where
   ../shared is absent), fp32 and fp16: training seconds as the command reports them, the
   whole command's wall time, PSNR, the noise decision printed; under ``"options"``, the
   in-process training seconds of ``benchmarks/gpu_options.py`` (warm, each GPU option,
   CUDA-graph steps, and the low-noise schedule with and without them), run before the
   bench so that a short budget keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# FM2S_FMD: the FMD folder carried to the device machine (it has no ../shared)
FMD = Path(os.environ.get("FM2S_FMD", ROOT.parent / "shared" / "data" / "fmd"))


def write(out: Path, name: str, data) -> None:
    (out / name).write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {name}", flush=True)


def fm2s(*args: str, timeout: float) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "fm2s.cli", *args], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    return proc.returncode, time.perf_counter() - start, proc.stdout + proc.stderr


def env_step(out: Path) -> None:
    import onnxruntime

    info = {"onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(), "python": sys.version}
    try:  # in env.json, not a file of its own: the device tool returns at most 8 files
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:
        info["torch"] = None
    write(out, "env.json", info)


def tests_step(out: Path, timeout: float) -> None:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA",
                               "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        text, code = "timed out", 124
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)",
                                                       text))
    write(out, "gpu_tests.json", {"exit_code": code, "counts": counts,
                                  "seconds": round(time.perf_counter() - start, 1),
                                  "output_tail": text[-4000:]})


def tiling_step(out: Path, provider: str) -> None:
    import numpy as np

    from fm2s.bench import untrained_model
    from fm2s.runtime import OnnxDenoiser
    from fm2s.tiling import tiled

    runtime = OnnxDenoiser(untrained_model("fast", 0), provider=provider)
    rng = np.random.default_rng(0)
    side = 1024 if provider == "cuda" else 256
    plane = (rng.poisson(200, (1, side, side)) + 100).astype(np.float32)
    whole = runtime(plane)
    rows = []
    for tile in (64, 200, 333, 512):
        got = tiled(plane, runtime, tile, runtime.halo)
        diff = np.abs(got - whole)
        rows.append({"tile": tile, "max_abs_diff": float(diff.max()),
                     "max_rel_diff": float((diff / np.maximum(np.abs(whole), 1)).max()),
                     "equal": bool(np.array_equal(got, whole))})
    write(out, "tiling.json", {"provider": runtime.provider, "plane": [side, side],
                               "value_range": [float(whole.min()), float(whole.max())],
                               "tiles": rows})


def bench_step(out: Path, provider: str, shape: str, tile: int, timeout: float,
               repeats: int = 3) -> None:
    args = ["bench", "--providers", provider, "--shape", shape, "--tile", str(tile),
            "--repeats", str(repeats), "--json", str(out / "bench.json"), "--quiet"]
    args += ["--precision", "fp32,fp16" if provider == "cuda" else "fp32"]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(out / "bench.png")]
    except ImportError:
        pass
    code, wall, text = fm2s(*args, timeout=timeout)
    (out / "bench.txt").write_text(text)
    print(text, flush=True)
    if code:
        write(out, "bench_error.json", {"exit_code": code, "output": text[-4000:]})


def options_step(quick: bool, timeout: float) -> dict:
    """benchmarks/gpu_options.py's figures (``quick``: its CPU dry run on a small crop)."""
    path = Path(tempfile.mkdtemp(prefix="fm2s-options-")) / "options.json"
    args = ["--device", "cpu", "--repeats", "1", "--size", "64"] if quick else \
        ["--device", "cuda", "--repeats", "1"]
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_options.py"),
                               *args, "--json", str(path)], capture_output=True, text=True,
                              timeout=timeout)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # keep the rows printed so far
        done = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        text, code = f"timed out after {timeout:.0f} s\n{done}", 124
    print(text, flush=True)
    if code or not path.is_file():
        return {"exit_code": code, "output": text[-4000:]}
    return {"exit_code": 0, **json.loads(path.read_text())}


def _images(work: Path, quick: bool) -> list[tuple[str, Path, Path | None]]:
    """(name, raw, truth or None) of the six FMD images, or synthetic ones."""
    if (FMD / "raw").is_dir():
        groups = sorted(p.stem for p in (FMD / "gt").glob("*.png"))[: 1 if quick else None]
        return [(g, FMD / "raw" / f"{g}_1.png", FMD / "gt" / f"{g}.png") for g in groups]
    import numpy as np
    from PIL import Image

    from fm2s.sample import synthetic_image

    images = []
    for k in range(1 if quick else 6):
        noisy, truth = synthetic_image((512, 512), np.random.default_rng(k), offset=0.0)
        raw = work / f"synthetic{k}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(raw)
        np.save(work / f"synthetic{k}.truth.npy", truth)
        images.append((f"synthetic{k}", raw, work / f"synthetic{k}.truth.npy"))
    return images


def train_step(out: Path, device: str, quick: bool, timeout: float,
               options: dict | None = None) -> None:
    import numpy as np
    from PIL import Image

    from fm2s.sample import psnr

    rows = []
    deadline = time.perf_counter() + timeout
    work = Path(tempfile.mkdtemp(prefix="fm2s-device-"))  # images stay out of --out
    for name, raw, truth_path in _images(work, quick):
        for precision in ("fp32", "fp16") if device == "cuda" else ("fp32",):
            result = work / f"{name}.{precision}.png"
            left = deadline - time.perf_counter()
            if left < 5:
                rows.append({"image": name, "precision": precision, "skipped": "out of time"})
                continue
            code, wall, text = fm2s("train-and-apply", str(raw), "-o", str(result),
                                    "--device", device, "--precision", precision, "--seed",
                                    "0", "--quiet", "--overwrite", timeout=left)
            row = {"image": name, "precision": precision, "exit_code": code,
                   "wall_s": round(wall, 2)}
            found = re.search(r"steps on (\S+) in ([\d.]+) s", text)
            if found:
                row.update(train_device=found.group(1), train_s=float(found.group(2)))
            row["decision"] = next((line.strip() for line in text.splitlines()
                                    if line.strip().startswith("auto:")), None)
            if code == 0 and truth_path is not None:
                den = np.asarray(Image.open(result))
                truth = (np.load(truth_path) if truth_path.suffix == ".npy"
                         else np.asarray(Image.open(truth_path)))
                row["psnr"] = psnr(den, truth, 255.0)
            else:
                row["output"] = text[-2000:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    diffs = {}
    for row in rows:
        if row.get("precision") == "fp16" and "psnr" in row:
            ref = next((r for r in rows if r["image"] == row["image"]
                        and r["precision"] == "fp32" and "psnr" in r), None)
            if ref:
                diffs[row["image"]] = row["psnr"] - ref["psnr"]
    write(out, "train.json", {"device": device, "data": "FMD" if (FMD / "raw").is_dir()
                              else "synthetic 512 x 512", "rows": rows,
                              "fp16_minus_fp32_db": diffs, "options": options})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU, small sizes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps")
    ap.add_argument("--shape", default="1,32,2048,2048", help="bench volume (CUDA)")
    ap.add_argument("--tile", type=int, default=2048, help="bench tile (CUDA)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    provider = "cpu" if args.cpu else "cuda"
    shape, tile = ("1,2,256,256", 256) if args.cpu else (args.shape, args.tile)

    def left(share: float) -> float:
        return max(10.0, min(share * args.budget, args.budget - (time.perf_counter() - start)))

    extra: dict = {}  # in train.json: the device tool returns at most 8 files
    steps = [("env", lambda: env_step(args.out)),
             ("gpu tests", lambda: tests_step(args.out, left(0.2))),
             ("tiling", lambda: tiling_step(args.out, provider)),
             ("options", lambda: extra.update(options=options_step(args.cpu, left(0.2)))),
             ("bench", lambda: bench_step(args.out, provider, shape, tile, left(0.4),
                                          1 if args.cpu else 3)),
             ("train", lambda: train_step(args.out, provider, args.cpu, left(1.0),
                                          extra.get("options")))]
    for name, step in steps:
        print(f"== {name} ({time.perf_counter() - start:.0f} s)", flush=True)
        try:
            step()
        except Exception as exc:  # one failing step must not hide the others' figures
            write(args.out, f"{name.replace(' ', '_')}_error.json",
                  {"error": f"{type(exc).__name__}: {exc}"})
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    os.sync()


if __name__ == "__main__":
    main()
