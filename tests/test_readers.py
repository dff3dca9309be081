import numpy as np
import pytest
import tifffile
from conftest import write_image  # noqa: I001
from PIL import Image

from fm2s.errors import FM2SError
from fm2s.readers import open_image


def read_image(path):
    return open_image(path).data.compute()


@pytest.mark.parametrize("name, dtype", [("a.png", np.uint8), ("a.png", np.uint16),
                                         ("a.tif", np.uint8), ("a.tiff", np.uint16),
                                         ("a.tif", np.float32)])
def test_round_trip_keeps_values_and_dtype(tmp_path, rng, name, dtype):
    img = (rng.random((19, 23)) * (200 if dtype == np.uint8 else 60000)).astype(dtype)
    write_image(tmp_path / name, img)
    back = read_image(tmp_path / name)
    assert back.dtype == dtype and np.array_equal(back, img)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FM2SError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(FM2SError, match="neither a zarr folder nor a TIFF or PNG"):
        read_image(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(FM2SError, match="colour|RGB"):
        read_image(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(FM2SError, match="RGB"):
        read_image(tmp_path / "rgb.tif")
    Image.fromarray(np.zeros((5, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(FM2SError, match="at least 8 x 8"):
        read_image(tmp_path / "small.png")


@pytest.mark.parametrize("name", ["t.png", "t.tif"])
def test_truncated_files_are_reported(tmp_path, rng, name):
    img = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    write_image(tmp_path / name, img)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(FM2SError, match="cannot read|truncated"):
        read_image(tmp_path / name)


# --- damaged input, malformed metadata, NaN: one line from the command line, nothing written

def _snapshot(root):
    """Every path under ``root`` and the bytes of every file (hidden ones included)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _cli_fails_cleanly(tmp_path, *args):
    """Run ``fm2s-tile ARGS``: it must fail with one ``error:`` line and leave ``tmp_path``
    exactly as it was (no output, no hidden work folder, the input untouched)."""
    from typer.testing import CliRunner

    from fm2s.cli import app

    before = _snapshot(tmp_path)
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    assert _snapshot(tmp_path) == before
    return lines[0]


def _ngff(tmp_path, version, levels=1, name="in.ome.zarr"):
    from conftest import write_ngff

    data = np.random.default_rng(3).integers(90, 160, (1, 1, 2, 16, 24)).astype(np.uint16)
    return write_ngff(tmp_path / name, data, "tczyx", version, levels=levels)


def _chunk_file(array_folder, coords):
    import zarr

    array = zarr.open_array(str(array_folder), mode="r")
    return array_folder / array.metadata.encode_chunk_key(coords)


@pytest.mark.parametrize("kind, damage", [("0.4", "garbage"), ("0.5", "garbage"),
                                          ("0.5", "truncated"), ("zarr", "truncated")])
def test_damaged_chunk_is_one_line_naming_array_and_chunk(tmp_path, quick_model, kind, damage):
    import zarr

    if kind == "zarr":  # a plain zarr array, axes given
        src = tmp_path / "in.zarr"
        z = zarr.create_array(str(src), shape=(2, 16, 24), chunks=(1, 16, 24), dtype="uint16")
        z[:] = np.random.default_rng(3).integers(90, 160, (2, 16, 24))
        array, coords, extra = src, (1, 0, 0), ["--axes", "zyx"]
    else:
        src = _ngff(tmp_path, kind)
        array, coords, extra = src / "s0", (0, 0, 1, 0, 0), []
    chunk = _chunk_file(array, coords)
    data = chunk.read_bytes()
    chunk.write_bytes(b"these are not the bytes of a chunk" if damage == "garbage"
                      else data[: len(data) // 2])
    line = _cli_fails_cleanly(tmp_path, "apply", quick_model, src, *extra)
    key = chunk.relative_to(array).as_posix()
    assert f"cannot read chunk {key} of '{array}'" in line
    assert line.endswith("the file is damaged; restore it from a copy")


def test_damaged_chunk_error_travels_through_pickle(tmp_path):
    """What a dask.distributed worker gets: the pickled graph; what it sends back: the
    pickled error (FM2SError and ParameterError survive the round trip)."""
    import pickle

    from fm2s.errors import ParameterError

    src = _ngff(tmp_path, "0.5")
    _chunk_file(src / "s0", (0, 0, 1, 0, 0)).write_bytes(b"garbage")
    data = pickle.loads(pickle.dumps(open_image(src).data))
    assert data.chunks == ((1,), (1,), (1, 1), (16,), (24,))  # the zarr chunks, unchanged
    np.asarray(data[0, 0, 0].compute())  # a good chunk reads
    with pytest.raises(FM2SError, match=r"chunk c/0/0/1/0/0 of .*s0'") as info:
        data.compute()
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is FM2SError and str(again) == str(info.value)
    err = ParameterError("scheduler", "foo", "give an address")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.name, back.value, back.problem, str(back)) == (
        ParameterError, "scheduler", "foo", "give an address", str(err))


def test_missing_chunk_reads_as_the_fill_value(tmp_path):
    src = _ngff(tmp_path, "0.4")
    _chunk_file(src / "s0", (0, 0, 1, 0, 0)).unlink()
    data = open_image(src).data.compute()
    assert np.all(data[0, 0, 1] == 0) and np.all(data[0, 0, 0] >= 90)


@pytest.mark.parametrize("kind", ["tifffile", "imagej", "zlib", "ome"])
def test_truncated_tiff_stack_is_one_line_naming_the_file(tmp_path, quick_model, kind,
                                                          caplog):
    stack = np.random.default_rng(4).integers(90, 160, (5, 24, 32)).astype(np.uint16)
    path = tmp_path / ("stack.ome.tif" if kind == "ome" else "stack.tif")
    options = {"imagej": {"imagej": True, "metadata": {"axes": "ZYX"}},
               "zlib": {"compression": "zlib", "metadata": {"axes": "ZYX"}},
               "ome": {"metadata": {"axes": "ZYX"}}}.get(kind, {"metadata": {"axes": "ZYX"}})
    tifffile.imwrite(path, stack, **options)
    data = path.read_bytes()
    path.with_name("whole.tif").write_bytes(data)
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert open_image(path.with_name("whole.tif")).axes == "zyx"  # its axes are known
    line = _cli_fails_cleanly(tmp_path, "apply", quick_model, path)
    assert (line.startswith(f"error: '{path}' is damaged or truncated (")
            or line.startswith(f"error: '{path}' is truncated (")
            or line.startswith(f"error: cannot read '{path}' as TIFF (")), line
    assert line.endswith("restore it from a copy") or "the file is damaged" in line
    # nothing else on stderr: what tifffile logs about the damage is in that one line
    assert not [r for r in caplog.records if r.name == "tifffile"]


def _edit_multiscale(src, edit):
    import json

    meta = src / "zarr.json" if (src / "zarr.json").exists() else src / ".zattrs"
    attrs = json.loads(meta.read_text())
    group = attrs["attributes"]["ome"] if "attributes" in attrs else attrs
    edit(group["multiscales"][0])
    meta.write_text(json.dumps(attrs))


def _set(ms, level, kind, values):
    transforms = ms["datasets"][level]["coordinateTransformations"]
    transforms[:] = [t for t in transforms if t["type"] != kind] + [{"type": kind, kind: values}]
    transforms.sort(key=lambda t: t["type"] != "scale")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("case, expected", [
    ("short_scale", "the scale of dataset 's0' has 3 value(s)"),
    ("short_scale_level_1", "the scale of dataset 's1' has 2 value(s)"),
    ("long_translation", "the translation of dataset 's0' has 6 value(s)"),
    ("text_scale", "the scale of dataset 's0' is"),
    ("fewer_axes", "names 3 axes (z, y, x) but dataset 's0' has 5 dimensions"),
    ("more_axes", "names 6 axes"),
    ("no_transforms", "dataset 's1' has no coordinateTransformations"),
])
def test_malformed_ome_zarr_metadata_is_refused_at_open(tmp_path, quick_model, version, case,
                                                        expected):
    src = _ngff(tmp_path, version, levels=2)
    edits = {
        "short_scale": lambda ms: _set(ms, 0, "scale", [1.0, 0.5, 0.5]),
        "short_scale_level_1": lambda ms: _set(ms, 1, "scale", [2.0, 2.0]),
        "long_translation": lambda ms: _set(ms, 0, "translation", [0.0] * 6),
        "text_scale": lambda ms: _set(ms, 0, "scale", ["1", 1, 1, 1, 1]),
        "fewer_axes": lambda ms: ms.update(axes=ms["axes"][2:]),
        "more_axes": lambda ms: ms.update(axes=[{"name": "t", "type": "time"}] + ms["axes"]),
        "no_transforms": lambda ms: ms["datasets"][1].pop("coordinateTransformations"),
    }
    _edit_multiscale(src, edits[case])
    with pytest.raises(FM2SError, match="OME-Zarr metadata") as info:
        open_image(src)
    assert expected in str(info.value) and f"'{src}'" in str(info.value)
    line = _cli_fails_cleanly(tmp_path, "apply", quick_model, src)
    assert expected in line and "--axes" not in line
    assert "metadata" in line and ("fix" in line or "add" in line)


def test_nan_input_is_refused_by_apply_as_by_train_and_apply(tmp_path, quick_model):
    import zarr

    src = tmp_path / "float_with_nan.zarr"
    data = np.random.default_rng(5).uniform(90, 160, (3, 16, 24)).astype(np.float32)
    data[1, 5, 7] = np.nan
    z = zarr.create_array(str(src), shape=data.shape, chunks=(1, 16, 24), dtype="float32")
    z[:] = data
    for args in (["apply", quick_model, src], ["train-and-apply", src, "--device", "cpu"]):
        line = _cli_fails_cleanly(tmp_path, *args, "--axes", "zyx")
        assert f"'{src}' holds NaN or infinite values (1 plane(s), first at z=1)" in line
