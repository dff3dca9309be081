import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from fm2s.errors import FM2SError, ParameterError
from fm2s.runtime import (
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
