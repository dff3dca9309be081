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


# --------------------------------------------------------------------------------------
# denoise() on stacks: one model per channel, trained on planes spread over the channel

TINY = dict(samples=2, warmup_steps=1)  # a schedule of about a second


def _stack(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A noisy uint16 stack of ``shape`` (its last dimensions of a TCZYX sample)."""
    from fm2s.sample import synthetic_stack

    full = (1,) * (5 - len(shape)) + tuple(shape)
    return synthetic_stack(full, np.random.default_rng(seed))[0].reshape(shape)


def test_denoise_a_stack_trains_each_channel_on_its_spread_planes(tmp_path):
    """czyx (the default for 4D): channel k's model is train() on the planes that
    training_planes() picks, applied to every plane of the channel; read plane by plane."""
    import dask.array as da

    from fm2s.jobs import training_planes

    stack = _stack((2, 5, 40, 44), 3)
    calls = []
    out = fm2s.denoise(da.from_array(stack, chunks=(1, 1, 40, 44)), device="cpu",
                       train_planes=2, save_model=tmp_path / "m.onnx",
                       progress=lambda done, total: calls.append((done, total)), **TINY)
    assert out.shape == stack.shape and out.dtype == stack.dtype
    total = 2 * (fm2s.recipes.make_config(**TINY).total_steps + 5)
    assert {t for _, t in calls} == {total} and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert training_planes(5, 2) == [0, 4]
    for k in range(2):
        model = fm2s.train(stack[k, [0, 4]], device="cpu", **TINY)
        np.testing.assert_array_equal(out[k], fm2s.apply(model, stack[k]))
        saved = tmp_path / f"m_c{k}.onnx"
        np.testing.assert_array_equal(out[k], fm2s.apply(saved, stack[k], provider="cpu"))
    assert not (tmp_path / "m.onnx").exists()


def test_progress_stays_within_its_total_when_auto_trains_longer():
    """Low white noise on planes of a crop or more: measured trains the finer schedule, more
    steps than the nominal config; the reported progress still ends at its total."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:160, :160]
    clean = 2000 + 1500 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    image = rng.poisson(clean).astype(np.uint16)  # about 2000 photons: low noise
    measured = fm2s.train(image, microscope="measured", device="cpu", **TINY)
    assert measured.config.noise.low_noise_schedule
    total = fm2s.recipes.make_config(**TINY).total_steps + 1
    for microscope in ("measured", "auto"):  # auto: five comparison runs, then the winner
        calls = []
        fm2s.denoise(image, microscope=microscope, device="cpu",
                     progress=lambda d, t, calls=calls: calls.append((d, t)), **TINY)
        assert {t for _, t in calls} == {total} and calls[-1] == (total, total)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_denoise_of_one_plane_is_the_2d_engine_and_axes_name_the_stack():
    stack = _stack((3, 40, 40), 4)
    as_stack = fm2s.denoise(stack, axes="zyx", device="cpu", **TINY)  # one model, 3 planes
    as_channels = fm2s.denoise(stack, axes="cyx", device="cpu", **TINY)  # 3 single planes
    assert not np.array_equal(as_stack, as_channels)
    np.testing.assert_array_equal(as_channels[1], fm2s.denoise(stack[1], device="cpu", **TINY))
    assert fm2s.api.axes_for(3) == ["zyx", "tyx", "cyx"]
    assert fm2s.api.axes_for(4)[0] == "czyx" and fm2s.api.axes_for(5) == ["tczyx"]


@pytest.mark.parametrize("shape, axes, match", [
    ((3, 20, 20), "xyz", "axes='xyz'"),
    ((2, 3, 20, 20), "tyx", "axes='tyx'"),
    ((2, 2, 2, 2, 2, 20, 20), None, "2 to 5 dimensions"),
    ((20,), None, "2 to 5 dimensions"),
])
def test_denoise_refuses_bad_axes(shape, axes, match):
    with pytest.raises(FM2SError, match=match):
        fm2s.denoise(np.zeros(shape, np.uint8), axes=axes, **TINY)


def test_a_progress_callback_that_raises_stops_the_work_and_saves_nothing(tmp_path):
    """... and its total shows the stack schedule (a model serving 3 planes trains on the
    stack's samples, as in train-and-apply) unless samples are given."""
    stack = _stack((3, 40, 40), 4)
    seen = []

    def stop(done, total):
        seen.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fm2s.denoise(stack, device="cpu", save_model=tmp_path / "m.onnx", progress=stop,
                     steps_per_sample=1)
    stack_steps = fm2s.recipes.config_for("fast", "confocal", 0, 3, steps_per_sample=1)
    assert stack_steps.total_steps > fm2s.recipes.make_config(steps_per_sample=1).total_steps
    assert len(seen) == 1 and seen[0][1] == stack_steps.total_steps + 3
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(FM2SError, match="exists"):  # checked before any training
        fm2s.denoise(stack, device="cpu", save_model=tmp_path / "m.onnx", progress=stop)
    assert len(seen) == 1


def test_denoise_saves_a_bioimageio_package_of_the_model_it_applied(tmp_path):
    """``save_model=NAME.zip`` (checked before training, as ``.onnx`` is) writes a package
    whose ONNX weights give what ``denoise`` returned."""
    from fm2s.package import read_package

    image = np.random.default_rng(4).poisson(40, (40, 48)).astype(np.uint16)
    out = fm2s.denoise(image, device="cpu", seed=1, samples=2, save_model=tmp_path / "m.zip",
                       dtype="float32")
    onnx_bytes, rdf = read_package(tmp_path / "m.zip")
    assert rdf["type"] == "model"
    np.testing.assert_allclose(fm2s.apply(onnx_bytes, image, dtype="float32"), out, atol=1e-4)
