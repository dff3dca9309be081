import numpy as np
import pytest
import torch

from fm2s.network import FM2SNet
from fm2s.normalize import fit_normalization
from fm2s.recipes import make_config
from fm2s.sample import psnr
from fm2s.training import Adam, resolve_device, train_network


def _run(image, **kw):
    cfg = make_config("fast", "confocal", **kw)
    return train_network(fit_normalization(image, cfg.normalization).forward(image), cfg)


def _denoise(net, image):
    norm = fit_normalization(image, "minmax")
    x = torch.from_numpy(norm.forward(image))[None, None].repeat(1, net.conv1.in_channels, 1, 1)
    with torch.no_grad():
        y = net(x).clamp(0, 1).mean(1)[0].numpy()
    return norm.inverse(y)


def test_training_raises_psnr(noisy_and_truth):
    noisy, truth = noisy_and_truth
    net = _run(noisy, samples=30, steps_per_sample=4, seed=3)
    assert psnr(_denoise(net, noisy), truth) > psnr(noisy, truth) + 3


def test_same_seed_same_weights_and_global_rng_untouched(noisy_and_truth):
    noisy, _ = noisy_and_truth
    torch.manual_seed(99)
    before = torch.rand(1)
    torch.manual_seed(99)
    a = _run(noisy, samples=3, steps_per_sample=2, seed=7)
    after = torch.rand(1)
    b = _run(noisy, samples=3, steps_per_sample=2, seed=7)
    c = _run(noisy, samples=3, steps_per_sample=2, seed=8)
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_crop_training_on_images_smaller_than_a_crop(rng):
    """An image smaller than a crop trains on the whole of it: the same weights as the
    whole-image schedule (crop=0), where a crop that fits cuts it (other weights)."""
    img = rng.integers(0, 255, (20, 30)).astype(np.uint8)
    net = _run(img, samples=2, steps_per_sample=1, crop=64, seed=5)
    whole = _run(img, samples=2, steps_per_sample=1, crop=0, seed=5)
    cut = _run(img, samples=2, steps_per_sample=1, crop=16, seed=5)
    for a, b in zip(net.parameters(), whole.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(net.parameters(), cut.parameters()))
    out = _denoise(net, img)
    assert out.shape == img.shape and np.all(np.isfinite(out))


def test_progress_is_reported(noisy_and_truth):
    noisy, _ = noisy_and_truth
    seen = []
    cfg = make_config("v2", "widefield", samples=4, steps_per_sample=2, warmup_steps=1)
    train_network(fit_normalization(noisy).forward(noisy), cfg,
                  progress=lambda s, t: seen.append((s, t)))
    assert seen[-1] == (9, 9) and all(t == 9 for _, t in seen)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=.cuda.: torch sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_cuda_path_is_taken_when_torch_reports_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_a_one_plane_stack_trains_exactly_like_the_plane(noisy_and_truth):
    noisy, _ = noisy_and_truth
    a = _run(noisy, samples=3, seed=4)
    b = _run(noisy[None], samples=3, seed=4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("recipe_kw", [{}, {"crop": 0}])
def test_a_stack_trains_on_all_its_planes(rng, recipe_kw):
    """Planes with different content: a model trained on the stack denoises each of them."""
    from fm2s.sample import synthetic_image

    pairs = [synthetic_image((64, 80), rng) for _ in range(3)]
    stack = np.stack([p[0] for p in pairs])
    net = _run(stack, samples=30, steps_per_sample=4, seed=3, **recipe_kw)
    norm = fit_normalization(stack, "minmax")
    for noisy, truth in pairs:
        x = torch.from_numpy(norm.forward(noisy))[None, None].repeat(1, 2, 1, 1)
        with torch.no_grad():
            out = norm.inverse(net(x).clamp(0, 1).mean(1)[0].numpy())
        assert psnr(out, truth) > psnr(noisy, truth) + 3


def test_adam_is_torch_adam_bit_for_bit(rng):
    """fm2s's Adam (no torch.optim import: torch._dynamo costs seconds) updates exactly as
    torch.optim.Adam does, with the learning rate changed between steps as the schedule does."""
    x = torch.from_numpy(rng.random((2, 2, 24, 24), dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    target = x.flip(-1)
    nets = []
    for _ in range(2):
        torch.manual_seed(5)
        nets.append(FM2SNet(2, 5, 3, 5).to(memory_format=torch.channels_last))
    start = nets[0].conv1.weight.detach().clone()
    ours = Adam(list(nets[0].parameters()), lr=4e-3)
    theirs = torch.optim.Adam(nets[1].parameters(), lr=4e-3)
    for step in range(40):
        lr = 4e-3 * (0.5 + 0.5 * np.cos(np.pi * step / 40))
        ours.lr = lr
        for group in theirs.param_groups:
            group["lr"] = lr
        torch.nn.functional.mse_loss(nets[0](x), target).backward()
        ours.step()
        theirs.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(nets[1](x), target).backward()
        theirs.step()
    assert ours.steps == 40
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert a.grad is None
        assert torch.equal(a, b)
    assert (nets[0].conv1.weight - start).abs().max() > 1e-3  # it did train
