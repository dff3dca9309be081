"""Training: fit the FM2S network to one image with synthesized noise."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .cudagraph import CapturedStep, step_table
from .errors import ParameterError
from .network import FM2SNet
from .noise import add_noise, median_target, region_means
from .recipes import NoiseModel, TrainConfig


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Conv2d initialisation, drawn from ``generator``."""
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=generator)
                fan_in = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(mod.bias, -bound, bound, generator=generator)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    total = max(config.total_steps, 1)
    if config.lr_final > 0:
        ratio = config.lr_final / config.lr

        def cosine(step: int) -> float:
            return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

        return cosine
    if config.lr_decay_every > 0:
        return lambda step: config.lr_decay ** (step // config.lr_decay_every)
    return lambda step: 1.0


class Adam:
    """Adam (Kingma & Ba), the update of ``torch.optim.Adam`` with its defaults, written out.

    ``torch.optim`` imports ``torch._dynamo`` on first use, about 1.5 s of a 20 s
    ``train-and-apply`` on two CPU cores, and wraps each step in Python bookkeeping
    (about 0.5 ms a step, for six small tensors). The arithmetic is the same, operation for
    operation, so the trained weights are bit for bit those of ``torch.optim.Adam``
    (tested in ``tests/test_training.py``).

    Parameters
    ----------
    params
        The tensors to optimize.
    lr
        Learning rate; may be changed between steps (``self.lr``).
    betas, eps
        As in ``torch.optim.Adam``.
    """

    def __init__(self, params: list[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        """One update from the parameters' ``.grad``; clears them afterwards."""
        beta1, beta2 = self.betas
        grads = [p.grad for p in self.params]
        self.steps += 1
        step_size = self.lr / (1 - beta1 ** self.steps)
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        torch._foreach_lerp_(self.exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avg, denom, -step_size)
        for p in self.params:
            p.grad = None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` fails clearly without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", device, "torch sees no CUDA GPU here: use cpu")
    if device not in ("cpu", "cuda"):
        raise ParameterError("device", device, "choose auto, cpu or cuda")
    return torch.device(device)


class Sampler:
    """The training batches of one model: its targets, crops, noise draws and generators.

    Everything random about a model's training comes from here, drawn from the model's own
    generators (seeded from ``config.seed``), so a model trained alone
    (:func:`train_network`) and one trained with others (:mod:`fm2s.grouped`) see the
    same batches.

    Parameters
    ----------
    image
        2D array or (K, H, W) stack, normalized (see :func:`train_network`).
    config
        The model's config (calibrated).
    device
        Torch device the batches are made on.
    """

    def __init__(self, image: np.ndarray, config: TrainConfig, device: torch.device) -> None:
        if image.ndim not in (2, 3):
            raise ValueError(f"train_network takes a 2D image or a (K, H, W) stack, got "
                             f"{image.shape}")
        if not config.calibrated:
            raise ValueError("an auto config needs its noise measured first: "
                             "fm2s.calibrate.calibrated_config (fm2s.model.train_model does it)")
        stack = image if image.ndim == 3 else image[None]
        self.config = config
        self.device = device
        amp = config.noise.amplification
        crop = config.crop
        planes, h, w = stack.shape
        if crop and (crop > h or crop > w):
            crop = 0  # image smaller than a crop: train on the whole of it
        self.crop, self.planes, self.h, self.w = crop, planes, h, w
        # channels-last memory makes these small convolutions about 2x faster on CPUs
        fmt = torch.channels_last
        # auto may keep some of the image's own detail in the target (fm2s.calibrate.DETAIL_MAX)
        target = torch.from_numpy(np.stack([median_target(p, config.noise.median,
                                                          config.noise.detail)
                                            for p in stack]))
        self.target = target.to(device)[:, None].expand(planes, amp, h, w).contiguous(
            memory_format=fmt)
        raw = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
        self.raw = raw.to(device)[:, None].expand(planes, amp, h, w).contiguous(
            memory_format=fmt)
        # the region-wise level of FM2S's noise model (a calibrated model needs none: any
        # one-channel view does, the crops cut it like the rest)
        self.level = (region_means(self.target, config.noise)
                      if isinstance(config.noise, NoiseModel) else self.target[:, :1])
        # Optional input gain: the network sees g * x and its output is divided by g
        # (folded into the weights at the end). Dim images then train much faster.
        self.gain = 1.0
        if config.input_mean > 0:
            self.gain = min(max(config.input_mean / max(float(self.target.mean()), 1e-6), 1.0),
                            50.0)
        self.gen = torch.Generator(device=device).manual_seed(config.seed)
        self.cpu_gen = torch.Generator().manual_seed(config.seed + 1)

    def network(self) -> FM2SNet:
        """The model's network, initialised from its seed (on the CPU, train mode)."""
        config = self.config
        with torch.random.fork_rng(devices=[]):  # nn.Conv2d draws from the global RNG: undo
            net = FM2SNet(config.noise.amplification, *config.kernels)
        init_weights(net, torch.Generator().manual_seed(config.seed))
        return net

    def _pick_planes(self, n: int) -> list[int]:  # no draw for one plane: 2D runs stay
        if self.planes == 1:
            return [0] * n
        return torch.randint(0, self.planes, (n,), generator=self.cpu_gen).tolist()

    def _crops(self, *sources: torch.Tensor) -> list[torch.Tensor]:
        crop, batch = self.crop, self.config.batch
        ys = torch.randint(0, self.h - crop + 1, (batch,), generator=self.cpu_gen).tolist()
        xs = torch.randint(0, self.w - crop + 1, (batch,), generator=self.cpu_gen).tolist()
        ks = self._pick_planes(batch)
        return [torch.cat([s[k:k + 1, :, y:y + crop, x:x + crop] for k, y, x in zip(ks, ys, xs)])
                .contiguous(memory_format=torch.channels_last) for s in sources]

    def _whole(self, *sources: torch.Tensor) -> list[torch.Tensor]:
        k = self._pick_planes(1)[0]
        return [s[k:k + 1] for s in sources]

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """``(input, target, steps)``: the warm-up batches (one step each), then each noisy
        sample with the number of steps taken on it, in the order of the run."""
        config = self.config
        cut = self._crops if self.crop else self._whole
        for _ in range(config.warmup_steps):
            yield (*cut(self.raw, self.target), 1)
        for _ in range(config.samples):
            # one batch of crops per sample, noise drawn on the crops alone
            clean, tgt, lvl = cut(self.target, self.target, self.level)
            noisy = add_noise(clean, lvl, config.noise, self.gen).contiguous(
                memory_format=torch.channels_last)
            yield noisy, tgt, config.steps_per_sample


def ema_decay(config: TrainConfig) -> Callable[[int], float]:
    """The weight average's decay after ``steps`` steps: warm-started, so short runs
    forget the start."""
    return lambda steps: min(config.ema, steps / (9 + steps))


def finish(net: FM2SNet, gain: float) -> FM2SNet:
    """A trained network on the CPU in eval mode, its input gain folded into the weights
    (net(g x) / g)."""
    net = net.to(device="cpu", memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        net.conv1.weight.mul_(gain)
        net.conv3.weight.div_(gain)
        net.conv3.bias.div_(gain)
    return net


def train_network(image: np.ndarray, config: TrainConfig, device: str | torch.device = "cpu",
                  progress: Callable[[int, int], None] | None = None,
                  cuda_graph: bool = False) -> FM2SNet:
    """Train the FM2S network on one normalized 2D image, or on a stack of planes.

    Parameters
    ----------
    image
        2D array, or (K, H, W) stack of planes of one channel, intensities already
        normalized (8-bit / 255 scale). With a stack, each batch of crops (or each
        full-image sample) is drawn from planes picked at random, so the cost of a
        run does not depend on K.
    config
        Recipe, preset and seed.
    device
        Torch device to train on.
    progress
        Called as ``progress(step, total)`` from time to time.
    cuda_graph
        Take the steps with :class:`fm2s.cudagraph.CapturedStep`: on a GPU the step is
        captured once as a CUDA graph and replayed (opt-in until measured on a GPU;
        the weights differ from the default's by rounding). On a CPU, the same step
        without capture.

    Returns
    -------
    FM2SNet
        The trained network, in eval mode, on the CPU.
    """
    device = torch.device(device)
    sampler = Sampler(image, config, device)
    net = sampler.network()
    net.to(device=device, memory_format=torch.channels_last).train()
    params = list(net.parameters())
    loss_fn = nn.MSELoss()
    gain = sampler.gain

    def loss(inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return loss_fn(net(inp * gain), tgt * gain)

    ema = train_steps(loss, params, config, sampler.batches(), cuda_graph, progress)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    return finish(net, gain)


def train_steps(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                params: list[torch.Tensor], config: TrainConfig,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]], cuda_graph: bool,
                progress: Callable[[int, int], None] | None) -> list[torch.Tensor] | None:
    """Take ``config``'s schedule of Adam steps on ``batches``; returns the weight
    average (None without one), which the caller copies into the weights."""
    # exponential moving average of the weights: steadies the end of short runs
    ema = [p.detach().clone() for p in params] if config.ema > 0 else None
    decay = ema_decay(config)
    lr_factor = _lr_factor(config)
    step: Callable[[torch.Tensor, torch.Tensor], None]
    if cuda_graph:
        table = step_table(lambda k: config.lr * lr_factor(k), config.total_steps,
                           (0.9, 0.999), decay if ema is not None else None)
        step = CapturedStep(loss, params, table, ema=ema)
    else:
        opt = Adam(params, lr=config.lr)

        def step(inp: torch.Tensor, tgt: torch.Tensor) -> None:
            loss(inp, tgt).backward()
            opt.lr = config.lr * lr_factor(opt.steps)
            opt.step()
            if ema is not None:  # opt.steps: the steps taken so far, this one included
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params],
                                         1 - decay(opt.steps))

    total = config.total_steps
    done = 0
    report_every = max(total // 50, 1)
    for inp, tgt, steps in batches:
        for _ in range(steps):
            step(inp, tgt)
            done += 1
            if progress is not None and done % report_every == 0:
                progress(done, total)
    if progress is not None:
        progress(total, total)
    return ema
