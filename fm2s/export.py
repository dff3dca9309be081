"""The whole inference as one torch module, and its export to ONNX."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from .network import FM2SNet
from .normalize import Normalization


class Denoiser(nn.Module):
    """Raw image in, denoised image out, both N x 1 x H x W in the image's units.

    Normalizes, repeats the channel ``amplification`` times, runs the network,
    clamps to [0, 1], averages the channels and maps back to raw units. With
    ``flips``, the result is also averaged over the image flipped along y, x and
    both (test-time augmentation; no rotations, which would mix up the row and
    column structure of scanned images).
    """

    def __init__(self, net: FM2SNet, normalization: Normalization, flips: bool = False) -> None:
        super().__init__()
        self.net = net
        self.flips = flips
        self.amplification = net.conv1.in_channels
        self.register_buffer("offset", torch.tensor(normalization.offset, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(normalization.scale, dtype=torch.float32))

    def _one_view(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if dims:
            return self._one_view(x.flip(dims), ()).flip(dims)
        return self.net(x).clamp(0.0, 1.0).mean(dim=1, keepdim=True)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = (raw - self.offset) / self.scale
        x = x.repeat(1, self.amplification, 1, 1)
        views = ((), (2,), (3,), (2, 3)) if self.flips else ((),)
        y = sum(self._one_view(x, dims) for dims in views) / len(views)
        return y * self.scale + self.offset


def to_onnx(denoiser: Denoiser, metadata: dict[str, str], opset: int = 17) -> onnx.ModelProto:
    """Export a :class:`Denoiser` to an ONNX model with dynamic N, H, W.

    Parameters
    ----------
    denoiser
        The module to export (kept on the CPU, in eval mode).
    metadata
        Written into the model's ``metadata_props``.
    opset
        ONNX opset version.

    Returns
    -------
    onnx.ModelProto
        A model that passes ``onnx.checker.check_model``.
    """
    denoiser = denoiser.cpu().eval()
    example = torch.zeros(1, 1, 16, 16)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and 20x faster
        warnings.simplefilter("ignore")
        torch.onnx.export(
            denoiser, (example,), buf, input_names=["raw"], output_names=["denoised"],
            dynamic_axes={"raw": {0: "N", 2: "H", 3: "W"}, "denoised": {0: "N", 2: "H", 3: "W"}},
            opset_version=opset, dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.checker.check_model(model)
    return model
