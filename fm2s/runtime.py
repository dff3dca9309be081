"""Running an exported FM2S model with onnxruntime on one array."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from pathlib import Path

import numpy as np

from .errors import FM2SError, ParameterError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PRECISIONS = ("fp32", "fp16")
#: CUDA provider options: full float32 convolutions (TF32 would make tiles differ from
#: whole planes) and cuDNN's convolution algorithm search DEFAULT. In onnxruntime's CUDA
#: provider (Conv::UpdateState) DEFAULT selects cuDNN's *fallback* heuristic mode (engines
#: guaranteed to work, not ranked by speed; the log says "running in Fallback mode"),
#: HEURISTIC cuDNN's heuristic mode A (what torch uses), EXHAUSTIVE mode B. DEFAULT stays
#: the default until the others are measured on a GPU (benchmarks/device_check.py measures
#: all three): HEURISTIC and EXHAUSTIVE are opt-in (:data:`CONV_SEARCH_ENV`,
#: ``OnnxDenoiser(conv_search=...)``, ``fm2s-tile bench --conv-search``).
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
#: the values of the CUDA provider's ``cudnn_conv_algo_search``
CONV_SEARCHES = ("DEFAULT", "HEURISTIC", "EXHAUSTIVE")
#: environment variable choosing ``cudnn_conv_algo_search`` for every CUDA session of a
#: process and of the dask workers it starts (opt-in; unset: :data:`CUDA_OPTIONS`'s)
CONV_SEARCH_ENV = "FM2S_CUDA_CONV_SEARCH"


def conv_search(value: str | None = None) -> str:
    """The cuDNN convolution algorithm search a CUDA session gets: ``value``, else
    :data:`CONV_SEARCH_ENV`, else :data:`CUDA_OPTIONS`'s; checked."""
    chosen = value or os.environ.get(CONV_SEARCH_ENV) or CUDA_OPTIONS["cudnn_conv_algo_search"]
    if chosen.upper() not in CONV_SEARCHES:
        if value:
            raise ParameterError("conv_search", chosen, f"choose {', '.join(CONV_SEARCHES)}")
        raise FM2SError(f"the environment variable {CONV_SEARCH_ENV}={chosen!r} is not a cuDNN "
                        f"algorithm search: set it to {', '.join(CONV_SEARCHES)}, or unset it")
    return chosen.upper()


def cuda_options(search: str | None = None) -> dict[str, str]:
    """The CUDA provider options a session is given (see :data:`CUDA_OPTIONS`)."""
    return {**CUDA_OPTIONS, "cudnn_conv_algo_search": conv_search(search)}


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - depends on the install
        raise FM2SError("onnxruntime is not installed: pip install 'fm2s-tile[cpu]' "
                        "(or 'fm2s-tile[gpu]' for CUDA)") from None
    return onnxruntime


def choose_providers(provider: str = "auto", search: str | None = None) -> list:
    """onnxruntime execution providers for ``auto``, ``cpu`` or ``cuda``.

    ``auto`` takes CUDA when this onnxruntime build offers it, else the CPU.
    ``cuda`` fails with a clear message when the build has no CUDA provider. ``search``:
    the CUDA provider's cuDNN algorithm search (:func:`conv_search`).
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
        return [(PROVIDERS["cuda"], cuda_options(search)), PROVIDERS["cpu"]]
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


_SAVE_AGAIN = "save the model again with fm2s-tile --save-model"
#: side of the plane a loaded model is tried on
TEST_SIDE = 16


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def _describe(arg) -> str:
    shape = " x ".join(str(d) if d is not None else "?" for d in (arg.shape or [])) or "?"
    return f"'{arg.name}' {arg.type} of shape {shape}"


def _plane_stack(arg) -> bool:
    """Whether an onnxruntime input or output is a float32 N x 1 x H x W array (dimensions
    that are not numbers, such as N, H and W, may be anything)."""
    shape = arg.shape
    return (arg.type == "tensor(float)" and isinstance(shape, list) and len(shape) == 4
            and (not isinstance(shape[1], int) or shape[1] == 1)
            and all(not isinstance(d, int) or d > 0 for d in shape))


def _check_signature(session, name: str) -> str:
    """Refuse a model that does not take and return one float32 N x 1 x H x W array;
    returns the name of its input."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not _plane_stack(inputs[0]):
        found = ", ".join(_describe(i) for i in inputs) or "nothing"
        raise FM2SError(f"{name} takes {found} as input, not one float32 N x 1 x H x W stack "
                        "of planes: pass a model saved by fm2s-tile --save-model")
    if len(outputs) != 1 or not _plane_stack(outputs[0]):
        found = ", ".join(_describe(o) for o in outputs) or "nothing"
        raise FM2SError(f"{name} returns {found}, not one float32 N x 1 x H x W stack of "
                        "planes: pass a model saved by fm2s-tile --save-model")
    return inputs[0].name


def _read_metadata(meta: dict[str, str], name: str
                   ) -> tuple[int, tuple[float, float, float, float]]:
    """The halo and the reference range of a model's fm2s metadata, checked."""
    text = meta.get("halo")
    if text is None:
        raise FM2SError(f"{name} has fm2s metadata without a halo: {_SAVE_AGAIN}")
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise FM2SError(f"{name} has fm2s metadata halo={text!r}, not a whole number of pixels "
                        f"(0 or more): {_SAVE_AGAIN}")
    halo = int(text)
    try:
        norm = json.loads(meta["normalization"])
        offset, scale = float(norm["offset"]), float(norm["scale"])
        pct = json.loads(meta.get("percentiles", "null")) or {}
        if not isinstance(pct, dict):
            raise TypeError(f"percentiles {pct!r} are not a mapping")
        reference = (offset, offset + scale, float(pct.get("p1", offset)),
                     float(pct.get("p99", offset + scale)))
        if not (scale > 0 and all(math.isfinite(v) for v in reference)):
            raise ValueError(f"normalization offset {offset:g}, scale {scale:g}")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise FM2SError(f"{name} has fm2s metadata but it is incomplete or odd "
                        f"({type(exc).__name__}: {_first_line(exc)}): {_SAVE_AGAIN}") from None
    return halo, reference


#: operations that move no pixel: each output pixel depends on the same pixel of the
#: inputs (or on small constant tensors, such as the clamp range)
_POINTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Constant", "Div", "Equal", "Erf", "Exp",
    "Floor", "Gather", "Greater", "GreaterOrEqual", "HardSigmoid", "Identity", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "Max", "Min", "Mul", "Neg", "Not", "Or", "Pow", "PRelu",
    "Reciprocal", "Relu", "Round", "Sigmoid", "Sign", "Softplus", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Unsqueeze", "Where"})


def receptive_field(model: bytes) -> int | None:
    """How many pixels away from an output pixel an ONNX model looks (the halo its tiles
    need): the largest sum of convolution reaches along a path from input to output.

    None when the graph holds an operation other than convolutions (stride 1), channel
    concatenations and means, and pointwise operations: then it is not known. A model the
    onnx package cannot read raises its error.
    """
    import onnx
    from onnx import helper

    graph = onnx.load_from_string(model).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    # reach of every value computed from the image (constants and initializers: none)
    reach = {i.name: 0 for i in graph.input if i.name not in weights}
    for node in graph.node:
        live = [reach[x] for x in node.input if x in reach]
        if not live:
            continue  # computed from constants alone
        here = max(live)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.name != "value"}
        op = node.op_type
        if op == "Conv":
            kernel = attrs.get("kernel_shape") or weights.get(node.input[1], [])[2:]
            if not kernel or any(s != 1 for s in attrs.get("strides", [1] * len(kernel))):
                return None
            dilations = attrs.get("dilations", [1] * len(kernel))
            pads = attrs.get("pads", [0] * 2 * len(kernel))
            spans = [(k - 1) * d for k, d in zip(kernel, dilations)]
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                here += max((s + 1) // 2 for s in spans)
            else:
                here += max(max(p, s - p) for p, s in zip(pads, spans))
        elif op in ("Concat", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
            axes = [attrs.get("axis")] if op == "Concat" else attrs.get("axes")
            if axes is None or any(a not in (1, -3) for a in axes):
                return None  # along Y or X, or axes given as an input
        elif op not in _POINTWISE:
            return None
        for out in node.output:
            reach[out] = here
    return max((reach.get(o.name, 0) for o in graph.output), default=0)


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
    verify
        Also check that the metadata's halo is the network's receptive field
        (:func:`receptive_field`) and run the model once on a small plane. Metadata,
        inputs and outputs are checked in any case.
    name
        How messages name model bytes (default "the model"), e.g. the package they came from.
    conv_search
        The CUDA provider's cuDNN convolution algorithm search (:func:`conv_search`; None:
        :data:`CONV_SEARCH_ENV` or the default). Ignored on the CPU.

    Raises
    ------
    FM2SError
        A missing file, not an ONNX model, not one made by fm2s-tile, or one whose
        metadata (halo, normalization), inputs or outputs do not fit (the message names
        the model and the problem).
    """

    def __init__(self, model: str | Path | bytes, provider: str = "auto", threads: int = 0,
                 precision: str = "fp32", verify: bool = True, name: str | None = None,
                 conv_search: str | None = None) -> None:
        ort = _ort()
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise FM2SError(f"model file '{path}' does not exist: check the path")
            data = path.read_bytes()
            name = f"'{path}'"
        else:
            data, name = model, name or "the model"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        if threads:
            options.inter_op_num_threads = 1
        check_precision(precision, provider)
        providers = choose_providers(provider, conv_search)
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
        self.name = name
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.input_name = _check_signature(self.session, name)
        self.halo, self.reference = _read_metadata(meta, name)
        self.clamp_input = meta.get("clamp_input")
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        if self.clamp_input and self.clamp_input not in overridable:
            raise FM2SError(f"{name} has fm2s metadata naming a clamp input "
                            f"'{self.clamp_input}' that the model does not have: "
                            f"{_SAVE_AGAIN}")
        if verify:
            try:
                reach = receptive_field(data)
            except Exception as exc:  # onnx's own exception types (protobuf's DecodeError)
                raise FM2SError(f"{name} loads in onnxruntime, but its halo cannot be checked: "
                                f"the onnx package cannot read it ({_first_line(exc)}); "
                                f"{_SAVE_AGAIN}") from exc
            if reach is not None and reach != self.halo:
                raise FM2SError(f"{name} has fm2s metadata halo={self.halo} but its network "
                                f"sees {reach} pixel(s) away: tiles would not match whole "
                                f"planes; {_SAVE_AGAIN}")
        # one call at a time on a GPU: the device runs them one after the other anyway,
        # and concurrent calls from many dask threads would each hold their own buffers
        self._one_at_a_time = (threading.Lock() if self.provider == PROVIDERS["cuda"]
                               else contextlib.nullcontext())
        if verify:  # one small plane: a model that runs but returns another shape is refused
            try:
                self(np.zeros((TEST_SIDE, TEST_SIDE), np.float32))
            except FM2SError:
                raise
            except Exception as exc:  # onnxruntime's own exception types
                raise FM2SError(f"{name} fails on a {TEST_SIDE} x {TEST_SIDE} test plane "
                                f"({_first_line(exc)}): pass a model saved by fm2s-tile "
                                "--save-model") from None

    @property
    def provider(self) -> str:
        """The execution provider the session runs on."""
        return self.session.get_providers()[0]

    @property
    def provider_options(self) -> dict[str, str]:
        """The options of the provider the session runs on, as onnxruntime reports them in
        force (``session.get_provider_options()``), e.g. ``cudnn_conv_algo_search``."""
        return dict(self.session.get_provider_options().get(self.provider, {}))

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
        if out.shape != batch.shape or out.dtype != np.float32:
            raise FM2SError(f"{self.name} returned {out.dtype} of shape {out.shape} for float32 "
                            f"input of shape {batch.shape}: pass a model saved by fm2s-tile "
                            "--save-model")
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
            # checked where the job loaded it; tiles run with the halo the job gives
            _SHARED[key] = OnnxDenoiser(model, provider=provider, threads=1, precision=precision,
                                        verify=False)
        return _SHARED[key]
