"""What float16 costs in quality: PSNR of the same trained model run in fp32 and in fp16.

Trains the default recipe on the ``_1`` capture of each FMD image, then runs the exported
model on the raw image with onnxruntime twice: as saved (fp32) and with its network in
float16 (``fm2s.runtime.half_precision``, what ``--precision fp16`` runs on CUDA). On the
CPU provider the float16 graph runs through onnxruntime's CPU kernels (slowly; weights and
activations are stored in float16 as on the GPU, the accumulation may differ): an estimate
of the GPU figure, which ``benchmarks/device_check.sh`` measures where a GPU is lent.

    python benchmarks/fp16.py --provider cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import DEFAULT_DATA, groups_in, microscope_of, psnr
from PIL import Image

from fm2s.model import train_model
from fm2s.recipes import config_for
from fm2s.runtime import choose_providers, half_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--device", default="cpu", help="training device")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.data / "raw").is_dir():
        sys.exit(f"no FMD-like folder at {args.data}: pass --data")
    providers = choose_providers(args.provider)
    rows = []
    for group in groups_in(args.data):
        raw = np.asarray(Image.open(args.data / "raw" / f"{group}_1.png"))
        gt = np.asarray(Image.open(args.data / "gt" / f"{group}.png"))
        model = train_model(raw, config_for("fast", microscope_of(group), args.seed, 1),
                            args.device)
        data = model.to_bytes()
        x = raw.astype(np.float32)[None, None]
        row = {"image": f"{group}_1"}
        for name, graph in (("fp32", data), ("fp16", half_precision(data))):
            sess = ort.InferenceSession(graph, providers=providers)
            out = sess.run(None, {"raw": x})[0][0, 0]
            row[name] = psnr(np.clip(np.rint(out), 0, 255).astype(np.uint8), gt)
            row[f"{name}_float"] = out
        row["max_abs_diff"] = float(np.abs(row.pop("fp32_float") - row.pop("fp16_float")).max())
        row["diff_db"] = row["fp16"] - row["fp32"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
    diffs = [r["diff_db"] for r in rows]
    print(f"fp16 - fp32 on {args.provider}: mean {statistics.mean(diffs):+.4f} dB, largest "
          f"{max(diffs, key=abs):+.4f} dB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
