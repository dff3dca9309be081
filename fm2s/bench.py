"""Throughput benchmark: the onnxruntime session alone (and with I/O binding on CUDA), the
whole zarr -> zarr pipeline, and the torch eager model, per provider and precision.

Every measurement runs in a fresh process (so its peak RSS is its own) and reports the
median of ``repeats`` timed runs after a warm-up, in Mvoxel/s of denoised output.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import dask.array as da
import numpy as np

from ._version import __version__
from .errors import FM2SError, ParameterError
from .pixels import MIN_SIDE
from .recipes import DEFAULT_MICROSCOPE, DEFAULT_RECIPE, default_tile, make_config
from .runtime import (
    CONV_SEARCH_ENV,
    CUDA_OPTIONS,
    PRECISIONS,
    PROVIDERS,
    OnnxDenoiser,
    _ort,
    check_precision,
    conv_search,
)

MODES = ("session", "session-iobinding", "pipeline", "torch")
#: the pipeline's default volume (T, Z, Y, X): tens of seconds on two CPU cores
DEFAULT_SHAPE = (1, 16, 2048, 2048)
#: intensities of the synthetic volume (uint16 camera counts)
OFFSET, PHOTONS = 100, 400
#: seconds one timed session repeat lasts at least
SESSION_SECONDS = 1.0


@dataclass(frozen=True)
class BenchConfig:
    """What ``fm2s-tile bench`` measures.

    Parameters
    ----------
    providers
        ``cpu``, ``cuda``; empty: every provider onnxruntime offers here.
    precisions
        ``fp32``, ``fp16`` (CUDA only: skipped on the CPU when both are asked for).
    shape
        T, Z, Y, X of the pipeline's synthetic uint16 OME-Zarr.
    tile
        Tile side of the session calls and of the pipeline (None: the provider's default,
        as ``apply`` takes it).
    workers
        Pipeline on a local dask cluster of this many single-threaded worker processes
        (None: local threads).
    repeats
        Timed runs per measurement (after one warm-up); the median is reported.
    modes
        Subset of :data:`MODES`.
    model
        An ONNX model saved by fm2s-tile; None: an untrained network of ``recipe``
        (throughput does not depend on the weights; needs torch).
    recipe, seed
        Network of the untrained model, and the seed of weights and data.
    conv_search
        The CUDA provider's cuDNN convolution algorithm search
        (:data:`fm2s.runtime.CONV_SEARCHES`; None: the default, or
        :data:`fm2s.runtime.CONV_SEARCH_ENV`), in every CUDA session of the run.
    """

    providers: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    shape: tuple[int, int, int, int] = DEFAULT_SHAPE
    tile: int | None = None
    workers: int | None = None
    repeats: int = 3
    modes: tuple[str, ...] = MODES
    model: str | None = None
    recipe: str = DEFAULT_RECIPE
    seed: int = 0
    conv_search: str | None = None

    def __post_init__(self) -> None:
        if self.conv_search is not None:
            conv_search(self.conv_search)
        available = _ort().get_available_providers()
        for p in self.providers:
            if p not in PROVIDERS:
                raise ParameterError("providers", p, "choose cpu and/or cuda")
            if PROVIDERS[p] not in available:
                raise ParameterError("providers", p, f"onnxruntime here has no {PROVIDERS[p]} "
                                     f"(it has {', '.join(available)}): install "
                                     "onnxruntime-gpu on a machine with a GPU, or leave "
                                     "cuda out")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ParameterError("precision", p, f"choose {' and/or '.join(PRECISIONS)}")
        if "fp16" in self.precisions and "cuda" not in self.chosen_providers():
            check_precision("fp16", "cpu")
        if len(self.shape) != 4 or min(self.shape) < 1 or min(self.shape[-2:]) < MIN_SIDE:
            raise ParameterError("shape", ",".join(map(str, self.shape)), "give T,Z,Y,X with "
                                 f"Y and X at least {MIN_SIDE}")
        if self.tile is not None and self.tile < MIN_SIDE:
            raise ParameterError("tile", self.tile, f"give at least {MIN_SIDE}")
        if self.workers is not None and self.workers < 1:
            raise ParameterError("workers", self.workers, "give a positive number")
        if self.repeats < 1:
            raise ParameterError("repeats", self.repeats, "give at least 1")
        for m in self.modes:
            if m not in MODES:
                raise ParameterError("modes", m, f"choose from {', '.join(MODES)}")

    def chosen_providers(self) -> list[str]:
        """The providers measured: those asked for, or every one available."""
        if self.providers:
            return list(self.providers)
        available = _ort().get_available_providers()
        return [p for p, name in PROVIDERS.items() if name in available]


@dataclass(frozen=True)
class BenchReport:
    """The machine, and one record per (provider, precision, mode) measured."""

    machine: dict
    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def machine_info() -> dict:
    """CPU model and cores, GPU name (if any), library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    ort = _ort()
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu_name(),
            "onnxruntime": ort.__version__, "fm2s_version": __version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, or None."""
    out = _nvidia_smi("--query-gpu=name")
    return out[0] if out else None


def _nvidia_smi(query: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _gpu_memory_mb() -> float | None:
    """GPU memory this process holds (nvidia-smi), or None."""
    pid = str(os.getpid())
    used = [float(line.split(",")[1]) for line in _nvidia_smi(
        "--query-compute-apps=pid,used_memory") if line.split(",")[0].strip() == pid]
    return sum(used) if used else None


def _peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest finished child (worker processes), MB.

    This process's own peak is its memory map's high-water mark (``VmHWM``), which starts
    afresh at exec; ``ru_maxrss`` would include the parent's memory at the fork. The
    children's figure is ``ru_maxrss`` (an upper bound: it includes what they inherit).
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _untrained(recipe: str, seed: int):
    """A :class:`~fm2s.model.TrainedModel` of ``recipe``'s network with seeded random
    weights, normalized for the synthetic volume (needs torch)."""
    try:
        import torch

        from .model import TrainedModel
        from .network import FM2SNet
        from .normalize import Normalization
    except ImportError as exc:
        raise FM2SError(f"the benchmark builds its model with torch, which cannot be "
                        f"imported here ({exc}): pass a saved model (--model)") from None
    config = make_config(recipe, DEFAULT_MICROSCOPE, seed=seed)
    torch.manual_seed(seed)
    net = FM2SNet(config.noise.amplification, *config.kernels)
    lo, hi = OFFSET, OFFSET + 2 * PHOTONS
    return TrainedModel(net, Normalization(float(lo), float(hi - lo)), config,
                        (float(lo), float(hi)), 0.0, "cpu")


def untrained_model(recipe: str, seed: int) -> bytes:
    """The ONNX model of :func:`_untrained` (throughput does not depend on the weights)."""
    return _untrained(recipe, seed).to_bytes()


def _synthetic_plane(block_info: dict | None = None, base=None, seed: int = 0) -> np.ndarray:
    t, z = block_info[None]["chunk-location"][:2]
    h, w = block_info[None]["chunk-shape"][-2:]
    rng = np.random.default_rng([seed, t, z])
    reps = (-(-h // base.shape[0]), -(-w // base.shape[1]))
    expected = np.roll(np.tile(base, reps)[:h, :w], (7 * z, 11 * t), axis=(0, 1))
    plane = rng.poisson(expected) + OFFSET
    return plane.astype(np.uint16).reshape(1, 1, h, w)


def write_volume(path: Path, shape: tuple[int, int, int, int], seed: int = 0) -> Path:
    """A synthetic noisy uint16 TZYX OME-Zarr (NGFF 0.5, compressed) at ``path``."""
    from .formats import V05
    from .readers import Image
    from .sample import synthetic_image
    from .tiling import write_tasks
    from .writers import OutputImage, downsample

    _, truth = synthetic_image((512, 512), np.random.default_rng(seed), photons=PHOTONS,
                               offset=0.0)
    data = da.map_blocks(_synthetic_plane, dtype=np.uint16, chunks=(
        (1,) * shape[0], (1,) * shape[1], (shape[2],), (shape[3],)),
        meta=np.empty((0, 0, 0, 0), np.uint16), base=truth.astype(np.float64), seed=seed)
    levels = [shape, shape[:2] + ((shape[2] + 1) // 2, (shape[3] + 1) // 2)]
    ms = {"name": "bench", "axes": [
        {"name": "t", "type": "time"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 0.1 * 2**i, 0.1 * 2**i]}]} for i in range(2)]}
    image = Image(data, "tzyx", "synthetic", "synthetic", V05, ms, levels)
    out = OutputImage(path, image, np.dtype(np.uint16)).create(resumable=False)
    try:
        level0 = data.rechunk(out.arrays[0].chunks)
        da.compute(*write_tasks(level0, out.arrays[0]), scheduler="threads")
        small = downsample(da.from_zarr(out.arrays[0]), levels[1], np.dtype(np.uint16))
        da.compute(*write_tasks(small, out.arrays[1]), scheduler="threads")
        out.commit({"fm2s_version": __version__, "synthetic_benchmark_volume": {"seed": seed}})
    except BaseException:
        out.abort()
        raise
    return path


def _time_calls(call: Callable[[], object], voxels: int, repeats: int) -> list[float]:
    """Mvoxel/s of ``repeats`` timed runs of ``call`` (each at least SESSION_SECONDS)."""
    call()  # warm-up: session setup, cuDNN algorithm choice, allocations
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-6)
    n = max(1, math.ceil(SESSION_SECONDS / once))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            call()
        rates.append(n * voxels / (time.perf_counter() - start) / 1e6)
    return rates


def _tile_input(tile: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(PHOTONS / 4, (1, 1, tile, tile)) + OFFSET).astype(np.float32)


def _measure(mode: str, provider: str, precision: str, model: bytes, cfg: BenchConfig,
             volume: str | None) -> dict:
    """One measurement, in its own process."""
    tile = cfg.tile or default_tile(provider)
    if cfg.conv_search:  # this process's sessions, the pipeline's included
        os.environ[CONV_SEARCH_ENV] = cfg.conv_search
    # the options in force, read back from a session (onnxruntime may change some); the
    # session is gone before anything is measured
    options = OnnxDenoiser(model, provider=provider, precision=precision,
                           verify=False).provider_options
    record = {"provider": provider, "precision": precision, "mode": mode, "tile": tile,
              "provider_options": options, "tf32": tf32_of(provider)}
    if mode in ("session", "session-iobinding"):
        runtime = OnnxDenoiser(model, provider=provider, precision=precision)
        x = _tile_input(tile, cfg.seed)
        if mode == "session":
            rates = _time_calls(lambda: runtime(x[0, 0]), x.size, cfg.repeats)
        else:
            ort = _ort()
            binding = runtime.session.io_binding()
            on_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding.bind_ortvalue_input(runtime.input_name, on_device)
            binding.bind_output(runtime.session.get_outputs()[0].name, "cuda", 0)

            def call():
                runtime.session.run_with_iobinding(binding)
                binding.synchronize_outputs()

            rates = _time_calls(call, x.size, cfg.repeats)
        record["threads"] = os.cpu_count() if provider == "cpu" else None
    elif mode == "torch":
        rates = _torch_rates(model, provider, precision, cfg, tile)
    else:
        rates = _pipeline_rates(model, provider, precision, cfg, volume)
        record["shape"] = list(cfg.shape)
        record["workers"] = cfg.workers
    own, children = _peak_rss_mb()
    record.update(mvox_s=float(np.median(rates)), runs_mvox_s=[round(r, 3) for r in rates],
                  peak_rss_mb=round(own, 1), gpu_memory_mb=_gpu_memory_mb())
    if children:
        record["worker_peak_rss_mb"] = round(children, 1)
    return record


def tf32_of(provider: str) -> bool:
    """Whether convolutions run in TF32 on ``provider``: the CUDA provider's ``use_tf32``
    (torch, in ``bench``, is set to the same)."""
    return provider == "cuda" and CUDA_OPTIONS["use_tf32"] == "1"


def _torch_rates(model: bytes, provider: str, precision: str, cfg: BenchConfig,
                 tile: int) -> list[float]:
    import torch

    # the same arithmetic as the onnxruntime session: TF32 as its use_tf32 (torch allows
    # TF32 in cuDNN convolutions by default)
    torch.backends.cudnn.allow_tf32 = tf32_of(provider)

    from .export import Denoiser

    net = _untrained(cfg.recipe, cfg.seed)  # the same network the session runs by default
    den = Denoiser(net.net, net.normalization, views=net.config.views)
    device = torch.device("cuda" if provider == "cuda" else "cpu")
    den = den.to(device).eval()
    x = torch.from_numpy(_tile_input(tile, cfg.seed)).to(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32

    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                             enabled=precision == "fp16"):
            den(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _time_calls(call, x.numel(), cfg.repeats)


def _pipeline_rates(model: bytes, provider: str, precision: str, cfg: BenchConfig,
                    volume: str) -> list[float]:
    from .formats import V05
    from .jobs import apply

    V05.validate  # noqa: B018 - the modules a run imports, imported before timing
    import ome_zarr_models.v05.image  # noqa: F401

    folder = Path(tempfile.mkdtemp(prefix="fm2s-bench-"))
    try:
        path = folder / "model.onnx"
        path.write_bytes(model)
        rates = []
        for i in range(cfg.repeats):  # whole runs: each opens, reads, writes and publishes
            out = folder / f"out{i}.ome.zarr"
            start = time.perf_counter()
            apply(path, volume, out, provider=provider, tile=cfg.tile, workers=cfg.workers,
                  precision=precision)
            rates.append(math.prod(cfg.shape) / (time.perf_counter() - start) / 1e6)
            shutil.rmtree(out)
        return rates
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench(config: BenchConfig, say: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every (provider, precision, mode) of ``config``; see :class:`BenchConfig`.

    ``say`` gets a line per measurement as it starts (progress).
    """
    say = say or (lambda line: None)
    model = (Path(config.model).read_bytes() if config.model
             else untrained_model(config.recipe, config.seed))
    OnnxDenoiser(model, provider="cpu")  # a clear error now for a model that is not fm2s
    report = BenchReport(machine_info())
    jobs, skipped = [], report.skipped
    for provider in config.chosen_providers():
        for precision in config.precisions:
            if precision == "fp16" and provider != "cuda":
                skipped.append(f"{provider}/fp16: float16 runs on the CUDA provider only")
                continue
            for mode in config.modes:
                if mode == "session-iobinding" and provider != "cuda":
                    continue  # data on the device: a CUDA measurement
                jobs.append((mode, provider, precision))
    with tempfile.TemporaryDirectory(prefix="fm2s-bench-") as tmp:
        volume = None
        if any(mode == "pipeline" for mode, _, _ in jobs):
            voxels = math.prod(config.shape)
            say(f"writing the synthetic volume {'x'.join(map(str, config.shape))} uint16 "
                f"({voxels / 1e6:.0f} Mvoxel)")
            volume = str(write_volume(Path(tmp) / "bench.ome.zarr", config.shape, config.seed))
        for mode, provider, precision in jobs:
            if mode == "torch" and not _has_torch():
                skipped.append(f"{provider}/{precision}/torch: torch is not installed")
                continue
            say(f"measuring {provider} {precision} {mode}")
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                record = pool.submit(_measure, mode, provider, precision, model, config,
                                     volume).result()
            record.update({k: v for k, v in report.machine.items() if k != "fm2s_version"})
            report.records.append(record)
    for rec in report.records:
        if rec["mode"] == "pipeline":
            session = next((r for r in report.records if r["mode"] == "session"
                            and r["provider"] == rec["provider"]
                            and r["precision"] == rec["precision"]), None)
            if session:
                rec["pipeline_over_session"] = round(rec["mvox_s"] / session["mvox_s"], 4)
    return report


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def check_plotting() -> None:
    """Fail now, not after the measurements, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FM2SError("--plot needs matplotlib: pip install 'fm2s-tile[plot]'") from None


def plot(report: BenchReport, path: str | Path) -> Path:
    """A bar chart of Mvoxel/s per provider, precision and mode, written as PNG."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = report.records
    labels = [f"{r['provider']} {r['precision']}\n{r['mode']}" for r in recs]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(recs)), 4.2), dpi=120)
    colors = {"session": "#4c72b0", "session-iobinding": "#8172b2", "pipeline": "#55a868",
              "torch": "#c44e52"}
    bars = ax.bar(range(len(recs)), [r["mvox_s"] for r in recs],
                  color=[colors.get(r["mode"], "grey") for r in recs])
    ax.bar_label(bars, labels=[f"{r['mvox_s']:.3g}" for r in recs], fontsize=8)
    ax.set_xticks(range(len(recs)), labels, fontsize=8)
    ax.set_ylabel("Mvoxel/s (median)")
    m = report.machine
    ax.set_title(f"fm2s-tile throughput: {m['cpu']} ({m['cores']} cores)"
                 + (f", {m['gpu']}" if m.get("gpu") else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def records_json(report: BenchReport) -> list[dict]:
    """The records as written by ``--json``."""
    return [dict(r) for r in report.records]


__all__ = ["BenchConfig", "BenchReport", "bench", "plot", "write_volume", "machine_info",
           "MODES"]
