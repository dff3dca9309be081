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
                        runtime.halo, tile=32, chunk=48, dtype=np.float32, block=0,
                        provider="cuda").compute(scheduler="threads")
    whole = runtime(data.reshape(-1, 75, 133).astype(np.float32)).reshape(data.shape)
    # cuDNN may choose another algorithm per tile shape: float rounding, no more
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-3)


def test_fp16_on_cuda_is_float16_rounding_of_fp32(quick_model, stack_uint16):
    from fm2s.runtime import OnnxDenoiser

    fp32 = OnnxDenoiser(quick_model, provider="cuda")
    fp16 = OnnxDenoiser(quick_model, provider="cuda", precision="fp16")
    planes = stack_uint16[0, 0].astype(np.float32)
    a, b = fp32(planes), fp16(planes)
    assert b.dtype == np.float32 and b.shape == a.shape
    span = fp32.reference[1] - fp32.reference[0]
    assert np.abs(a - b).max() <= 2e-3 * span


def test_cuda_apply_job_matches_the_cpu(tmp_path, quick_model):
    from fm2s.bench import write_volume
    from fm2s.jobs import apply
    from fm2s.readers import open_image

    src = write_volume(tmp_path / "in.ome.zarr", (2, 3, 75, 133))  # no ome-zarr-py needed
    cpu = apply(quick_model, src, tmp_path / "cpu.ome.zarr", provider="cpu")
    gpu = apply(quick_model, src, tmp_path / "gpu.ome.zarr", provider="cuda", tile=48)
    assert gpu.provider == "cuda" and cpu.voxels == gpu.voxels
    a = np.asarray(open_image(cpu.output).data, np.int64)
    b = np.asarray(open_image(gpu.output).data, np.int64)
    assert np.abs(a - b).max() <= 1  # float rounding may flip a rounding to integers


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



def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    return torch


def test_cuda_graph_replays_the_eager_step():
    torch = _cuda_torch()
    from fm2s.cudagraph import CapturedStep, step_table
    from fm2s.network import FM2SNet

    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.rand(4, 2, 32, 32, device="cuda", generator=gen) for _ in range(12)]
    averages, steps = [], []
    for capture in (True, False):
        torch.manual_seed(0)
        net = FM2SNet(2, 5, 3, 5).cuda()
        params = list(net.parameters())
        ema = [p.detach().clone() for p in params]
        table = step_table(lambda k: 4e-3, len(batches), (0.9, 0.999),
                           lambda t: min(0.99, t / (9 + t)))
        step = CapturedStep(lambda i, t, net=net: torch.nn.functional.mse_loss(net(i), t),
                            params, table, ema=ema)
        step.capture = capture
        for b in batches:
            step(b, b.flip(-1))
        averages.append(ema)
        steps.append(step)
    assert steps[0].graph is not None and steps[1].graph is None
    assert int(steps[0].index) == int(steps[1].index) == len(batches)
    for a, b in zip(*averages):  # replayed and eager steps agree
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    start = list(FM2SNet(2, 5, 3, 5).parameters())  # and the weights did move
    assert max(float((a.cpu() - p).abs().max()) for a, p in zip(averages[0], start)) > 1e-3


def test_cuda_graph_training_denoises(noisy_and_truth):
    torch = _cuda_torch()
    from fm2s.normalize import fit_normalization
    from fm2s.recipes import make_config
    from fm2s.sample import psnr
    from fm2s.training import train_network

    noisy, truth = noisy_and_truth
    cfg = make_config("fast", "confocal", samples=30, steps_per_sample=4, seed=3)
    norm = fit_normalization(noisy, cfg.normalization)
    x = torch.from_numpy(norm.forward(noisy))
    figures = []
    for graph in (False, True):
        net = train_network(x.numpy(), cfg, "cuda", cuda_graph=graph)
        with torch.no_grad():
            y = net(x[None, None].repeat(1, net.conv1.in_channels, 1, 1)).clamp(0, 1)
        figures.append(psnr(norm.inverse(y.mean(1)[0].numpy()), truth))
    assert figures[1] > psnr(noisy, truth) + 3
    assert abs(figures[0] - figures[1]) < 0.2


def test_cuda_batched_models_equal_models_trained_alone(rng):
    """tests/test_grouped.py's check on CUDA: 3 models batched and 3 alone, 50 steps, the
    same seeds; and the check fails when a noise generator is shared. TF32 is switched off
    for the comparison (both ways would round their convolutions to TF32, differently)."""
    torch = _cuda_torch()
    from test_grouped import check_batched_equals_alone

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        check_batched_equals_alone(rng, "cuda")
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_cuda_batched_models_with_captured_steps(rng):
    """The batched program runs as one captured CUDA graph too (opt-in, as for one model):
    the same models up to rounding."""
    torch = _cuda_torch()
    from test_grouped import ROUNDING, largest_difference, three_models

    from fm2s.grouped import train_grouped
    from fm2s.training import Sampler

    planes, configs = three_models(rng)
    dev = torch.device("cuda")
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        eager = train_grouped([Sampler(p, c, dev) for p, c in zip(planes, configs)])
        graph = train_grouped([Sampler(p, c, dev) for p, c in zip(planes, configs)],
                              cuda_graph=True)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    for a, b in zip(eager, graph):
        assert largest_difference(a, b) <= 10 * ROUNDING
