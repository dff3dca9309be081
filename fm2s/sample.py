"""Synthetic fluorescence-like test data with a known noise-free ground truth."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthetic_image(shape: tuple[int, int], rng: np.random.Generator, photons: float = 40.0,
                    background: float = 4.0, read_noise: float = 2.0,
                    offset: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy uint16 camera image of filaments and vesicles, and its ground truth.

    Structures (random filaments and spots) are blurred by a Gaussian PSF, scaled
    to ``photons`` at the brightest point over a ``background``, then given
    Poisson shot noise, Gaussian read noise and a camera ``offset``.

    Returns
    -------
    noisy : numpy.ndarray
        uint16 image of ``shape``.
    truth : numpy.ndarray
        float32 expected value of each pixel (same units as ``noisy``).
    """
    h, w = shape
    canvas = np.zeros((h, w), np.float64)
    n_fil = max(3, h * w // 3000)
    for _ in range(n_fil):  # filaments: smooth random walks
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * np.pi)
        bright = rng.uniform(0.4, 1.0)
        for _ in range(int(rng.uniform(0.3, 1.0) * max(h, w))):
            angle += rng.normal(0, 0.08)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if 0 <= y < h and 0 <= x < w:
                canvas[int(y), int(x)] += bright
    n_spots = max(5, h * w // 800)
    ys, xs = rng.integers(0, h, n_spots), rng.integers(0, w, n_spots)
    np.add.at(canvas, (ys, xs), rng.uniform(1.0, 4.0, n_spots))
    structure = ndimage.gaussian_filter(canvas, sigma=1.6)
    structure += ndimage.gaussian_filter(rng.random((h, w)), sigma=12) * structure.max() * 0.3
    expected = structure / structure.max() * photons + background
    noisy = rng.poisson(expected) + rng.normal(0, read_noise, size=shape) + offset
    noisy = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    return noisy, (expected + offset).astype(np.float32)


def psnr(image: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (``data_range`` defaults to the truth's range)."""
    truth = np.asarray(truth, np.float64)
    if data_range is None:
        data_range = float(truth.max() - truth.min())
    mse = float(np.mean((np.asarray(image, np.float64) - truth) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def synthetic_stack(shape: tuple[int, int, int, int, int], rng: np.random.Generator,
                    photons: float = 40.0, background: float = 4.0, read_noise: float = 2.0,
                    offset: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy uint16 TCZYX timelapse of 3D structures, and its ground truth.

    Each channel holds its own filaments and spots in 3D, blurred by an anisotropic
    Gaussian PSF (wider in z); they drift by a pixel per frame and bleach by 5 % per
    frame; the camera adds Poisson shot noise, Gaussian read noise and an ``offset``.

    Returns
    -------
    noisy : numpy.ndarray
        uint16 array of ``shape`` (t, c, z, y, x).
    truth : numpy.ndarray
        float32 expected value of each voxel, same shape.
    """
    t, c, z, h, w = shape
    truth = np.empty(shape, np.float32)
    for ch in range(c):
        depth = z + 4
        canvas = np.zeros((depth, h + t, w + t), np.float64)
        for _ in range(max(3, h * w // 2500)):  # filaments: smooth random walks in 3D
            p = rng.uniform((0, 0, 0), canvas.shape)
            angle, tilt = rng.uniform(0, 2 * np.pi), rng.normal(0, 0.05)
            bright = rng.uniform(0.4, 1.0)
            for _ in range(int(rng.uniform(0.3, 1.0) * max(h, w))):
                angle += rng.normal(0, 0.08)
                p = p + (tilt, np.sin(angle), np.cos(angle))
                if all(0 <= p[i] < canvas.shape[i] for i in range(3)):
                    canvas[int(p[0]), int(p[1]), int(p[2])] += bright
        n_spots = max(5, depth * h * w // 4000)
        spots = tuple(rng.integers(0, n, n_spots) for n in canvas.shape)
        np.add.at(canvas, spots, rng.uniform(1.0, 4.0, n_spots))
        structure = ndimage.gaussian_filter(canvas, sigma=(1.2, 1.6, 1.6))
        structure += ndimage.gaussian_filter(rng.random(canvas.shape), sigma=(2, 12, 12)) \
            * structure.max() * 0.3
        structure /= structure.max()
        for frame in range(t):
            view = structure[2:2 + z, frame:frame + h, frame:frame + w]
            truth[frame, ch] = view * photons * 0.95**frame + background
    noisy = rng.poisson(truth) + rng.normal(0, read_noise, size=shape) + offset
    noisy = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    return noisy, truth + np.float32(offset)
