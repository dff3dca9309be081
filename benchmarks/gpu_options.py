"""Where the training time of the default recipe goes, and what the GPU options change.

On one image (an FMD capture, else a synthetic 512 x 512 one), in one process:

- ``cold``: the first ``train_model`` (CUDA context, cuDNN and kernel loading included),
  as the command line's "trained in" figure counts it;
- ``warm``: the same again, twice (the steps alone, plus measuring the noise);
- the same warm run with one option changed: ``cudnn.benchmark``, contiguous (not
  channels-last) tensors, ``torch.optim.Adam(fused=True)`` instead of fm2s's Adam, all three;
  and ``graph``: each step captured once as a CUDA graph and replayed
  (``train_network(cuda_graph=True)``, :mod:`fm2s.cudagraph`);
- then, on a low-noise version of the image (its ground truth with Poisson noise of 4
  counts per grey level, which auto trains with its finer schedule, 2085 steps instead of
  725), the warm run and ``graph``.

It prints one line per run (seconds, steps per second, PSNR when a ground truth is at
hand) and writes them as JSON with ``--json``. On a CPU only ``graph`` is run (the step
without capture: a dry run); ``--size`` crops the image for quick dry runs.

    python benchmarks/gpu_options.py --device cuda --json speed.json
    python benchmarks/gpu_options.py --device cpu --repeats 1 --size 128
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fm2s.model
import fm2s.training
from fm2s.model import train_model
from fm2s.recipes import config_for
from fm2s.sample import psnr, synthetic_image

FMD = Path(os.environ.get("FM2S_FMD", Path(__file__).resolve().parents[2] / "shared" / "data"
                          / "fmd"))


class FusedAdam:
    """``torch.optim.Adam(fused=True)`` behind the interface of :class:`fm2s.training.Adam`."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.opt = torch.optim.Adam(params, lr=lr, fused=True)
        self.lr = lr
        self.steps = 0

    def step(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1


@contextlib.contextmanager
def option(name: str):
    """Run the training with one GPU option changed (patched at call time)."""
    saved = (torch.backends.cudnn.benchmark, torch.channels_last, fm2s.training.Adam,
             fm2s.model.train_network)
    try:
        if name in ("benchmark", "all"):
            torch.backends.cudnn.benchmark = True
        if name in ("contiguous", "all"):
            torch.channels_last = torch.contiguous_format
        if name in ("fused", "all"):
            fm2s.training.Adam = FusedAdam
        if name == "graph":
            fm2s.model.train_network = functools.partial(fm2s.training.train_network,
                                                         cuda_graph=True)
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.channels_last, fm2s.training.Adam,
         fm2s.model.train_network) = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image", default="Confocal_FISH")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--size", type=int, default=0, help="crop the image to size x size")
    args = ap.parse_args()
    raw_path = FMD / "raw" / f"{args.image}_1.png"
    if raw_path.is_file():
        raw = np.asarray(Image.open(raw_path))
        truth = np.asarray(Image.open(FMD / "gt" / f"{args.image}.png"))
    else:
        noisy, truth = synthetic_image((512, 512), np.random.default_rng(0), offset=0.0)
        raw = np.clip(noisy, 0, 255).astype(np.uint8)
    if args.size:
        raw, truth = raw[:args.size, :args.size], truth[:args.size, :args.size]
    # the same scene at low noise: auto gives it the finer schedule (fm2s.calibrate)
    low = np.random.default_rng(0).poisson(truth.astype(np.float64) * 4) / 4
    low = np.clip(np.round(low), 0, 255).astype(np.uint8)
    config = config_for("fast", "auto", 0, 1)
    rows = []

    def run(name: str, image: np.ndarray, kind: str) -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model = train_model(image, config, args.device)
        wall = time.perf_counter() - start
        out = model.runtime("cpu")(image[None].astype(np.float32))[0]
        row = dict(run=name, image=kind, seconds=round(wall, 3), train_s=round(model.seconds, 3),
                   steps=model.config.total_steps,
                   steps_per_s=round(model.config.total_steps / model.seconds, 1),
                   psnr=round(psnr(out, truth, 255.0), 3))
        rows.append(row)
        print(json.dumps(row), flush=True)

    names = ("benchmark", "contiguous", "fused", "all", "graph") if args.device == "cuda" \
        else ("graph",)
    run("cold", raw, "capture")
    for k in range(args.repeats):
        run(f"warm{k + 1}", raw, "capture")
    for name in names:
        with option(name):
            for k in range(args.repeats):
                run(f"{name}{k + 1}", raw, "capture")
    for k in range(args.repeats):
        run(f"warm{k + 1}", low, "low-noise")
    with option("graph"):
        for k in range(args.repeats):
            run(f"graph{k + 1}", low, "low-noise")
    info = dict(device=args.device, image=args.image if raw_path.is_file() else "synthetic",
                torch=torch.__version__,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                rows=rows)
    if args.json:
        args.json.write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
