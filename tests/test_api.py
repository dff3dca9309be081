import numpy as np
import pytest

import fm2s
from fm2s.errors import FM2SError
from fm2s.sample import psnr


def test_denoise_keeps_dtype_and_input_and_raises_psnr(noisy_and_truth):
    noisy, truth = noisy_and_truth
    before = noisy.copy()
    out = fm2s.denoise(noisy, device="cpu", seed=2)
    assert out.dtype == np.uint16 and out.shape == noisy.shape
    assert np.array_equal(noisy, before)
    assert psnr(out, truth) > psnr(noisy, truth) + 3


def test_train_save_and_apply_a_saved_model(tmp_path, noisy_and_truth):
    noisy, _ = noisy_and_truth
    model = fm2s.train(noisy, microscope="widefield", device="cpu", samples=5)
    in_memory = fm2s.apply(model, noisy, dtype=np.float32)
    path = model.save(tmp_path / "m.onnx")
    from_file = fm2s.apply(path, noisy, dtype="float32")
    np.testing.assert_allclose(from_file, in_memory, rtol=0, atol=1e-3)
    with pytest.raises(FM2SError, match=".onnx"):
        model.save(tmp_path / "m.bin")


@pytest.mark.parametrize("image, match", [
    (np.zeros((4, 40), np.uint8), "at least 8 x 8"),
    (np.zeros((2, 3, 20, 20), np.uint8), "2D"),
    (np.full((10, 10), np.nan, np.float32), "NaN"),
])
def test_bad_arrays_are_refused(image, match):
    with pytest.raises(FM2SError, match=match):
        fm2s.train(image)


def test_bad_options_are_refused(noisy_and_truth):
    noisy, _ = noisy_and_truth
    with pytest.raises(FM2SError, match="recipe"):
        fm2s.train(noisy, recipe="best")
    with pytest.raises(FM2SError, match="microscope"):
        fm2s.train(noisy, microscope="sem")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_apply_refuses_nan_as_train_does(quick_model, noisy_and_truth, bad):
    """One NaN pixel would spread over the receptive field (a patch of NaN): refused."""
    image = noisy_and_truth[0].astype(np.float32)
    image[30, 40] = bad
    before = image.copy()
    with pytest.raises(FM2SError, match="NaN or infinite"):
        fm2s.apply(quick_model, image)
    np.testing.assert_array_equal(image, before)
