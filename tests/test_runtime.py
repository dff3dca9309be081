import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from fm2s.errors import FM2SError
from fm2s.runtime import CUDA_OPTIONS, OnnxDenoiser, choose_providers


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
