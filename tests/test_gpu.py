"""CUDA: training on the GPU and the CUDA execution provider (skipped without CUDA)."""

import dask.array as da
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_cuda_provider_tiles_equal_the_whole_plane(quick_model, stack_uint16):
    from fm2s.runtime import OnnxDenoiser
    from fm2s.tiling import denoise_array

    runtime = OnnxDenoiser(quick_model, provider="cuda")
    assert runtime.provider == "CUDAExecutionProvider"
    data = stack_uint16[:, :, 0]
    got = denoise_array(da.from_array(data, chunks=(1, 1, 40, 50)), [runtime.data],
                        runtime.halo, tile=32, chunk=48, dtype=np.float32,
                        provider="cuda").compute(scheduler="threads")
    whole = runtime(data.reshape(-1, 75, 133).astype(np.float32)).reshape(data.shape)
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-3)


def test_cuda_training_denoises(noisy_and_truth):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    import fm2s
    from fm2s.sample import psnr

    noisy, truth = noisy_and_truth
    model = fm2s.train(noisy, device="cuda", seed=1)
    assert model.device.startswith("cuda")
    out = fm2s.apply(model, noisy)
    assert psnr(out, truth) > psnr(noisy, truth) + 3
