"""FMD captures as a T=4 timelapse (NGFF 0.4, written by ome-zarr-py) through
``train-and-apply``; skipped when ../shared is absent. The same captures as a Z=4 stack give
the same result (``python benchmarks/stack_quality.py`` runs both; tests/test_jobs.py checks
that the layout does not matter on synthetic data, at a fraction of the cost)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stack_quality import engine_2d, load, microscope, run_stack  # noqa: E402

pytestmark = pytest.mark.slow


def test_fmd_stacks_denoise_like_the_2d_engine(fmd, tmp_path):
    group = "TwoPhoton_MICE"
    frames, gt = load(fmd, group)
    noisy = [10 * np.log10(255.0**2 / np.mean((f - gt) ** 2)) for f in frames]
    # the 2D engine on two of the four captures (each a training of its own: the test's
    # cost), against the stack's result on the same two
    some = [0, 2]
    ref = engine_2d(frames[some], gt, microscope(group), seed=0)
    r = run_stack(tmp_path, group, frames, gt, "T", seed=0)
    # valid (run_stack validates), same metadata and levels, uint8 kept
    assert r["metadata_equal"] and r["dtype"] == "uint8" and r["levels"] == 3
    assert all(s > n + 5 for s, n in zip(r["psnr"], noisy))  # every frame denoised
    mine = [r["psnr"][i] for i in some]
    assert np.mean(mine) > np.mean(ref) - 0.3, (mine, ref)  # not worse
