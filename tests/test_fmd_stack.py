"""FMD captures as a T=4 timelapse (NGFF 0.4, ome-zarr-py) and a Z=4 stack (NGFF 0.5, zarr with
hand-written metadata) through ``train-and-apply``; skipped when ../shared is absent."""

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
    results = [run_stack(tmp_path, group, frames, gt, layout, seed=0) for layout in "TZ"]
    for r in results:  # valid (run_stack validates), same metadata and levels, uint8 kept
        assert r["metadata_equal"] and r["dtype"] == "uint8"
        assert r["levels"] == (3 if r["layout"] == "T" else 2)
        assert all(s > n + 5 for s, n in zip(r["psnr"], noisy))  # every frame denoised
        mine = [r["psnr"][i] for i in some]
        assert np.mean(mine) > np.mean(ref) - 0.3, (mine, ref)  # not worse
    assert results[0]["psnr"] == results[1]["psnr"]  # the layout does not matter
