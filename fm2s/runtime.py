"""Running an exported FM2S model with onnxruntime on one array."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .errors import FM2SError, ParameterError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PRECISIONS = ("fp32", "fp16")
#: CUDA provider options: full float32 convolutions (TF32 would make tiles differ from
#: whole planes) and cuDNN's heuristic algorithm choice (the exhaustive search times
#: candidates, so two runs or two tile shapes could get different algorithms)
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}


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
        return [(PROVIDERS["cuda"], dict(CUDA_OPTIONS)), PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


#: the ops that run in float16 with ``precision="fp16"``: the network itself
HALF_OPS = frozenset({"Conv", "LeakyRelu", "Concat"})


def resolve_provider(provider: str = "auto") -> str:
    """``cpu`` or ``cuda``: where a session of ``provider`` runs here."""
    first = choose_providers(provider)[0]
    return "cuda" if isinstance(first, tuple) else "cpu"


def half_precision(model: bytes) -> bytes:
    """``model`` with its network (convolutions, activations) in float16.

    Everything else stays float32: input, output, normalization, clamp and channel mean
    (raw values in the thousands would lose their last bits in float16). One cast to
    float16 where a value enters the network, one back to float32 where it leaves.
    (onnxruntime's general converter, with the other ops blocked, sends values between
    two blocked ops through float16 too.)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    # the exporter shares equal weights through Identity nodes: use the weight itself
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in weights}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    users: dict[str, set[bool]] = {}
    for node in kept:
        node.input[:] = [alias.get(name, name) for name in node.input]
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type in HALF_OPS)
    for name, tensor in weights.items():  # weights of the network alone: stored in float16
        if users.get(name) == {True} and tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype("float16")
            tensor.CopyFrom(numpy_helper.from_array(array, name))
    half = {out for node in kept if node.op_type in HALF_OPS for out in node.output}
    half |= {name for name, t in weights.items() if t.data_type == TensorProto.FLOAT16}
    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[name, to] = f"{name}_as_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[name, to]], to=to))
        return casts[name, to]

    for node in kept:
        inside = node.op_type in HALF_OPS
        for i, name in enumerate(node.input):
            if name and (name in half) != inside:
                node.input[i] = cast(name, TensorProto.FLOAT16 if inside else TensorProto.FLOAT)
        nodes.append(node)
    if any(output.name in half for output in graph.output):  # pragma: no cover
        raise ValueError("the model's output comes straight from the network")
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 types of values that are float16 now
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def check_precision(precision: str, provider: str = "auto") -> None:
    """Refuse an unknown precision, and fp16 where the session would not run on CUDA."""
    if precision not in PRECISIONS:
        raise ParameterError("precision", precision, f"choose {' or '.join(PRECISIONS)}")
    if precision == "fp16":
        available = _ort().get_available_providers()
        if provider == "cpu" or PROVIDERS["cuda"] not in available:
            raise ParameterError("precision", precision, "runs on onnxruntime's CUDA provider "
                                 "only (onnxruntime-gpu and a GPU; this one has "
                                 f"{', '.join(available)}): use fp32")


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
    precision
        ``fp32``, or ``fp16`` (CUDA only): the network runs in float16
        (:func:`half_precision`); input and output stay float32.
    """

    def __init__(self, model: str | Path | bytes, provider: str = "auto", threads: int = 0,
                 precision: str = "fp32") -> None:
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
        check_precision(precision, provider)
        providers = choose_providers(provider)
        self.precision = precision
        try:
            run_data = half_precision(data) if precision == "fp16" else data
            self.session = ort.InferenceSession(run_data, options, providers=providers)
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
        # one call at a time on a GPU: the device runs them one after the other anyway,
        # and concurrent calls from many dask threads would each hold their own buffers
        self._one_at_a_time = (threading.Lock() if self.provider == PROVIDERS["cuda"]
                               else contextlib.nullcontext())

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
        with self._one_at_a_time:
            out = self.session.run(None, feed)[0]
        if out.shape != batch.shape:
            raise FM2SError(f"the model returned shape {out.shape} for input {batch.shape}: "
                            "pass a model saved by fm2s-tile --save-model")
        return out.reshape(image.shape)


_SHARED: dict[tuple[str, str, str], OnnxDenoiser] = {}
_SHARED_LOCK = threading.Lock()


def shared_denoiser(model: bytes, provider: str = "cpu",
                    precision: str = "fp32") -> OnnxDenoiser:
    """The one session of ``model`` in this process, made on first use (thread-safe).

    Dask tasks call this: every worker process loads a model once and its threads
    share the session (onnxruntime sessions are safe to run from several threads).
    """
    key = (hashlib.sha256(model).hexdigest(), provider, precision)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = OnnxDenoiser(model, provider=provider, threads=1, precision=precision)
        return _SHARED[key]
