from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fm2s.sample import synthetic_image

FMD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def noisy_and_truth(rng) -> tuple[np.ndarray, np.ndarray]:
    """A small uint16 synthetic camera image and its noise-free truth."""
    return synthetic_image((64, 80), rng)


@pytest.fixture
def fmd() -> Path:
    if not (FMD / "raw").is_dir():
        pytest.skip("shared FMD images are absent (../shared/data/fmd)")
    return FMD
