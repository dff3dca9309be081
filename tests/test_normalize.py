import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import write_ngff

from fm2s.normalize import Normalization, fit_normalization, percentiles


def test_uint8_uses_the_published_scale():
    n = fit_normalization(np.array([[3, 200]], np.uint8))
    assert (n.offset, n.scale) == (0.0, 255.0)


def test_other_types_map_min_max_to_unit_range():
    img = np.array([[100, 4180], [500, 1000]], np.uint16)
    n = fit_normalization(img)
    out = n.forward(img)
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(n.inverse(out), img, rtol=1e-6)


def test_affine_changes_of_the_raw_data_give_the_same_normalized_image(rng):
    img = rng.random((16, 16)).astype(np.float32)
    a = fit_normalization(img).forward(img)
    shifted = img * 16 + 100
    b = fit_normalization(shifted).forward(shifted)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_constant_images_and_bad_values():
    n = fit_normalization(np.full((8, 8), 7.0, np.float32))
    assert n.scale == 1.0
    with pytest.raises(ValueError):
        fit_normalization(np.array([np.nan, 1.0], np.float32))
    with pytest.raises(ValueError):
        Normalization(0.0, 0.0)


def test_percentiles_between_infinities_are_nan_without_a_warning():
    sample = np.full((8, 8), np.inf, np.float32)
    sample[0, 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = percentiles(sample)
    assert not np.all(np.isfinite(values))


def test_an_infinite_plane_is_refused_in_one_line_without_warning_lines(tmp_path, quick_model):
    """The whole command, as a user runs it: stderr holds the error line and nothing else."""
    data = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    data[1] = np.inf
    src = write_ngff(tmp_path / "inf.ome.zarr", data, "zyx", "0.5", levels=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "fm2s.cli", "apply", str(quick_model),
                          str(src), "-q"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"error: '{src}' holds NaN or infinite values (1 plane(s), first at z=1): replace them "
        "before denoising"], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.ome.zarr"]
