import numpy as np
import pytest
import torch
from scipy import ndimage

from fm2s.noise import add_noise, median_target, region_means
from fm2s.recipes import make_config


def _loop_means(img: np.ndarray, stride: int, lo: float, hi: float, padded: bool) -> np.ndarray:
    """Reference: a plain loop over windows."""
    out = np.zeros_like(img)
    for y in range(0, img.shape[0], stride):
        for x in range(0, img.shape[1], stride):
            win = img[y:y + stride, x:x + stride]
            m = win.sum() / stride**2 if padded else win.mean()
            out[y:y + stride, x:x + stride] = np.clip(m, lo, hi)
    return out


@pytest.mark.parametrize("recipe", ["paper", "v2"])
def test_region_means_match_a_loop_over_windows(recipe):
    noise = make_config(recipe, "confocal").noise
    img = np.random.default_rng(0).random((170, 160)).astype(np.float32) * 0.3
    t = torch.from_numpy(img)[None, None].repeat(1, 2, 1, 1)
    got = region_means(t, noise)[0, 0].numpy()
    want = _loop_means(img, noise.stride, *noise.mean_range, noise.zero_padded_windows)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_noise_is_seeded_bounded_and_unbiased():
    noise = make_config("v2", "confocal").noise
    clean = torch.full((1, 2, 150, 150), 0.1)
    level = region_means(clean, noise)
    a = add_noise(clean, level, noise, torch.Generator().manual_seed(5))
    b = add_noise(clean, level, noise, torch.Generator().manual_seed(5))
    c = add_noise(clean, level, noise, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert abs(a.mean().item() - 0.1) < 0.005
    assert not torch.equal(a[:, 0], a[:, 1])  # each amplified channel has its own draw


def test_noise_level_follows_the_gains():
    clean = torch.full((1, 1, 150, 150), 0.1)
    base = make_config("v2", "generic").noise
    stds = []
    for k_g in (10.0, 200.0):
        noise = base.__class__(**{**base.__dict__, "k_g": k_g})
        level = region_means(clean, noise)
        stds.append(add_noise(clean, level, noise, torch.Generator().manual_seed(0)).std().item())
    assert stds[1] > 2 * stds[0]


@pytest.mark.parametrize("size", [3, 5])
def test_median_target_removes_salt_noise_and_keeps_a_ramp(size):
    """A ramp with isolated salt pixels: no salt survives, the ramp is kept inside where a
    window holds no salt (a median keeps a linear ramp), and everywhere, edges included, the
    target is the median of the pixel's window with the image mirrored at its edges
    (computed here with numpy)."""
    y, x = np.mgrid[0:20, 0:27].astype(np.float32)
    ramp = (0.01 * y + 0.02 * x).astype(np.float32)
    img = ramp.copy()
    salt = np.zeros(img.shape, bool)
    salt[4::7, 5::8] = True
    img[salt] = 5.0
    target = median_target(img, size)
    r = size // 2
    assert target.dtype == np.float32 and target.shape == img.shape
    assert target.max() <= ramp.max()
    clean = ~ndimage.binary_dilation(salt, np.ones((size, size), bool))
    clean[:r], clean[-r:], clean[:, :r], clean[:, -r:] = False, False, False, False
    assert clean.sum() > 100
    np.testing.assert_allclose(target[clean], ramp[clean], atol=1e-6)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(img, r, mode="symmetric"),
                                                       (size, size))
    np.testing.assert_array_equal(target, np.median(windows, axis=(-2, -1)))


def test_median_target_can_keep_part_of_the_detail():
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    med = median_target(img, 3)
    assert np.array_equal(median_target(img, 3, 0.0), med)
    kept = median_target(img, 3, 0.3)
    assert kept.dtype == np.float32
    np.testing.assert_allclose(kept, med + 0.3 * (img - med), rtol=1e-6)
    assert np.abs(kept - img).mean() == pytest.approx(0.7 * np.abs(med - img).mean(), rel=1e-4)
