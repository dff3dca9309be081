"""The whole inference as one torch module, and its export to ONNX."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from .network import FM2SNet
from .normalize import Normalization

#: test-time views: the flips (dims of N x C x H x W) whose results are averaged. 2 is the
#: image and its 180-degree rotation, as good as all four flips on the FMD images at half
#: the cost (benchmarks/views.py); no 90-degree rotations, which would mix up the row and
#: column structure of scanned images.
VIEWS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (2, 3)),
    4: ((), (2,), (3,), (2, 3)),
}


def fold_amplification(net: FM2SNet) -> FM2SNet:
    """The same network taking the image once instead of repeated ``amplification`` times.

    The repeated input channels are equal, so the first convolution's kernels summed
    over them give the same result (up to float rounding) at a fraction of its cost.
    """
    c1, c3 = net.conv1, net.conv3
    folded = FM2SNet(c3.out_channels, c1.kernel_size[0], net.conv2.kernel_size[0],
                     c3.kernel_size[0], inputs=1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    folded.load_state_dict(state)
    folded.act.negative_slope = net.act.negative_slope
    return folded.eval()


def _copy(conv: nn.Conv2d, dims: tuple[int, ...]) -> nn.Conv2d:
    """``conv`` with its kernels flipped along ``dims`` (2: y, 3: x)."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                    padding=conv.padding)
    with torch.no_grad():
        out.weight.copy_(conv.weight.flip(dims) if dims else conv.weight)
        out.bias.copy_(conv.bias)
    return out


class ViewNetwork(nn.Module):
    """Every view of a folded network in one pass over the unflipped image.

    A view's result flipped back equals the network with flipped kernels on the image
    itself (odd kernels, zero "same" padding), so no data is flipped: each view runs its
    own first two convolutions, and the last convolutions of all views are one
    convolution (block-diagonal weights) over their concatenated features, which
    onnxruntime computes in fewer blocks than one per view. Output: views x
    amplification channels.
    """

    def __init__(self, net: FM2SNet, views: int) -> None:
        super().__init__()
        if views not in VIEWS:
            raise ValueError(f"views must be one of {sorted(VIEWS)}")
        net = fold_amplification(net)
        dims = VIEWS[views]
        self.act = nn.LeakyReLU(negative_slope=net.act.negative_slope)
        self.first = nn.ModuleList(_copy(net.conv1, d) for d in dims)
        self.second = nn.ModuleList(_copy(net.conv2, d) for d in dims)
        c3 = net.conv3
        width, out = c3.in_channels, c3.out_channels
        self.last = nn.Conv2d(width * len(dims), out * len(dims), c3.kernel_size,
                              padding=c3.padding)
        with torch.no_grad():
            self.last.weight.zero_()
            for i, d in enumerate(dims):
                kernel = c3.weight.flip(d) if d else c3.weight
                self.last.weight[i * out:(i + 1) * out, i * width:(i + 1) * width] = kernel
                self.last.bias[i * out:(i + 1) * out] = c3.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.act(second(self.act(first(x))))
                    for first, second in zip(self.first, self.second)]
        return self.last(torch.cat(features, dim=1) if len(features) > 1 else features[0])


def multiply_adds(net: FM2SNet, views: int, folded: bool = True) -> int:
    """Multiply-adds per output pixel of the exported network: ``views`` passes of its
    three convolutions (``folded=False``: with the input repeated, as before folding;
    the zero blocks of the merged last convolution are not counted)."""
    total = 0
    for i, conv in enumerate((net.conv1, net.conv2, net.conv3)):
        inputs = 1 if i == 0 and folded else conv.in_channels
        total += inputs * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return total * len(VIEWS[views])


class Denoiser(nn.Module):
    """Raw image in, denoised image out, both N x 1 x H x W in the image's units.

    Normalizes, runs the network (the amplification repeat folded into its first
    convolution), clamps to [0, 1] (or to ``clamp``, a [low, high] pair in raw units),
    averages the channels and maps back to raw units. With ``views`` 2 or 4, the
    result is averaged over the image and its flips (:data:`VIEWS`; test-time
    augmentation), computed as one :class:`ViewNetwork`.
    """

    def __init__(self, net: FM2SNet, normalization: Normalization, views: int = 1) -> None:
        super().__init__()
        self.net = ViewNetwork(net, views)
        self.views = views
        self.amplification = net.conv1.in_channels
        self.register_buffer("offset", torch.tensor(normalization.offset, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(normalization.scale, dtype=torch.float32))

    def forward(self, raw: torch.Tensor, clamp: torch.Tensor | None = None) -> torch.Tensor:
        x = (raw - self.offset) / self.scale
        if clamp is None:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (clamp[0] - self.offset) / self.scale, (clamp[1] - self.offset) / self.scale
        # the mean over every view's channels is the mean of the views' channel means
        y = self.net(x).clamp(lo, hi).mean(dim=1, keepdim=True)
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
