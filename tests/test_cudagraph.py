"""The capturable training step (fm2s.cudagraph): on the CPU it runs without capture and
must take the steps the default training takes, up to rounding (the capture itself is
tested in test_gpu.py)."""

import numpy as np
import pytest
import torch

from fm2s.cudagraph import CapturedStep, step_table
from fm2s.normalize import fit_normalization
from fm2s.recipes import make_config
from fm2s.sample import psnr
from fm2s.training import _lr_factor, train_network


def _train(image, cuda_graph, **kw):
    cfg = make_config("fast", "confocal", **kw)
    normalized = fit_normalization(image, cfg.normalization).forward(image)
    return train_network(normalized, cfg, cuda_graph=cuda_graph)


def _denoise(net, image):
    norm = fit_normalization(image, "minmax")
    x = torch.from_numpy(norm.forward(image))[None, None].repeat(1, net.conv1.in_channels, 1, 1)
    with torch.no_grad():
        return norm.inverse(net(x).clamp(0, 1).mean(1)[0].numpy())


def _max_diff(a, b):
    return max(float((x - y).detach().abs().max()) for x, y in zip(a.parameters(), b.parameters()))


def test_step_table_follows_the_schedule():
    cfg = make_config("fast", "confocal", samples=7, steps_per_sample=3)
    assert cfg.lr_final > 0 and cfg.ema > 0  # a cosine schedule and a weight average
    factor = _lr_factor(cfg)
    table = step_table(lambda k: cfg.lr * factor(k), cfg.total_steps, (0.9, 0.999),
                       lambda t: min(cfg.ema, t / (9 + t)))
    t = np.arange(1, cfg.total_steps + 1)
    lr = cfg.lr * np.array([factor(k) for k in range(cfg.total_steps)])
    assert table.shape == (cfg.total_steps, 3) and table.dtype == np.float32
    np.testing.assert_allclose(table[:, 0], -lr / (1 - 0.9 ** t), rtol=1e-6)
    np.testing.assert_allclose(table[:, 1], np.sqrt(1 - 0.999 ** t), rtol=1e-6)
    np.testing.assert_allclose(table[:, 2], 1 - np.minimum(cfg.ema, t / (9 + t)), rtol=1e-6)
    assert step_table(lambda k: 1e-3, 4, (0.9, 0.999))[:, 2].tolist() == [1.0] * 4


@pytest.mark.parametrize("crop", [0, 32])
def test_captured_form_takes_the_default_steps(noisy_and_truth, crop):
    noisy, _ = noisy_and_truth
    kw = dict(samples=4, steps_per_sample=8, seed=5, crop=crop, batch=4 if crop else 1)
    default, captured = _train(noisy, False, **kw), _train(noisy, True, **kw)
    start = _train(noisy, False, samples=1, steps_per_sample=1, warmup_steps=0, seed=5,
                   crop=crop, batch=kw["batch"])
    # the same steps up to float rounding; the weights have moved far more than that
    assert _max_diff(default, captured) < 1e-5
    assert _max_diff(default, start) > 1e-3


def test_captured_form_denoises_as_well(noisy_and_truth):
    noisy, truth = noisy_and_truth
    kw = dict(samples=30, steps_per_sample=4, seed=3)
    default, captured = _train(noisy, False, **kw), _train(noisy, True, **kw)
    a, b = psnr(_denoise(default, noisy), truth), psnr(_denoise(captured, noisy), truth)
    assert b > psnr(noisy, truth) + 3
    assert abs(a - b) < 0.05


def test_a_captured_step_takes_only_its_table():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    params = list(net.parameters())
    step = CapturedStep(lambda i, t: torch.nn.functional.mse_loss(net(i), t), params,
                        step_table(lambda k: 1e-3, 2, (0.9, 0.999)))
    x = torch.rand(1, 1, 8, 8)
    step(x, x)
    step(x, x)
    assert all(p.grad is None for p in params)  # no capture on the CPU: grads cleared
    with pytest.raises(RuntimeError, match="2 steps"):
        step(x, x)
