"""Denoise a synthetic 16-bit camera image with the Python API and keep the model.

    python examples/denoise_array.py
"""

import tempfile
from pathlib import Path

import numpy as np

import fm2s
from fm2s.sample import psnr, synthetic_image

noisy, truth = synthetic_image((192, 192), np.random.default_rng(0))
model = fm2s.train(noisy, microscope="confocal", seed=0, device="auto")
clean = fm2s.apply(model, noisy)
print(f"trained {model.config.total_steps} steps in {model.seconds:.1f} s on {model.device}")
print(f"PSNR noisy {psnr(noisy, truth):.2f} dB -> denoised {psnr(clean, truth):.2f} dB")

with tempfile.TemporaryDirectory() as tmp:
    path = model.save(Path(tmp) / "model.onnx")
    again = fm2s.apply(path, noisy)  # onnxruntime only
    print(f"saved model reproduces the result: max difference {np.abs(again - clean).max()}")
