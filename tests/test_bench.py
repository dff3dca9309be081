"""fm2s-tile bench: what it measures, the records it writes, and its refusals."""

import json

import onnxruntime as ort
import pytest
import zarr
from typer.testing import CliRunner

from fm2s.bench import MODES, BenchConfig, bench, write_volume
from fm2s.cli import app
from fm2s.errors import ParameterError
from fm2s.readers import open_image

runner = CliRunner()
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.parametrize("kwargs,flag", [
    (dict(providers=("tpu",)), "providers"), (dict(precisions=("fp8",)), "precision"),
    (dict(shape=(1, 2, 3)), "shape"), (dict(shape=(1, 1, 4, 64)), "shape"),
    (dict(tile=2), "tile"), (dict(workers=0), "workers"), (dict(repeats=0), "repeats"),
    (dict(modes=("fast",)), "modes"), (dict(conv_search="fastest"), "conv_search"),
])
def test_bad_settings_are_refused(kwargs, flag):
    with pytest.raises(ParameterError) as info:
        BenchConfig(**kwargs)
    assert info.value.name == flag


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_asked_for_and_absent_is_a_clear_error():
    with pytest.raises(ParameterError, match="onnxruntime-gpu") as info:
        BenchConfig(providers=("cuda",))
    assert info.value.name == "providers"
    with pytest.raises(ParameterError, match="CUDA provider only"):
        BenchConfig(providers=("cpu",), precisions=("fp16",))
    res = runner.invoke(app, ["bench", "--providers", "cpu,cuda"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip()]  # one line
    assert res.output.startswith("error: --providers cuda:")


def test_default_providers_are_those_available():
    chosen = BenchConfig().chosen_providers()
    assert chosen[0] == ("cuda" if HAS_CUDA else "cpu") or chosen == ["cpu"]
    assert "cpu" in chosen and (("cuda" in chosen) == HAS_CUDA)


def test_synthetic_volume_is_a_compressed_uint16_ome_zarr(tmp_path):
    path = write_volume(tmp_path / "v.ome.zarr", (2, 3, 64, 80), seed=1)
    image = open_image(path)
    assert image.kind == "OME-Zarr" and image.axes == "tzyx"
    assert image.data.shape == (2, 3, 64, 80) and image.data.dtype == "uint16"
    assert len(image.level_shapes) == 2
    level0 = zarr.open_array(path / "0")
    assert level0.compressors  # compressed, as real acquisitions are
    data = level0[:]
    assert data.min() >= 100 and data.std() > 5  # camera offset and noise
    assert not (data[0, 0] == data[0, 1]).all()  # every plane its own noise
    again = write_volume(tmp_path / "w.ome.zarr", (2, 3, 64, 80), seed=1)
    assert (zarr.open_array(again / "0")[:] == data).all()  # seeded


@pytest.mark.slow
def test_cpu_bench_writes_records_json_and_plot(tmp_path):
    """A small run of every CPU mode through the command line (processes are spawned)."""
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    res = runner.invoke(app, ["bench", "--providers", "cpu", "--shape", "1,2,64,96",
                              "--tile", "64", "--repeats", "1", "--json", str(out),
                              "--plot", str(png), "--quiet"])
    assert res.exit_code == 0, res.output
    records = json.loads(out.read_text())
    assert {r["mode"] for r in records} == set(MODES) - {"session-iobinding"}
    for r in records:
        assert r["provider"] == "cpu" and r["precision"] == "fp32"
        assert r["mvox_s"] > 0 and r["peak_rss_mb"] > 50 and r["cores"] >= 1
        assert isinstance(r["provider_options"], dict) and r["tf32"] is False
    pipeline = next(r for r in records if r["mode"] == "pipeline")
    session = next(r for r in records if r["mode"] == "session")
    assert pipeline["pipeline_over_session"] == pytest.approx(
        pipeline["mvox_s"] / session["mvox_s"], abs=1e-3)
    assert "pipeline/session" in res.output and " cores" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert min(Image.open(png).size) >= 300  # readable, not a thumbnail


def test_bench_runs_in_process_pieces(tmp_path, quick_model, monkeypatch):
    """The session measurement with a saved model (no spawned process: the pool is
    replaced by a direct call)."""
    import fm2s.bench as b

    class Direct:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            class Done:
                def result(self_inner):
                    return fn(*args)
            return Done()

    monkeypatch.setattr(b, "ProcessPoolExecutor", Direct)
    monkeypatch.setattr(b, "SESSION_SECONDS", 0.01)
    report = bench(BenchConfig(providers=("cpu",), modes=("session",), tile=32, repeats=2,
                               model=str(quick_model)))
    (rec,) = report.records
    assert rec["mode"] == "session" and len(rec["runs_mvox_s"]) == 2 and rec["tile"] == 32
    assert report.machine["cores"] >= 1 and report.machine["cpu"]
