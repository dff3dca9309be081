"""A trained model: train on planes of one channel, export the whole inference to ONNX.

This is the training side (torch); :mod:`fm2s.runtime` runs the exported model without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from ._version import __version__
from .calibrate import NoiseEstimate, calibrated_config, estimate_noise
from .errors import FM2SError
from .export import Denoiser, to_onnx
from .network import FM2SNet
from .normalize import Normalization, fit_normalization, stack_stats
from .pixels import check_pixel_type, check_plane_shape
from .recipes import CalibratedNoise, TrainConfig
from .runs import write_atomic
from .runtime import OnnxDenoiser
from .selection import SELECTION, Selection, candidates, select
from .training import resolve_device, train_network


@dataclass
class TrainedModel:
    """A trained FM2S network with what it needs to run on raw pixel values.

    Attributes
    ----------
    net
        The trained network (CPU).
    normalization
        Raw values -> the recipe's [0, 1] scale.
    config
        The training config (recipe, preset, seed).
    percentiles
        p1 and p99 of the planes it was trained on (see :func:`fm2s.normalize.range_map`).
    seconds
        Wall time of the training.
    device
        Device it was trained on.
    estimate
        The noise measured on the training planes (``--microscope auto``), else None.
    selection
        What ``auto`` compared and chose (:mod:`fm2s.selection`), else None.
    batched
        Models trained in the same batched program (:mod:`fm2s.grouped`), this one
        included; 1: trained alone.
    """

    net: FM2SNet
    normalization: Normalization
    config: TrainConfig
    percentiles: tuple[float, float]
    seconds: float
    device: str
    estimate: NoiseEstimate | None = None
    selection: Selection | None = None
    batched: int = 1

    def noise_record(self) -> dict | None:
        """What ``auto`` measured and chose (None for a named preset)."""
        return noise_record(self.config, self.estimate, self.selection)

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels."""
        return self.net.halo

    def metadata(self) -> dict[str, str]:
        """Properties written into the exported ONNX model."""
        return {
            "fm2s_version": __version__,
            "recipe": self.config.recipe,
            "preset": self.config.microscope,
            "halo": str(self.halo),
            "normalization": json.dumps({"offset": self.normalization.offset,
                                         "scale": self.normalization.scale,
                                         "formula": self.normalization.describe()}),
            "percentiles": json.dumps({"p1": self.percentiles[0], "p99": self.percentiles[1]}),
            "views": str(self.config.views),
            "seed": str(self.config.seed),
            "config": json.dumps(asdict(self.config)),
            "noise": json.dumps(self.noise_record()),
            "input": "float32 N x 1 x H x W, raw pixel values",
            "output": "float32 N x 1 x H x W, denoised, raw pixel units",
        }

    @property
    def reference(self) -> tuple[float, float, float, float]:
        """The range planes are brought into (:func:`fm2s.normalize.range_map`)."""
        lo = self.normalization.offset
        return (lo, lo + self.normalization.scale, *self.percentiles)

    def to_onnx(self) -> onnx.ModelProto:
        """The whole inference as one ONNX model (dynamic N, H, W)."""
        denoiser = Denoiser(self.net, self.normalization, views=self.config.views)
        return to_onnx(denoiser, self.metadata())

    def to_bytes(self) -> bytes:
        """The serialized ONNX model."""
        return self.to_onnx().SerializeToString()

    def runtime(self, provider: str | None = None) -> OnnxDenoiser:
        """An onnxruntime session of this model (default: the CPU for a model trained on
        the CPU, else ``auto``)."""
        provider = provider or ("cpu" if self.device == "cpu" else "auto")
        return OnnxDenoiser(self.to_bytes(), provider=provider)

    def save(self, path: str | Path) -> Path:
        """Write the ONNX model to ``path`` (atomically) and return the path."""
        path = Path(path)
        if path.suffix.lower() != ".onnx":
            raise FM2SError(f"model path '{path}' should end in .onnx")
        if not path.parent.is_dir():
            raise FM2SError(f"folder '{path.parent}' of the model path does not exist: create it")
        write_atomic(path, self.to_bytes())
        return path


def _prepared(planes: np.ndarray, config: TrainConfig):
    """Checks, normalization and (``auto``) the noise measured: what a training needs."""
    planes = np.asarray(planes)
    if planes.ndim not in (2, 3) or planes.size == 0:
        raise FM2SError(f"expected a 2D image or a (K, H, W) stack of planes, got shape "
                        f"{planes.shape}")
    check_plane_shape(planes.shape, "the image")
    check_pixel_type(planes.dtype, "the image")
    stats = stack_stats(planes)
    if not np.all(np.isfinite(stats)):
        raise FM2SError("the image holds NaN or infinite pixels: replace them before denoising")
    normalization = fit_normalization(planes, config.normalization)
    return planes, stats, normalization


def _compared(config: TrainConfig) -> bool:
    """Whether ``config`` is an ``auto`` config whose synthesis the comparison chooses."""
    return config.microscope == "auto" and not config.calibrated


def _measured(normalized: np.ndarray, config: TrainConfig
              ) -> tuple[TrainConfig, NoiseEstimate | None]:
    """``config`` as given (a named preset), or (``measured``) the noise synthesis derived
    from the noise measured on ``normalized``, with that measurement."""
    if config.calibrated:
        return config, None
    estimate = estimate_noise(normalized)
    return calibrated_config(config, estimate, normalized.shape[-2:]), estimate


@dataclass
class _Pending:
    """A model of :func:`train_models` whose config is decided, waiting for its training."""

    index: int
    normalization: Normalization
    stats: np.ndarray
    config: TrainConfig
    estimate: NoiseEstimate | None
    normalized: np.ndarray
    seconds: float
    selection: Selection | None


def train_model(planes: np.ndarray, config: TrainConfig, device: str = "auto",
                progress: Callable[[int, int], None] | None = None) -> TrainedModel:
    """Train FM2S on a 2D image or a (K, H, W) stack of planes of one channel.

    Parameters
    ----------
    planes
        Raw pixel values (integers or floats). One normalization is fitted to all
        planes; the cost of a run does not depend on K.
    config
        Recipe, preset and seed (:func:`fm2s.recipes.make_config`).
    device
        ``auto``, ``cpu`` or ``cuda``.
    progress
        Optional ``progress(step, total)`` callback.

    Returns
    -------
    TrainedModel
    """
    planes, stats, normalization = _prepared(planes, config)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    normalized = normalization.forward(planes)
    selection = None
    if _compared(config):  # auto: the syntheses compared on these planes
        estimate = estimate_noise(normalized)
        selection, net = select_and_train(normalized, config, estimate, torch_device, progress)
        config = selection.winner.config
    else:
        config, estimate = _measured(normalized, config)
        net = train_network(normalized, config, torch_device, progress)
    return TrainedModel(net, normalization, config, (float(stats[2]), float(stats[3])),
                        time.perf_counter() - start, str(torch_device), estimate, selection)


def train_models(stacks: Sequence[np.ndarray], configs: Sequence[TrainConfig],
                 device: str = "auto", batched: bool | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[TrainedModel]:
    """Train one model per stack, many at once where the device gains from it.

    Each model is the one :func:`train_model` trains on its stack with its config (its
    own seed), up to floating-point rounding where models are batched
    (:mod:`fm2s.grouped`: models of one network shape, batch shape and schedule, as many as
    memory allows); a model that shares its program with no other, and every model when
    not batched, is trained exactly as :func:`train_model` does. ``auto`` configs run
    their comparison (:func:`fm2s.selection.select`) one at a time, then their winners'
    full runs batch with the others.

    Parameters
    ----------
    stacks, configs
        One 2D image or (K, H, W) stack and one config per model.
    device
        ``auto``, ``cpu`` or ``cuda``.
    batched
        Batch the models; None (default): where it is measured faster
        (:func:`fm2s.grouped.batching_pays`: CUDA).
    progress
        ``progress(step, total)`` of each batched program (or model) in turn.

    Returns
    -------
    list[TrainedModel]
        In the order of ``stacks``; :attr:`TrainedModel.batched` says how many models
        shared each one's program.
    """
    from .grouped import batching_pays, groups, train_grouped
    from .training import Sampler

    if len(stacks) != len(configs):
        raise ValueError("train_models takes one config per stack")
    torch_device = resolve_device(device)
    if batched is None:
        batched = batching_pays(torch_device)
    if not batched:
        return [train_model(s, c, device, progress) for s, c in zip(stacks, configs)]
    results: list[TrainedModel | None] = [None] * len(stacks)
    pending: list[_Pending] = []
    for i, (stack, config) in enumerate(zip(stacks, configs)):
        planes, stats, normalization = _prepared(stack, config)
        start = time.perf_counter()
        normalized = normalization.forward(planes)
        selection = None
        if _compared(config):  # compared alone
            estimate = estimate_noise(normalized)
            selection = select(normalized, config, estimate,
                               lambda p, c: train_network(p, c, torch_device, progress))
            config = selection.winner.config
        else:
            config, estimate = _measured(normalized, config)
        pending.append(_Pending(i, normalization, stats, config, estimate, normalized,
                                time.perf_counter() - start, selection))
    samplers = [Sampler(p.normalized, p.config, torch_device) for p in pending]
    for group in groups(samplers):
        start = time.perf_counter()
        if len(group) == 1:  # alone: exactly train_network's model
            (k,) = group
            nets = [train_network(pending[k].normalized, pending[k].config, torch_device,
                                  progress)]
        else:
            nets = train_grouped([samplers[k] for k in group], progress)
        seconds = time.perf_counter() - start
        for k, net in zip(group, nets):
            p = pending[k]
            results[p.index] = TrainedModel(
                net, p.normalization, p.config, (float(p.stats[2]), float(p.stats[3])),
                p.seconds + seconds, str(torch_device), p.estimate, p.selection,
                batched=len(group))
        for k in group:  # free the group's images on the device
            samplers[k] = None
    return [r for r in results if r is not None]


def select_and_train(planes: np.ndarray, config: TrainConfig, estimate: NoiseEstimate,
                     device, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[Selection, FM2SNet]:
    """``auto``: the candidate syntheses compared on ``planes`` (:func:`fm2s.selection.select`),
    then train the winner's full schedule. ``progress`` sees one run of the comparison's
    steps and the final training's."""
    stack = planes if planes.ndim == 3 else planes[None]
    compared = candidates(config, estimate, stack.shape[-2:])
    screens = [SELECTION.screening(c).total_steps for _, c in compared]
    # the final run is one of the candidates': count the longest, finish at the total
    overall = sum(screens) + max(c.total_steps for _, c in compared)
    done = 0

    def report(step: int, total: int) -> None:
        if progress is not None:
            progress(min(done + step, overall), overall)

    def train(p: np.ndarray, c: TrainConfig) -> FM2SNet:
        nonlocal done
        net = train_network(p, c, device, report)
        done += c.total_steps
        return net

    selection = select(planes, config, estimate, train)
    net = train_network(planes, selection.winner.config, device, report)
    if progress is not None:
        progress(overall, overall)
    return selection, net


def noise_record(config: TrainConfig, estimate: NoiseEstimate | None,
                 selection: Selection | None = None) -> dict | None:
    """The noise measurement and the choice made from it, for metadata and provenance."""
    if estimate is None:
        return None
    record = {"measured": asdict(estimate), "correlated": estimate.correlated,
              "chosen": asdict(config.noise), "decision": decision(config, estimate, selection)}
    if selection is not None:
        record["compared"] = {c.name: c.score for c in selection.candidates}
        record["chosen_name"] = selection.winner.name
        if selection.noise is not None:
            record["score_noise"] = asdict(selection.noise)
    return record


def decision(config: TrainConfig, estimate: NoiseEstimate,
             selection: Selection | None = None) -> str:
    """One line: what ``auto`` (or ``measured``) measured, what it compared and what it
    chose."""
    compared = f"; {selection.describe()}" if selection is not None else ""
    who = "auto" if selection is not None else config.microscope
    noise = config.noise
    if not isinstance(noise, CalibratedNoise):  # a named preset won the comparison
        return (f"{who}: {estimate.describe()}{compared}; trained with the {config.microscope} "
                f"preset ({noise.median}x{noise.median} median target, amplification "
                f"{noise.amplification}, {config.total_steps} steps)")
    lo, hi = noise.factor
    factor = f"x{lo:.3g}" if lo == hi else f"x{lo:.3g}-{hi:.3g}"
    schedule = (f"; low noise: {config.crop}-pixel crops, {config.total_steps} steps"
                if noise.low_noise_schedule else "")
    kept = f" keeping {noise.detail:.0%} of the image's detail" if noise.detail else ""
    held = ""
    if noise.ceiling is not None:  # the factor falls to 1 at x0 + lo * (ceiling - x0)
        x0 = noise.dark_level
        held = (f" up to intensity {noise.ceiling:.3g}, falling to x1 at "
                f"{x0 + lo * (noise.ceiling - x0):.3g}")
    return (f"{who}: {estimate.describe()}{compared} -> synthetic noise {factor} that "
            f"variance{held}, {noise.median}x{noise.median} median target{kept}, amplification "
            f"{noise.amplification}{schedule}")
