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
    clamps to [0, 1] (or to ``clamp``, a [low, high] pair in raw units), averages the
    channels and maps back to raw units. With
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

    def _one_view(self, x: torch.Tensor, dims: tuple[int, ...], lo, hi) -> torch.Tensor:
        if dims:
            return self._one_view(x.flip(dims), (), lo, hi).flip(dims)
        return self.net(x).clamp(lo, hi).mean(dim=1, keepdim=True)

    def forward(self, raw: torch.Tensor, clamp: torch.Tensor | None = None) -> torch.Tensor:
        x = (raw - self.offset) / self.scale
        x = x.repeat(1, self.amplification, 1, 1)
        if clamp is None:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (clamp[0] - self.offset) / self.scale, (clamp[1] - self.offset) / self.scale
        views = ((), (2,), (3,), (2, 3)) if self.flips else ((),)
        y = sum(self._one_view(x, dims, lo, hi) for dims in views) / len(views)
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
        A model that passes ``onnx.checker.check_model``. Its input ``raw`` is
        required; its input ``clamp`` (float32 [low, high], raw units) is optional and
        defaults to the range the model was trained on.
    """
    denoiser = denoiser.cpu().eval()
    example = torch.zeros(1, 1, 16, 16)
    default = torch.stack([denoiser.offset, denoiser.offset + denoiser.scale])
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and 20x faster
        warnings.simplefilter("ignore")
        torch.onnx.export(
            denoiser, (example, default), buf, input_names=["raw", "clamp"],
            output_names=["denoised"],
            dynamic_axes={"raw": {0: "N", 2: "H", 3: "W"}, "denoised": {0: "N", 2: "H", 3: "W"}},
            opset_version=opset, dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    # an initializer named like an input is that input's default: callers may leave it out
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(default.numpy().astype("float32"), "clamp"))
    metadata = {**metadata, "clamp_input": "clamp"}
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.checker.check_model(model)
    return model
