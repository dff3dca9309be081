"""Many models trained at once: one batched torch program over stacked weights.

Each model keeps what makes it itself: its own :class:`fm2s.training.Sampler` (target,
crops, noise draws and generators seeded from its own config), its own initial weights
and its own input gain. Their weights are stacked along the output channels and the three
convolutions run as grouped convolutions (one group per model), so one training step is
the same ~40 kernels whatever the number of models. The loss is the sum of the models'
own losses, so each model's gradient is its own; Adam and the weight average work
element by element with one learning-rate schedule, which the models of a group share
(:func:`group_key`). Each model is therefore the model that
:func:`fm2s.training.train_network` trains alone, up to floating-point rounding (a
grouped convolution may sum in another order): ``tests/test_grouped.py`` checks it.

On a GPU a training step of one tiny network is bound by kernel launches (about 1.9 ms on
an H200, whatever the crop size), so N models at once should cost little more than one
(not measured yet: benchmarks/device_check.sh). On two CPU cores the convolutions are the
cost: see :func:`batching_pays` and benchmarks/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import FM2SNet
from .training import Sampler, finish, train_steps

#: the most models one batched program trains (beyond it the noise draws, one model at a
#: time, dominate a step on a GPU)
MAX_MODELS = 64
#: share of the GPU memory free at the start that one batch of models may take
MEMORY_SHARE = 0.5
#: memory a batch may take on a CPU
CPU_MEMORY = 2 << 30


def group_key(sampler: Sampler) -> tuple:
    """Models with equal keys can train in one program: the same network shape, batches
    of one shape and one schedule of steps, learning rates and weight average."""
    c = sampler.config
    shape = (sampler.crop, sampler.crop) if sampler.crop else (sampler.h, sampler.w)
    return (c.kernels, c.noise.amplification, sampler.crop, c.batch if sampler.crop else 1,
            shape, c.warmup_steps, c.samples, c.steps_per_sample, c.lr, c.lr_decay_every,
            c.lr_decay, c.lr_final, c.ema, str(sampler.device))


def model_bytes(sampler: Sampler) -> int:
    """Memory one model of a batch takes while it trains (bytes, an upper estimate): its
    images on the device (raw, target, level: amplified) and the activations, gradients
    and intermediates of one step."""
    amp = sampler.config.noise.amplification
    images = sampler.planes * sampler.h * sampler.w * (2 * amp + 1) * 4
    n, side = (sampler.config.batch, sampler.crop) if sampler.crop else (1, 0)
    pixels = n * side * side if side else sampler.h * sampler.w
    return images + pixels * (4 * amp + 3 * (24 + 12)) * 4 * 2


def memory_budget(device: torch.device) -> float:
    """Bytes one batch of models may take on ``device``: a share of the GPU memory free
    now, or :data:`CPU_MEMORY`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * MEMORY_SHARE
    return CPU_MEMORY


class GroupedNet(nn.Module):
    """M FM2S networks as one: each convolution's weights stacked, run grouped.

    Input and output are (N, M * C, H, W): model m reads and writes channels
    [m * C, (m + 1) * C).
    """

    def __init__(self, nets: Sequence[FM2SNet]) -> None:
        super().__init__()
        self.models = len(nets)
        self.act = nets[0].act
        for i in (1, 2, 3):
            convs = [getattr(n, f"conv{i}") for n in nets]
            weight = torch.cat([c.weight.detach() for c in convs])
            bias = torch.cat([c.bias.detach() for c in convs])
            self.register_parameter(f"w{i}", nn.Parameter(weight.clone()))
            self.register_parameter(f"b{i}", nn.Parameter(bias.clone()))
        self.pads = [nets[0].conv1.padding, nets[0].conv2.padding, nets[0].conv3.padding]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.models
        x = self.act(F.conv2d(x, self.w1, self.b1, padding=self.pads[0], groups=m))
        x = self.act(F.conv2d(x, self.w2, self.b2, padding=self.pads[1], groups=m))
        return F.conv2d(x, self.w3, self.b3, padding=self.pads[2], groups=m)

    def split(self, nets: Sequence[FM2SNet]) -> None:
        """Copy each model's slice of the stacked weights into its network."""
        with torch.no_grad():
            for i in (1, 2, 3):
                weights = self.get_parameter(f"w{i}").detach().cpu().chunk(self.models)
                biases = self.get_parameter(f"b{i}").detach().cpu().chunk(self.models)
                for net, w, b in zip(nets, weights, biases):
                    conv = getattr(net, f"conv{i}")
                    conv.weight.copy_(w)
                    conv.bias.copy_(b)


def train_grouped(samplers: Sequence[Sampler],
                  progress: Callable[[int, int], None] | None = None,
                  cuda_graph: bool = False) -> list[FM2SNet]:
    """Train the models of ``samplers`` (one :func:`group_key`) as one batched program.

    Parameters
    ----------
    samplers
        One per model, each made from its own image and config (its own seed).
    progress
        ``progress(step, total)`` of the shared schedule.
    cuda_graph
        As in :func:`fm2s.training.train_network`.

    Returns
    -------
    list[FM2SNet]
        The trained networks, in order, as :func:`fm2s.training.train_network` returns one.
    """
    if not samplers:
        return []
    keys = {group_key(s) for s in samplers}
    if len(keys) != 1:
        raise ValueError("models trained together need one network shape, batch shape and "
                         "schedule (fm2s.grouped.group_key)")
    config = samplers[0].config
    device = samplers[0].device
    nets = [s.network() for s in samplers]
    grouped = GroupedNet(nets).to(device=device, memory_format=torch.channels_last).train()
    params = list(grouped.parameters())
    amp = config.noise.amplification
    loss_fn = nn.MSELoss()

    def loss(inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        out = grouped(inp)
        return sum(loss_fn(o, t) for o, t in zip(out.split(amp, 1), tgt.split(amp, 1)))

    def batches():
        for items in zip(*(s.batches() for s in samplers)):
            inp = torch.cat([i * s.gain for (i, _, _), s in zip(items, samplers)], 1)
            tgt = torch.cat([t * s.gain for (_, t, _), s in zip(items, samplers)], 1)
            yield (inp.contiguous(memory_format=torch.channels_last),
                   tgt.contiguous(memory_format=torch.channels_last), items[0][2])

    ema = train_steps(loss, params, config, batches(), cuda_graph, progress)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    grouped.split(nets)
    return [finish(n, s.gain) for n, s in zip(nets, samplers)]


def batching_pays(device: torch.device) -> bool:
    """Whether models are batched by default on ``device``: on CUDA (launch-bound steps;
    the gain is not measured yet); not on a CPU, where the least loaded measurement on two
    cores found batching slower (benchmarks/RESULTS.md, "Many models at once on the CPU",
    a noisy measurement) and one at a time keeps outputs byte for byte as single runs."""
    return device.type == "cuda"


def groups(samplers: Sequence[Sampler], budget: float | None = None) -> list[list[int]]:
    """Indices of ``samplers`` in batches: models of one :func:`group_key`, in order, each
    batch at most :data:`MAX_MODELS` models and ``budget`` bytes (:func:`model_bytes`;
    default :func:`memory_budget`). A model alone over the budget trains alone."""
    by_key: dict[tuple, list[int]] = {}
    for i, s in enumerate(samplers):
        by_key.setdefault(group_key(s), []).append(i)
    out: list[list[int]] = []
    for members in by_key.values():
        limit = memory_budget(samplers[members[0]].device) if budget is None else budget
        batch: list[int] = []
        used = 0
        for i in members:
            size = model_bytes(samplers[i])
            if batch and (len(batch) == MAX_MODELS or used + size > limit):
                out.append(batch)
                batch, used = [], 0
            batch.append(i)
            used += size
        out.append(batch)
    return out


__all__ = ["GroupedNet", "train_grouped", "group_key", "groups", "model_bytes", "memory_budget",
           "batching_pays", "MAX_MODELS"]
