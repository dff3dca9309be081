"""bioimage.io model packages: ``--save-model NAME.zip`` writes one per channel, bioimage.io's
own test passes it, its ONNX and TorchScript weights compute what ``apply`` computes, and
``apply`` takes it as the model."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from conftest import write_ngff
from PIL import Image
from typer.testing import CliRunner

import fm2s.jobs
import fm2s.model
from fm2s.cli import app, format_run
from fm2s.errors import FM2SError, ParameterError
from fm2s.jobs import apply, model_paths, resolve_models, train_and_apply
from fm2s.package import input_crop, min_side, package_name, read_package
from fm2s.runs import Interrupted
from fm2s.runtime import OnnxDenoiser
from fm2s.sample import synthetic_stack
from fm2s.writers import OutputImage

QUICK = {"samples": 2, "warmup_steps": 1}  # a short schedule: the package is the point here
SHAPE = (1, 2, 2, 72, 96)  # t, c, z, y, x: two channels of two planes


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-channel train-and-apply with ``--save-model m.zip`` that is interrupted after
    training (the packages are written and kept in the run folder), then resumed: the
    resumed run trains nothing and writes the packages again from the kept ones."""
    tmp = tmp_path_factory.mktemp("package")
    stack, _ = synthetic_stack(SHAPE, np.random.default_rng(11))
    src = write_ngff(tmp / "in.ome.zarr", stack, "tczyx", "0.5", levels=1)
    out, save = tmp / "out.ome.zarr", tmp / "m.zip"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fm2s.jobs, "_finish", stop)
        with pytest.raises(Interrupted):
            train_and_apply(src, out, device="cpu", train_planes=2, save_model=save, **QUICK)
    kept = sorted(p.name for p in (out / ".fm2s-run" / "models").iterdir())
    first = {k: (tmp / f"m_c{k}.zip").read_bytes() for k in range(2)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fm2s.model, "train_model", lambda *a, **k: pytest.fail("trained again"))
        report = train_and_apply(src, out, device="cpu", train_planes=2, save_model=save,
                                 resume=True, **QUICK)
    return SimpleNamespace(tmp=tmp, src=src, stack=stack, out=out, save=save, kept=kept,
                           first=first, report=report,
                           packages=[tmp / "m_c0.zip", tmp / "m_c1.zip"])


def test_one_package_per_channel_kept_for_a_resumed_run(run):
    assert run.kept == ["c0.json", "c0.onnx", "c0.zip", "c1.json", "c1.onnx", "c1.zip"]
    assert run.report.resumed
    for k, path in enumerate(run.packages):
        assert path.read_bytes() == run.first[k]  # the resumed run wrote the same package
        channel = run.report.channels[k]
        assert channel.model_file == str(path)
        onnx, _ = read_package(path)
        assert hashlib.sha256(onnx).hexdigest() == channel.model_sha256  # the model applied
    assert not (run.tmp / "m.zip").exists()
    assert f"saved to {run.packages[1]} (bioimage.io model package)" in format_run(run.report)


def test_the_description_says_what_the_model_is(run):
    files = _members(run.packages[1])
    rdf = yaml.safe_load(files["rdf.yaml"])
    fm2s_meta = rdf["config"]["fm2s"]
    halo = fm2s_meta["halo"]
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5.")
    assert rdf["license"] == "MIT"
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2412.10031"
    assert {"denoising", "fm2s", "zero-shot", "onnx", "2d"} <= set(rdf["tags"])
    assert rdf["name"] == package_name("m_c1") == "FM2S denoiser m_c1"
    (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [a.get("id") for a in inp["axes"][2:]] == ["y", "x"]
    assert inp["axes"][2]["size"] == {"min": min_side(halo), "step": 1}
    assert all(a["size"] == {"tensor_id": inp["id"], "axis_id": a["id"]} and a["halo"] == halo
               for a in outp["axes"][2:])
    weights = rdf["weights"]
    model = OnnxDenoiser(files[weights["onnx"]["source"]], provider="cpu")
    assert halo == model.halo == 5  # the model's receptive field
    assert weights["torchscript"]["parent"] == "onnx" and "parent" not in weights["onnx"]
    for entry in [*weights.values(), inp["test_tensor"], outp["test_tensor"]]:
        assert hashlib.sha256(files[entry["source"]]).hexdigest() == entry["sha256"]
    # the test input: a crop of a training plane, raw values
    test_in = _npy(files[inp["test_tensor"]["source"]])
    assert test_in.dtype == np.float32 and test_in.shape == (1, 1, 64, 64)
    planes = run.stack[0, 1].reshape(-1, *SHAPE[-2:])  # channel 1's planes
    plane = planes[fm2s_meta["training_planes"][len(fm2s_meta["training_planes"]) // 2]]
    y0, x0 = (SHAPE[-2] - 64) // 2, (SHAPE[-1] - 64) // 2
    np.testing.assert_array_equal(test_in[0, 0], plane[y0:y0 + 64, x0:x0 + 64])
    # provenance, as in the output's metadata
    channel = run.report.channels[1]
    assert fm2s_meta["seed"] == channel.seed and fm2s_meta["recipe"] == channel.recipe
    assert fm2s_meta["normalization"]["offset"] == channel.normalization["offset"]
    assert fm2s_meta["channel"] == 1 and fm2s_meta["source"] == "in.ome.zarr"
    doc = files[rdf["documentation"]].decode()
    for words in ("specific to the data it was trained on", "recipe", "seed", "normalization",
                  "halo", "Validation", "2412.10031", fm2s_meta["preset"]):
        assert words in doc, words
    cover = files[rdf["covers"][0]]
    with Image.open(io.BytesIO(cover)) as im:
        assert im.format == "PNG" and im.size[0] == 2 * im.size[1]
        left, right = np.split(np.asarray(im, np.float64), 2, axis=1)
    assert len(cover) < 500_000
    assert np.abs(np.diff(right, axis=1)).mean() < np.abs(np.diff(left, axis=1)).mean()


def test_bioimageio_core_passes_the_package(run):
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    from bioimageio.core import test_model

    summary = test_model(run.packages[1])
    details = "\n".join(f"{d.status}: {d.name} {d.errors}" for d in summary.details)
    assert summary.status == "passed", details
    names = " ".join(d.name for d in summary.details)
    assert "Reproduce test outputs from test inputs (onnx)" in names
    assert "Reproduce test outputs from test inputs (torchscript)" in names


def test_both_weights_compute_what_apply_computes(run):
    """On a fresh image (another noise draw, within the training range: apply then keeps
    the model's own clamp), onnxruntime on the ONNX weights, torch on the TorchScript
    weights and ``fm2s-tile apply PACKAGE.zip`` agree within 1e-3 of the data range."""
    import onnxruntime as ort
    import torch

    package = run.packages[1]
    files = _members(package)
    rdf = yaml.safe_load(files["rdf.yaml"])
    norm = rdf["config"]["fm2s"]["normalization"]
    lo, hi = norm["offset"], norm["offset"] + norm["scale"]
    fresh, _ = synthetic_stack(SHAPE, np.random.default_rng(99))
    image = np.clip(fresh[0, 1, 0], lo, hi).astype(np.uint16)
    path = run.tmp / "fresh.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    out = run.tmp / "fresh.fm2s.tif"
    res = CliRunner().invoke(app, ["apply", str(package), str(path), "-o", str(out),
                                   "--dtype", "float32", "--provider", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    applied = tifffile.imread(out)

    raw = image.astype(np.float32)[None, None]
    session = ort.InferenceSession(files[rdf["weights"]["onnx"]["source"]],
                                   providers=["CPUExecutionProvider"])
    by_onnx = session.run(None, {rdf["inputs"][0]["id"]: raw})[0][0, 0]
    script = torch.jit.load(io.BytesIO(files[rdf["weights"]["torchscript"]["source"]]))
    with torch.no_grad():
        by_torch = script(torch.from_numpy(raw)).numpy()[0, 0]
    span = float(image.max()) - float(image.min())
    assert span > 0
    diffs = {"onnx-apply": np.abs(by_onnx - applied).max() / span,
             "torchscript-apply": np.abs(by_torch - applied).max() / span,
             "onnx-torchscript": np.abs(by_onnx - by_torch).max() / span}
    print("max differences / data range:", json.dumps({k: float(v) for k, v in diffs.items()}))
    assert all(v <= 1e-3 for v in diffs.values()), diffs
    assert np.abs(np.diff(applied, axis=-1)).mean() < 0.5 * np.abs(np.diff(raw, axis=-1)).mean()

    # bioimage.io's own tiled prediction (blocks of 41 pixels and the declared halo) matches
    # inside the image; at its edges it mirrors the image, fm2s-tile pads zeros (README)
    from bioimageio.core import predict

    halo = rdf["outputs"][0]["axes"][-1]["halo"]
    sample = predict(model=package, inputs={"raw": raw}, blocksize_parameter=30)
    tiled = np.asarray(sample.members["denoised"].data)[0, 0]
    inner = (slice(halo, -halo),) * 2
    assert np.abs(tiled - applied)[inner].max() / span <= 1e-3


def test_apply_takes_the_packages_of_a_multichannel_run(run):
    """``apply m.zip`` finds m_c0.zip and m_c1.zip and reproduces train-and-apply."""
    assert resolve_models(run.save, 2) == run.packages
    out = run.tmp / "again.ome.zarr"
    report = apply(run.save, run.src, out, provider="cpu")
    assert [c.model_file for c in report.channels] == [str(p) for p in run.packages]
    np.testing.assert_array_equal(zarr.open_array(out / "s0")[:],
                                  zarr.open_array(run.out / "s0")[:])


def test_save_model_paths():
    assert [p.name for p in model_paths("m.zip", 3, False)] == ["m_c0.zip", "m_c1.zip",
                                                                 "m_c2.zip"]
    assert [p.name for p in model_paths("m.ZIP", 1, False)] == ["m.ZIP"]
    with pytest.raises(ParameterError, match=r"\.onnx .* or \.zip"):
        model_paths("m.tar", 1, False)


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_packages_that_cannot_serve_are_one_line_errors(run, tmp_path):
    good = _members(run.packages[0])
    rdf = yaml.safe_load(good["rdf.yaml"])
    no_onnx = {**rdf, "weights": {"torchscript": rdf["weights"]["torchscript"]}}
    onnx_name = rdf["weights"]["onnx"]["source"]
    edited = {**good, onnx_name: good[onnx_name] + b"\0"}
    cases = {
        "not a zip": (tmp_path / "a.zip", None, "not a readable zip"),
        "no rdf": (_zip(tmp_path / "b.zip", {"weights.onnx": b"x"}), None, "without rdf.yaml"),
        "no onnx": (_zip(tmp_path / "c.zip", {**good, "rdf.yaml": yaml.safe_dump(no_onnx)}),
                    None, "without ONNX weights (it has torchscript)"),
        "sha256": (_zip(tmp_path / "d.zip", edited), None, "do not match the sha256"),
        "not fm2s": (_zip(tmp_path / "e.zip", {**good, onnx_name: b"not onnx",
                                               "rdf.yaml": yaml.safe_dump(
                                                   {**rdf, "weights": {"onnx": {
                                                       "source": onnx_name}}})}),
                     None, "cannot load"),
    }
    (tmp_path / "a.zip").write_bytes(b"PK not really")
    png = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(png)
    for what, (path, _, words) in cases.items():
        if what != "not fm2s":
            with pytest.raises(FM2SError, match=re.escape(words)):
                read_package(path)
        res = CliRunner().invoke(app, ["apply", str(path), str(png), "-o",
                                       str(tmp_path / f"{what}.png")])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, (what, res.output)
        assert lines[0].startswith("error: ") and words in lines[0] and str(path) in lines[0]
        assert not (tmp_path / f"{what}.png").exists()


def test_a_resumed_run_without_a_kept_package_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(FM2SError, match=r"no bioimage.io package .* \(--save-model NAME.onnx"):
        OutputImage.kept_package(SimpleNamespace(models=tmp_path / "models"), 0, "0" * 64)


def test_small_planes_and_odd_file_names():
    plane = np.arange(8 * 9, dtype=np.uint16).reshape(8, 9)
    crop = input_crop(plane, halo=5)  # 8 x 8, mirrored out to the declared minimum
    assert crop.dtype == np.float32 and crop.shape == (min_side(5),) * 2 == (11, 11)
    np.testing.assert_array_equal(crop[:8, :8], plane[:, :8])
    assert package_name("stack.v2_c0 é") == "FM2S denoiser stack-v2_c0 -"
    assert len(package_name("x" * 200)) == 64
