"""The FM2S network: three convolutions, about 3.5k weights."""

from __future__ import annotations

import torch
from torch import nn


class FM2SNet(nn.Module):
    """conv(c->24) LeakyReLU conv(24->12) LeakyReLU conv(12->c), "same" padding.

    Parameters
    ----------
    channels
        Number of input and output channels (the amplification lambda).
    k1, k2, k3
        Kernel sizes of the three convolutions (odd).
    inputs
        Input channels, when they differ from ``channels`` (the exported network takes
        the image once: :func:`fm2s.export.fold_amplification`).
    """

    def __init__(self, channels: int = 2, k1: int = 3, k2: int = 3, k3: int = 3,
                 inputs: int | None = None) -> None:
        super().__init__()
        # in place: each activation overwrites its convolution's output, which nothing
        # else reads (conv backward needs its input, not its output); the same values and
        # gradients, about 20 % less time per training step on a CPU
        self.act = nn.LeakyReLU(negative_slope=1e-3, inplace=True)
        self.conv1 = nn.Conv2d(inputs or channels, 24, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(24, 12, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(12, channels, k3, padding=k3 // 2)

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels: how far an output pixel sees."""
        return sum(c.kernel_size[0] // 2 for c in (self.conv1, self.conv2, self.conv3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)
