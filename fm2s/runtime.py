"""Running an exported FM2S model with onnxruntime on one array."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .errors import FM2SError, ParameterError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - depends on the install
        raise FM2SError("onnxruntime is not installed: pip install 'fm2s-tile[cpu]' "
                        "(or 'fm2s-tile[gpu]' for CUDA)") from None
    return onnxruntime


def choose_providers(provider: str = "auto") -> list[str]:
    """onnxruntime execution providers for ``auto``, ``cpu`` or ``cuda``.

    ``auto`` takes CUDA when this onnxruntime build offers it, else the CPU.
    ``cuda`` fails with a clear message when the build has no CUDA provider.
    """
    available = _ort().get_available_providers()
    if provider == "auto":
        provider = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if provider not in PROVIDERS:
        raise ParameterError("provider", provider, "choose auto, cpu or cuda")
    if PROVIDERS[provider] not in available:
        raise ParameterError("provider", provider, f"onnxruntime here has no "
                             f"{PROVIDERS[provider]} (it has {', '.join(available)}): install "
                             "onnxruntime-gpu or use cpu")
    if provider == "cuda":
        try:  # make torch's CUDA/cuDNN libraries visible to onnxruntime when present
            import torch  # noqa: F401
        except ImportError:  # pragma: no cover
            pass
        # TF32 convolutions would make tiles differ from whole planes: keep full float32
        return [(PROVIDERS["cuda"], {"use_tf32": "0"}), PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


class OnnxDenoiser:
    """An FM2S ONNX model loaded into one onnxruntime session, reused for every call.

    Parameters
    ----------
    model
        Path of a ``.onnx`` file, or the serialized model bytes.
    provider
        ``auto``, ``cpu`` or ``cuda``.
    threads
        CPU threads of one call (0: onnxruntime's default, all cores). Tiled runs use
        1 and run tiles in parallel instead.
    """

    def __init__(self, model: str | Path | bytes, provider: str = "auto", threads: int = 0) -> None:
        ort = _ort()
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise FM2SError(f"model file '{path}' does not exist: check the path")
            data = path.read_bytes()
            name = f"'{path}'"
        else:
            data, name = model, "the model"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        if threads:
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(data, options, providers=choose_providers(provider))
        except FM2SError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FM2SError(f"cannot load {name} as an ONNX model ({str(exc).splitlines()[0]}): "
                            "pass a model saved by fm2s-tile --save-model") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "fm2s_version" not in meta:
            raise FM2SError(f"{name} is an ONNX model but not one made by fm2s-tile: "
                            "pass a model saved by fm2s-tile --save-model")
        self.metadata: dict[str, str] = dict(meta)
        self.data = data
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:  # everything the tiled inference relies on, checked once here
            halo = int(meta["halo"])
            norm = json.loads(meta["normalization"])
            offset, scale = float(norm["offset"]), float(norm["scale"])
            pct = json.loads(meta.get("percentiles", "null")) or {}
            self.reference = (offset, offset + scale, float(pct.get("p1", offset)),
                              float(pct.get("p99", offset + scale)))
            if halo < 0 or not scale > 0 or len(inputs) != 1 or len(outputs) != 1:
                raise ValueError("bad values")
        except (KeyError, ValueError, TypeError) as exc:
            raise FM2SError(f"{name} has fm2s metadata but it is incomplete or odd ({exc}): "
                            "save the model again with fm2s-tile --save-model") from None
        self.halo = halo
        self.clamp_input = meta.get("clamp_input")

    @property
    def provider(self) -> str:
        """The execution provider the session runs on."""
        return self.session.get_providers()[0]

    @property
    def config(self) -> dict:
        """The training config recorded in the model."""
        return json.loads(self.metadata.get("config", "{}"))

    def __call__(self, image: np.ndarray,
                 clamp: tuple[float, float] | None = None) -> np.ndarray:
        """Denoise a 2D image or an (N, H, W) stack in one call; float32 of the same shape.

        ``clamp``: the [low, high] range (raw units) the output is clamped to (default:
        the range the model was trained on). The whole array goes to onnxruntime at once:
        for large images use :func:`fm2s.tiling.denoise_array`, which also brings planes
        outside the model's range into it.
        """
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise FM2SError(f"the model takes 2D planes or (N, H, W) stacks, not {image.shape}")
        batch = image.reshape((-1, 1) + image.shape[-2:]).astype(np.float32, copy=False)
        feed = {self.input_name: batch}
        if clamp is not None and self.clamp_input:
            feed[self.clamp_input] = np.asarray(clamp, np.float32)
        out = self.session.run(None, feed)[0]
        if out.shape != batch.shape:
            raise FM2SError(f"the model returned shape {out.shape} for input {batch.shape}: "
                            "pass a model saved by fm2s-tile --save-model")
        return out.reshape(image.shape)


_SHARED: dict[tuple[str, str], OnnxDenoiser] = {}
_SHARED_LOCK = threading.Lock()


def shared_denoiser(model: bytes, provider: str = "cpu") -> OnnxDenoiser:
    """The one session of ``model`` in this process, made on first use (thread-safe).

    Dask tasks call this: every worker process loads a model once and its threads
    share the session (onnxruntime sessions are safe to run from several threads).
    """
    key = (hashlib.sha256(model).hexdigest(), provider)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = OnnxDenoiser(model, provider=provider, threads=1)
        return _SHARED[key]
