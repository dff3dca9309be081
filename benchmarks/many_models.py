"""Many models at once (issue 28, item 3): the FMD captures trained batched and one at a
time in one warm process, and denoised by one ``train-and-apply`` call over all of them.

In one process, after a warm-up training (CUDA and cuDNN started):
1. ``fm2s.model.train_models`` on every capture (the default recipe, ``--microscope``,
   default ``auto``, seed 0, as ``train-and-apply`` trains each), batched, then one at a
   time: training seconds and models per minute each way, and their ratio. ``auto`` runs
   each capture's comparison alone and batches the winners' full runs; ``--microscope
   measured`` batches every training (what the device check measures).
2. Each model applied to its capture (onnxruntime's CPU provider, exact and quick to
   start; whole image, rounded to 8 bits as the PNG output is): PSNR against the FMD
   ground truth, batched and alone, and the difference per image.
3. The library call behind ``fm2s-tile train-and-apply <24 files> -o DIR --device D``
   (:func:`fm2s.batch.train_and_apply_many`, its default batching: together on CUDA): the
   whole call's seconds, what each row says, and each output's PSNR against the model
   trained alone in 1.

    python benchmarks/many_models.py --device cuda --json many.json
    python benchmarks/many_models.py --device cpu --images 2 --samples 3   # a dry run

``--fmd``: the FMD folder (raw/*_k.png, gt/*.png; default ../shared/data/fmd or $FM2S_FMD).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm2s.batch import train_and_apply_many  # noqa: E402
from fm2s.jobs import training_stack  # noqa: E402
from fm2s.layouts import open_collection  # noqa: E402
from fm2s.model import train_model, train_models  # noqa: E402
from fm2s.readers import open_image  # noqa: E402
from fm2s.recipes import DEFAULT_TRAIN_PLANES, config_for  # noqa: E402
from fm2s.sample import psnr, synthetic_image  # noqa: E402


def _images(fmd: Path, count: int | None, work: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(name, capture path, truth) of the FMD captures, or synthetic 512 x 512 images."""
    from PIL import Image

    if (fmd / "raw").is_dir():
        raws = sorted((fmd / "raw").glob("*.png"))[:count]
        return [(p.stem, p, np.asarray(Image.open(fmd / "gt" / f"{p.stem.rsplit('_', 1)[0]}.png"),
                                       np.float64)) for p in raws]
    out = []
    for k in range(count or 24):
        noisy, truth = synthetic_image((512, 512), np.random.default_rng(k), offset=0.0)
        path = work / f"synthetic{k}.png"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
        out.append((path.stem, path, truth))
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _psnr_of(model, raw: np.ndarray, truth: np.ndarray) -> float:
    out = model.runtime("cpu")(raw.astype(np.float32))
    return psnr(np.clip(np.rint(out), 0, 255), truth, 255.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=None, help="first N captures (default all)")
    ap.add_argument("--samples", type=int, default=None, help="override the recipe's samples "
                    "(dry runs only)")
    ap.add_argument("--fmd", type=Path, default=Path(os.environ.get(
        "FM2S_FMD", ROOT.parent / "shared" / "data" / "fmd")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--microscope", default="auto", help="noise model of every capture")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    overrides = {"samples": args.samples} if args.samples else {}
    work = Path(tempfile.mkdtemp(prefix="fm2s-many-"))
    images = _images(args.fmd, args.images, work)
    result: dict = {"device": args.device, "images": len(images),
                    "data": "FMD" if (args.fmd / "raw").is_dir() else "synthetic 512 x 512",
                    "overrides": overrides, "seed": args.seed}
    if args.device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)

    stacks, configs, raws = [], [], []
    for _, path, _ in images:
        image = open_image(path)
        stack, _ = training_stack(image, 0, DEFAULT_TRAIN_PLANES)
        stacks.append(stack)
        raws.append(np.asarray(image.data).reshape(image.plane_shape))
        configs.append(config_for("fast", args.microscope, args.seed,
                                  image.planes_per_channel, **overrides))

    t0 = time.perf_counter()  # warm-up: CUDA, cuDNN, kernels
    train_model(stacks[0], config_for("fast", "measured", 1, 1, samples=2), args.device)
    _sync(args.device)
    result["warmup_s"] = round(time.perf_counter() - t0, 2)

    seconds = {}
    trained = {}
    for way, batched in (("batched", True), ("alone", False)):
        t0 = time.perf_counter()
        trained[way] = train_models(stacks, configs, args.device, batched=batched)
        _sync(args.device)
        seconds[way] = time.perf_counter() - t0
        print(f"{way}: {len(stacks)} models in {seconds[way]:.2f} s", flush=True)
    result["train_s"] = {k: round(v, 2) for k, v in seconds.items()}
    result["models_per_minute"] = {k: round(60 * len(stacks) / v, 2) for k, v in seconds.items()}
    result["ratio_batched_over_alone"] = round(seconds["alone"] / seconds["batched"], 3)
    result["batch_sizes"] = sorted({m.batched for m in trained["batched"]})

    rows = []
    for (name, _, truth), raw, b, a in zip(images, raws, trained["batched"], trained["alone"]):
        pb, pa = _psnr_of(b, raw, truth), _psnr_of(a, raw, truth)
        rows.append({"image": name, "psnr_alone": round(pa, 4), "psnr_batched": round(pb, 4),
                     "batched_minus_alone_db": round(pb - pa, 4), "batched": b.batched,
                     "same_config": b.config == a.config})
    result["rows"] = rows
    diffs = [abs(r["batched_minus_alone_db"]) for r in rows]
    result["largest_abs_db"] = max(diffs)
    result["mean_psnr"] = {"batched": round(float(np.mean([r["psnr_batched"] for r in rows])), 4),
                           "alone": round(float(np.mean([r["psnr_alone"] for r in rows])), 4)}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)

    # 3. the command's library call over all captures (its default batching)
    out = work / "out"
    t0 = time.perf_counter()
    report = train_and_apply_many(open_collection([str(p) for _, p, _ in images]), out,
                                  device=args.device, seed=args.seed,
                                  microscope=args.microscope, **overrides)
    result["command_s"] = round(time.perf_counter() - t0, 2)
    result["command_models"] = sorted({r.model for r in report.rows})
    result["command_failed"] = [r.name for r in report.rows if r.status != "done"]
    from PIL import Image

    for row, r, (_, _, truth) in zip(rows, report.rows, images):
        written = np.asarray(Image.open(r.output), np.float64)
        row["psnr_command"] = round(psnr(written, truth, 255.0), 4)
        row["command_minus_alone_db"] = round(row["psnr_command"] - row["psnr_alone"], 4)
        row["command_train_s"] = r.report.channels[0].train_seconds
    result["command_largest_abs_db"] = max(abs(r["command_minus_alone_db"]) for r in rows)
    print(json.dumps({k: result[k] for k in ("command_s", "command_models", "command_failed",
                                             "command_largest_abs_db")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
