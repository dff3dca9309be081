"""Every GPU check of the project in one run, each figure written as JSON under ``--out``.

Run by ``benchmarks/device_check.sh`` on the device machine (see ../shared/DEVICE.md);
``--cpu`` runs the same steps on the CPU provider with small sizes (a dry run of the
script itself, used by the test suite). Issue 28's items 1-4 are measured in one run.

Steps (each bounded by its own timeout, so the whole stays within ``--budget`` seconds):
1. ``env.json``: GPU (nvidia-smi), torch, onnxruntime and its providers; under
   ``"conv_search"``, for each cuDNN algorithm search (DEFAULT, HEURISTIC, EXHAUSTIVE) in a
   fresh process with onnxruntime's logging at INFO: the options in force read back from
   the session, the "Fallback mode" lines of its log, and Mvoxel/s of a 2048 x 2048 tile
   with I/O binding (fp32, fp16).
2. ``gpu_tests.json``: ``pytest -m gpu`` (CUDA training, batched training = alone, CUDA
   provider); with ``--cpu`` also the CPU twin of the batched check. ``ok`` is false, and
   the script exits 1, unless tests passed (passed > 0) and none failed: a run where every
   test skipped is a failure.
3. ``tiling.json``: tiled vs whole-plane output on the provider with the default options,
   tiles 64, 200, 333, 512, 2048 against the whole 4096 x 4096 plane (256 on the CPU), plain
   and with one tile shape (``uniform``): largest difference (grey levels of a 16-bit
   output), the tile shapes sent.
4. ``many.json``: ``benchmarks/many_models.py --microscope measured``: the 24 FMD
   captures trained batched and one at a time in one warm process (models per minute,
   PSNR each way), then the library call behind one ``train-and-apply`` over all of them.
5. ``train.json``: ``train-and-apply --device cuda`` with default settings on one 512 x
   512 capture at a time, fresh processes: whole command and training seconds, PSNR; under
   ``"options"`` ``benchmarks/gpu_options.py`` (CUDA-graph steps) if time is left.
6. ``bench.json`` / ``bench.txt``: ``fm2s-tile bench`` on CUDA with each conv search
   (DEFAULT: I/O binding, pipeline, torch at the session's TF32 setting; then HEURISTIC and
   EXHAUSTIVE as time allows), fp32 and fp16.
The device tool returns at most 8 files: these 7 and ``device_check.log``.
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


def env_step(out: Path, info: dict) -> None:
    import onnxruntime

    info.update({"onnxruntime": onnxruntime.__version__,
                 "providers": onnxruntime.get_available_providers(), "python": sys.version})
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


def tests_verdict(code: int, counts: dict[str, int]) -> str | None:
    """None when the tests passed; else what is wrong (a run where none passed fails too)."""
    errors = counts.get("error", 0) + counts.get("errors", 0)
    if counts.get("failed", 0) or errors:
        return f"{counts.get('failed', 0)} failed, {errors} errors"
    if code != 0:
        return f"pytest exited {code}"
    if counts.get("passed", 0) == 0:
        return "no test passed (all skipped: no CUDA here?)"
    return None


def tests_step(out: Path, timeout: float, cpu: bool) -> bool:
    start = time.perf_counter()
    targets = [str(ROOT / "tests" / "test_gpu.py")]
    if cpu:  # the CPU twin of the batched check: a dry run has tests that run
        targets.append(str(ROOT / "tests" / "test_grouped.py")
                       + "::test_three_models_batched_equal_three_trained_alone")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA",
                               "-p", "no:cacheprovider", *targets],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        text, code = "timed out", 124
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                       text))
    problem = tests_verdict(code, counts)
    write(out, "gpu_tests.json", {"exit_code": code, "counts": counts, "ok": problem is None,
                                  "problem": problem, "targets": targets,
                                  "seconds": round(time.perf_counter() - start, 1),
                                  "output_tail": text[-4000:]})
    return problem is None


CONV_SEARCH_PROBE = r"""
import json, sys, time
import numpy as np
try:
    import torch  # CUDA and cuDNN libraries for onnxruntime
except ImportError:
    pass
import onnxruntime as ort
ort.set_default_logger_severity(1)
from fm2s.bench import untrained_model
from fm2s.runtime import choose_providers, half_precision
provider, search = sys.argv[1], sys.argv[2]
model = untrained_model("fast", 0)
result = {}
for precision in (["fp32", "fp16"] if provider == "cuda" else ["fp32"]):
    options = ort.SessionOptions()
    options.log_severity_level = 1
    data = half_precision(model) if precision == "fp16" else model
    session = ort.InferenceSession(data, options, providers=choose_providers(provider, search))
    used = session.get_providers()[0]
    name = session.get_inputs()[0].name
    side = 2048 if provider == "cuda" else 256
    x = (np.random.default_rng(0).poisson(100, (1, 1, side, side)) + 100).astype(np.float32)
    session.run(None, {name: x[..., :300, :200]})  # a second shape: another plan
    if provider == "cuda":
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)
        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
    else:
        def call():
            session.run(None, {name: x})
    call()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        call()
        n += 1
    result[precision] = {"provider": used,
                         "options": session.get_provider_options().get(used, {}),
                         "mvox_s": round(n * x.size / (time.perf_counter() - t0) / 1e6, 1)}
print("RESULT " + json.dumps(result), flush=True)
"""


def conv_search_step(provider: str, deadline: float) -> dict:
    """Per cuDNN algorithm search, a fresh process: the options in force, the "Fallback
    mode" lines of onnxruntime's log, and a quick Mvoxel/s with I/O binding."""
    found = {}
    for search in ("DEFAULT", "HEURISTIC", "EXHAUSTIVE"):
        left = deadline - time.perf_counter()
        if left < 5:
            found[search] = {"skipped": "out of time"}
            continue
        try:
            proc = subprocess.run([sys.executable, "-c", CONV_SEARCH_PROBE, provider, search],
                                  capture_output=True, text=True, timeout=left, cwd=ROOT)
            text, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired:
            text, code = "timed out", 124
        line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
        found[search] = {"exit_code": code,
                         "fallback_lines": sum("Fallback mode" in x for x in text.splitlines()),
                         "result": json.loads(line[7:]) if line else None}
        if line is None:
            found[search]["output_tail"] = text[-2000:]
        print(search, json.dumps(found[search]), flush=True)
    return found


def tiling_step(out: Path, provider: str) -> None:
    import numpy as np

    from fm2s.bench import untrained_model
    from fm2s.runtime import OnnxDenoiser
    from fm2s.tiling import tiled

    runtime = OnnxDenoiser(untrained_model("fast", 0), provider=provider)
    rng = np.random.default_rng(0)
    side = 4096 if provider == "cuda" else 256
    # uint16 camera counts: a difference of 0.5 is half a grey level of the 16-bit output
    plane = (rng.poisson(200, (1, side, side)) + 100).astype(np.float32)
    whole = runtime(plane)
    rows = []
    for uniform in (False, True):
        for tile in (64, 200, 333, 512, 2048):
            shapes: set = set()

            def run(x, shapes=shapes):
                shapes.add(x.shape[-2:])
                return runtime(x)

            start = time.perf_counter()
            got = tiled(plane, run, tile, runtime.halo, uniform=uniform)
            diff = np.abs(got - whole)
            rows.append({"tile": tile, "uniform": uniform, "max_abs_diff": float(diff.max()),
                         "below_half_grey_level": bool(diff.max() < 0.5),
                         "max_rel_diff": float((diff / np.maximum(np.abs(whole), 1)).max()),
                         "equal": bool(np.array_equal(got, whole)), "shapes": len(shapes),
                         "narrowest": min(min(s) for s in shapes),
                         "seconds": round(time.perf_counter() - start, 2)})
            print(json.dumps(rows[-1]), flush=True)
    write(out, "tiling.json", {"provider": runtime.provider, "plane": [side, side],
                               "provider_options": runtime.provider_options,
                               "value_range": [float(whole.min()), float(whole.max())],
                               "tiles": rows})


def many_step(out: Path, device: str, quick: bool, timeout: float) -> None:
    """benchmarks/many_models.py: the FMD captures batched and one at a time."""
    path = out / "many.json"
    # the batching itself: one synthesis for every capture (auto would first run each
    # capture's comparison alone, five short runs each)
    args = ["--device", device, "--microscope", "measured", "--json", str(path)]
    if quick:
        args += ["--images", "2", "--samples", "2"]
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "many_models.py"),
                               *args], capture_output=True, text=True, timeout=timeout)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        done = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        text, code = f"timed out after {timeout:.0f} s\n{done}", 124
    print(text[-3000:], flush=True)
    if code or not path.is_file():
        write(out, "many.json", {"exit_code": code, "output": text[-4000:]})


def bench_step(out: Path, provider: str, shape: str, tile: int, deadline: float,
               repeats: int = 3) -> None:
    """``fm2s-tile bench`` per conv search (CUDA; as time allows), records merged."""
    records, texts = [], []
    if provider == "cuda":
        runs = [("DEFAULT", "session-iobinding,pipeline,torch", "fp32,fp16"),
                ("HEURISTIC", "session-iobinding,pipeline", "fp32,fp16"),
                ("EXHAUSTIVE", "session-iobinding", "fp32,fp16")]
    else:
        runs = [(None, "session,pipeline,torch", "fp32")]
    for search, modes, precisions in runs:
        left = deadline - time.perf_counter()
        if left < 20:
            texts.append(f"== conv search {search}: skipped, out of time")
            continue
        path = Path(tempfile.mkdtemp(prefix="fm2s-bench-")) / "bench.json"
        args = ["bench", "--providers", provider, "--shape", shape, "--tile", str(tile),
                "--repeats", str(repeats), "--modes", modes, "--precision", precisions,
                "--json", str(path), "--quiet"]
        if search:
            args += ["--conv-search", search]
        code, wall, text = fm2s(*args, timeout=left)
        texts.append(f"== conv search {search or 'default'}: exit {code}, {wall:.0f} s, "
                     f"{sum('Fallback mode' in x for x in text.splitlines())} 'Fallback mode' "
                     f"line(s)\n{text}")
        print(texts[-1], flush=True)
        if path.is_file():
            records += json.loads(path.read_text())
        elif code:
            records.append({"conv_search": search, "exit_code": code, "error": text[-2000:]})
    (out / "bench.txt").write_text("\n".join(texts) + "\n")
    write(out, "bench.json", records)


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


#: fresh-process runs of one 512 x 512 capture (each about 16-20 s on an H200 so far)
FRESH_IMAGES = 2


def _images(work: Path, quick: bool) -> list[tuple[str, Path, Path | None]]:
    """(name, raw, truth or None) of the first FMD images, or synthetic ones."""
    if (FMD / "raw").is_dir():
        groups = sorted(p.stem for p in (FMD / "gt").glob("*.png"))[: 1 if quick else
                                                                     FRESH_IMAGES]
        return [(g, FMD / "raw" / f"{g}_1.png", FMD / "gt" / f"{g}.png") for g in groups]
    import numpy as np
    from PIL import Image

    from fm2s.sample import synthetic_image

    images = []
    for k in range(1 if quick else FRESH_IMAGES):
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
        for precision in ("fp32",):  # fp16's training is fp32's (RESULTS.md, GPU)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU, small sizes")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all steps")
    ap.add_argument("--shape", default="1,16,2048,2048", help="bench volume (CUDA)")
    ap.add_argument("--tile", type=int, default=2048, help="bench tile (CUDA)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    provider = "cpu" if args.cpu else "cuda"
    shape, tile = ("1,2,256,256", 256) if args.cpu else (args.shape, args.tile)

    def left(share: float) -> float:
        return max(10.0, min(share * args.budget, args.budget - (time.perf_counter() - start)))

    def until(share: float) -> float:
        return time.perf_counter() + left(share)

    env: dict = {}
    extra: dict = {}  # in train.json: the device tool returns at most 8 files
    passed = [False]

    def env_and_search() -> None:
        env_step(args.out, env)
        env["conv_search"] = conv_search_step(provider, until(0.15))
        write(args.out, "env.json", env)

    steps = [("env", env_and_search),
             ("gpu tests", lambda: passed.__setitem__(0, tests_step(args.out, left(0.2),
                                                                    args.cpu))),
             ("tiling", lambda: tiling_step(args.out, provider)),
             ("many models", lambda: many_step(args.out, provider, args.cpu, left(0.32))),
             # the default command compares five syntheses first: about 36 s on two CPU cores
             ("train", lambda: train_step(args.out, provider, args.cpu, left(0.16), None)),
             ("bench", lambda: bench_step(args.out, provider, shape, tile, until(1.0),
                                          1 if args.cpu else 2)),
             ("options", lambda: extra.update(options=options_step(args.cpu, left(1.0))))]
    for name, step in steps:
        print(f"== {name} ({time.perf_counter() - start:.0f} s)", flush=True)
        if name == "options" and not args.cpu and left(1.0) < 40:
            extra["options"] = {"skipped": "out of time"}
        else:
            try:
                step()
            except Exception as exc:  # one failing step must not hide the others' figures
                write(args.out, f"{name.replace(' ', '_')}_error.json",
                      {"error": f"{type(exc).__name__}: {exc}"})
    train = args.out / "train.json"
    if train.is_file():  # the options' figures join the fresh runs'
        write(args.out, "train.json", {**json.loads(train.read_text()), **extra})
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    os.sync()
    if not passed[0]:
        print("FAILED: the gpu tests did not pass (see gpu_tests.json)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
