import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fm2s import train
from fm2s.export import VIEWS, Denoiser, fold_amplification, multiply_adds, to_onnx
from fm2s.network import FM2SNet
from fm2s.normalize import Normalization


@pytest.mark.parametrize("views", [1, 2, 4])
def test_onnxruntime_reproduces_torch_with_dynamic_shapes(views):
    torch.manual_seed(0)
    den = Denoiser(FM2SNet(2, 5, 3, 5), Normalization(100.0, 4000.0), views=views).eval()
    model = to_onnx(den, {"fm2s_version": "x", "halo": "5"})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 16, 16), (3, 1, 37, 53)]:
        x = np.random.default_rng(0).uniform(100, 4100, shape).astype(np.float32)
        got = sess.run(None, {"raw": x})[0]
        with torch.no_grad():
            want = den(torch.from_numpy(x)).numpy()
        assert got.shape == shape
        np.testing.assert_allclose(got, want, atol=4100 * 1e-5)


def test_output_is_clamped_to_the_normalized_range_or_the_given_one():
    den = Denoiser(FM2SNet(1, 3, 3, 3), Normalization(10.0, 90.0)).eval()
    with torch.no_grad():
        den.net.last.bias.fill_(5.0)
        x = torch.rand(1, 1, 12, 12) * 100
        y = den(x)
        wide = den(x, torch.tensor([0.0, 300.0]))
    assert torch.allclose(y, torch.full_like(y, 100.0))
    assert torch.allclose(wide, torch.full_like(wide, 300.0))
    model = to_onnx(den, {"fm2s_version": "x", "halo": "3"})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = x.numpy()
    assert np.allclose(sess.run(None, {"raw": raw})[0], 100.0)  # the clamp input is optional
    got = sess.run(None, {"raw": raw, "clamp": np.array([0.0, 300.0], np.float32)})[0]
    assert np.allclose(got, 300.0)


def test_saved_model_has_metadata_and_passes_the_checker(tmp_path, noisy_and_truth):
    noisy, _ = noisy_and_truth
    model = train(noisy, recipe="v2", microscope="twophoton", seed=4, device="cpu",
                  samples=2, steps_per_sample=1)
    path = model.save(tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["recipe"] == "v2" and meta["preset"] == "twophoton"
    assert meta["halo"] == "5" and meta["fm2s_version"]
    norm = json.loads(meta["normalization"])
    assert norm["offset"] == float(noisy.min()) and norm["scale"] > 0
    assert json.loads(meta["config"])["seed"] == 4
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, "H", "W"]


@pytest.mark.parametrize("views", [1, 2, 4])
@pytest.mark.parametrize("amplification", [1, 2, 6])
def test_folded_views_equal_the_published_inference(views, amplification):
    """Folding the repeat into conv1 and averaging views changes nothing but float rounding:
    the reference repeats the image, runs the trained network on each flipped view, clamps,
    averages channels, flips back and averages the views."""
    torch.manual_seed(amplification)
    net = FM2SNet(amplification, 5, 3, 5).eval()
    norm = Normalization(100.0, 4000.0)
    den = Denoiser(net, norm, views=views).eval()
    assert all(c.in_channels == 1 for c in den.net.first)
    assert den.net.last.out_channels == amplification * views
    raw = torch.rand(2, 1, 29, 41) * 4000 + 100
    x = ((raw - 100.0) / 4000.0).repeat(1, amplification, 1, 1)
    with torch.no_grad():
        outs = []
        for dims in VIEWS[views]:
            xv = x.flip(dims) if dims else x
            y = net(xv).clamp(0, 1).mean(dim=1, keepdim=True)
            outs.append(y.flip(dims) if dims else y)
        want = torch.stack(outs).mean(0) * 4000.0 + 100.0
        got = den(raw)
    torch.testing.assert_close(got, want, rtol=0, atol=4100 * 2e-6)


def test_fold_amplification_keeps_the_network_function():
    torch.manual_seed(0)
    net = FM2SNet(2, 5, 3, 5).eval()
    folded = fold_amplification(net)
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x.repeat(1, 2, 1, 1)), rtol=0, atol=1e-6)
    assert net.conv1.in_channels == 2  # the trained network is left as it is


def test_multiply_adds_before_and_after():
    net = FM2SNet(2, 5, 3, 5)
    # conv 2->24 5x5 (1200), 24->12 3x3 (2592), 12->2 5x5 (600); folded conv1: 1->24 (600)
    assert multiply_adds(net, 4, folded=False) == 4 * 4392 == 17568
    assert multiply_adds(net, 2) == 2 * 3792 == 7584
    assert multiply_adds(net, 1) == 3792
