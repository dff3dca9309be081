import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from fm2s.errors import FM2SError, ParameterError
from fm2s.runtime import (
    CONV_SEARCH_ENV,
    CUDA_OPTIONS,
    OnnxDenoiser,
    check_precision,
    choose_providers,
    half_precision,
)


def test_cpu_and_auto_providers():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(FM2SError):
        choose_providers("tpu")


def test_cuda_provider_when_offered_and_clear_error_when_not(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    chosen = choose_providers("auto")
    assert chosen[0] == ("CUDAExecutionProvider", CUDA_OPTIONS)
    assert CUDA_OPTIONS["use_tf32"] == "0"
    assert chosen[1] == "CPUExecutionProvider"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(FM2SError, match="onnxruntime-gpu"):
        choose_providers("cuda")


def test_conv_search_is_opt_in_and_checked(monkeypatch):
    """DEFAULT (cuDNN's fallback mode) stays the default until measured on a GPU;
    HEURISTIC and EXHAUSTIVE are chosen by argument or environment, anything else refused."""
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.delenv(CONV_SEARCH_ENV, raising=False)
    assert choose_providers("cuda")[0][1]["cudnn_conv_algo_search"] == "DEFAULT"
    assert choose_providers("cuda", "heuristic")[0][1] == {**CUDA_OPTIONS,
                                                           "cudnn_conv_algo_search": "HEURISTIC"}
    monkeypatch.setenv(CONV_SEARCH_ENV, "EXHAUSTIVE")
    assert choose_providers("cuda")[0][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert choose_providers("cuda", "DEFAULT")[0][1]["cudnn_conv_algo_search"] == "DEFAULT"
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setenv(CONV_SEARCH_ENV, "FASTEST")
    with pytest.raises(FM2SError, match=f"variable {CONV_SEARCH_ENV}='FASTEST' is not a cuDNN"):
        choose_providers("cuda")
    with pytest.raises(ParameterError, match="conv_search='fast'"):
        choose_providers("cuda", "fast")


def test_provider_options_are_read_back_from_the_session(quick_model):
    runtime = OnnxDenoiser(quick_model, provider="cpu")
    assert runtime.provider_options == dict(
        runtime.session.get_provider_options()["CPUExecutionProvider"])


def test_models_not_made_by_fm2s_are_refused(tmp_path):
    node = helper.make_node("Identity", ["raw"], ["out"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("raw", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(FM2SError, match="not one made by fm2s-tile"):
        OnnxDenoiser(path, provider="cpu")


def test_runs_planes_and_stacks(noisy_and_truth):
    import fm2s

    noisy, _ = noisy_and_truth
    model = fm2s.train(noisy, recipe="paper", device="cpu", samples=1, steps_per_sample=2)
    runtime = model.runtime("cpu")
    assert runtime.halo == 3 and runtime.config["recipe"] == "paper"
    one = runtime(noisy)
    stack = runtime(np.stack([noisy, noisy]))
    assert one.dtype == np.float32 and stack.shape == (2,) + noisy.shape
    np.testing.assert_allclose(stack[1], one, rtol=1e-6, atol=1e-3)
    with pytest.raises(FM2SError):
        runtime(np.zeros((2, 2, 8, 8)))


def test_fp16_is_refused_without_cuda_and_allowed_with_it(monkeypatch, quick_model):
    with pytest.raises(ParameterError, match="choose fp32 or fp16"):
        check_precision("fp64")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    for provider in ("auto", "cpu", "cuda"):
        with pytest.raises(ParameterError, match="CUDA provider only") as info:
            check_precision("fp16", provider)
        assert info.value.name == "precision"
    with pytest.raises(ParameterError, match="CUDA provider only"):
        OnnxDenoiser(quick_model, provider="auto", precision="fp16")
    check_precision("fp32", "cpu")
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    check_precision("fp16", "auto")
    check_precision("fp16", "cuda")
    with pytest.raises(ParameterError):
        check_precision("fp16", "cpu")


def test_half_precision_keeps_float32_io_and_arithmetic_outside_the_network(quick_model):
    data = quick_model.read_bytes()
    half = onnx.load_from_string(half_precision(data))
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [f32, f32]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [f32]
    init = {t.name: t.data_type for t in half.graph.initializer}
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    assert convs and all(init[name] == f16 for n in convs for name in n.input[1:])
    assert init["clamp"] == f32  # normalization, clamp, mean stay float32
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    original = onnx.load_from_string(data)
    added = len(casts) - sum(n.op_type == "Cast" for n in original.graph.node)
    assert added == 2  # into the network and out of it
    # onnxruntime's CPU provider runs it too (slowly): float16 rounding, nothing more
    sess32 = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    sess16 = onnxruntime.InferenceSession(half.SerializeToString(),
                                          providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(100, 600, (1, 1, 40, 56)).astype(np.float32)
    a, b = sess32.run(None, {"raw": x})[0], sess16.run(None, {"raw": x})[0]
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=0, atol=600 * 2e-3)
    assert not np.array_equal(a, b)  # it did run in float16


# --- fm2s models with odd metadata or another signature: one line naming the model file

def _crafted_model(source, path, case):
    """``source`` (an fm2s model) changed as ``case`` says, saved at ``path``."""
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    graph = model.graph
    if case.endswith("halo"):
        value = {"no_halo": None, "negative_halo": "-2", "fractional_halo": "3.5",
                 "text_halo": "five", "huge_halo": "100000", "zero_halo": "0"}[case]
        props.pop("halo")
        if value is not None:
            props["halo"] = value
    elif case == "percentiles_list":
        props["percentiles"] = "[1, 2]"
    elif case == "two_output_channels":
        for node in graph.node:
            node.output[:] = ["den1" if o == "denoised" else o for o in node.output]
        graph.node.append(helper.make_node("Concat", ["den1", "den1"], ["denoised"], axis=1))
        graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    elif case == "three_input_channels":
        for node in graph.node:
            node.input[:] = ["raw1" if i == "raw" else i for i in node.input]
        graph.node.insert(0, helper.make_node("ReduceMean", ["raw"], ["raw1"], axes=[1],
                                              keepdims=1))
        graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    del model.metadata_props[:]
    for key, value in props.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case, expected", [
    ("no_halo", "has fm2s metadata without a halo"),
    ("negative_halo", "halo='-2', not a whole number of pixels"),
    ("fractional_halo", "halo='3.5', not a whole number of pixels"),
    ("text_halo", "halo='five', not a whole number of pixels"),
    ("huge_halo", "halo=100000 but its network sees 5 pixel(s) away"),
    ("zero_halo", "halo=0 but its network sees 5 pixel(s) away"),
    ("percentiles_list", "percentiles [1, 2] are not a mapping"),
    ("two_output_channels", "returns 'denoised' tensor(float) of shape N x 2 x H x W"),
    ("three_input_channels", "takes 'raw' tensor(float) of shape N x 3 x H x W as input"),
])
def test_odd_fm2s_models_are_refused_in_one_line(tmp_path, quick_model, case, expected):
    from conftest import write_image
    from typer.testing import CliRunner

    from fm2s.cli import app

    image = write_image(tmp_path / "in.png", np.full((16, 24), 120, np.uint8))
    model = _crafted_model(quick_model, tmp_path / f"{case}.onnx", case)
    with pytest.raises(FM2SError, match=f"'{model}'") as info:
        OnnxDenoiser(model, provider="cpu")
    assert expected in str(info.value)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*")}
    res = CliRunner().invoke(app, ["apply", str(model), str(image)])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    assert f"'{model}'" in lines[0] and expected in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*")} == before  # nothing written


def test_receptive_field_of_saved_models(quick_model):
    from fm2s.runtime import receptive_field

    data = quick_model.read_bytes()
    assert receptive_field(data) == OnnxDenoiser(data, provider="cpu").halo == 5
    assert receptive_field(half_precision(data)) == 5  # casts move no pixel


def test_a_halo_that_cannot_be_checked_is_an_error_not_a_skip(quick_model, monkeypatch):
    """A model onnxruntime loads but the onnx package cannot read is refused, naming why,
    instead of being applied with an unchecked halo."""

    def unreadable(data):
        raise ValueError("not readable here")

    monkeypatch.setattr(onnx, "load_from_string", unreadable)
    data = quick_model.read_bytes()
    with pytest.raises(FM2SError, match="halo cannot be checked.*not readable here") as info:
        OnnxDenoiser(data, provider="cpu")
    assert "\n" not in str(info.value) and info.value.__cause__ is not None
    assert OnnxDenoiser(data, provider="cpu", verify=False).halo == 5
