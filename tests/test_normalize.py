import numpy as np
import pytest

from fm2s.normalize import Normalization, fit_normalization


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
