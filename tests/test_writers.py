from pathlib import Path
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import KILL_AFTER_BLOCKS, write_ngff

from fm2s.errors import FM2SError
from fm2s.readers import check_axes, open_image
from fm2s.runs import read_state, refuse_unfinished, unfinished
from fm2s.tiling import chunk_indices
from fm2s.writers import OutputImage, default_output, downsample, write_chunks


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_ome_zarr_from_an_independent_writer(tmp_path, stack_uint16, version):
    path = write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", version, levels=3)
    vol = open_image(path)
    assert vol.kind == "OME-Zarr" and vol.ngff.version == version and vol.axes == "tczyx"
    assert vol.data.shape == stack_uint16.shape and vol.data.dtype == np.uint16
    assert len(vol.level_shapes) == 3 and vol.level_shapes[1][-2:] == (37, 66)
    assert vol.channels == 2
    assert np.array_equal(vol.channel_planes(1).compute(), stack_uint16[:, 1].reshape(-1, 75, 133))


def test_plain_zarr_needs_axes(tmp_path, stack_uint16):
    z = zarr.create_array(tmp_path / "plain.zarr", shape=(3, 75, 133), dtype=np.uint16,
                          chunks=(1, 75, 133), zarr_format=2)
    z[:] = stack_uint16[0, 0]
    with pytest.raises(FM2SError, match="axes"):
        open_image(tmp_path / "plain.zarr")
    vol = open_image(tmp_path / "plain.zarr", axes="zyx")
    assert vol.axes == "zyx" and vol.ngff.version == "0.4" and vol.level_shapes == [(3, 75, 133)]
    with pytest.raises(FM2SError, match="dimensions"):
        open_image(tmp_path / "plain.zarr", axes="tzyx")


@pytest.mark.parametrize("axes", ["yxz", "tt", "zxy", "abc"])
def test_bad_axes(axes):
    with pytest.raises(FM2SError):
        check_axes(axes, len(axes), "x")


def test_imagej_hyperstack_with_calibration(tmp_path, stack_uint16):
    data = stack_uint16.transpose(0, 2, 1, 3, 4)  # TZCYX, ImageJ's order
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
                     metadata={"axes": "TZCYX", "spacing": 0.5, "unit": "um", "finterval": 3.0})
    vol = open_image(path)
    assert vol.kind == "ImageJ TIFF" and vol.axes == "tczyx"  # ImageJ's TZC read as t, c, z
    assert np.array_equal(vol.data.compute(), stack_uint16)
    scale = vol.multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([3.0, 1.0, 0.5, 0.2, 0.2])
    units = {a["name"]: a.get("unit") for a in vol.multiscale["axes"]}
    assert units == {"t": "second", "c": None, "z": "micrometer", "y": "micrometer",
                     "x": "micrometer"}


def test_generic_tiff_stack_asks_for_axes(tmp_path, stack_uint16):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack_uint16[0, 0], photometric="minisblack")  # no axes metadata
    with pytest.raises(FM2SError, match="axes"):
        open_image(path)
    assert open_image(path, axes="zyx").axes == "zyx"


def test_bioformats2raw_layout_reads_series_0(tmp_path, stack_uint16):
    root = zarr.open_group(tmp_path / "b2r.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    write_ngff(tmp_path / "b2r.zarr" / "0", stack_uint16[0], "czyx", "0.4")
    vol = open_image(tmp_path / "b2r.zarr")
    assert vol.axes == "czyx" and "bioformats2raw" in vol.notes[0]


def test_bioformats2raw_layout_without_series_0_keeps_the_cause(tmp_path):
    root = zarr.open_group(tmp_path / "b2r.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    with pytest.raises(FM2SError, match="series 0 of a bioformats2raw layout") as info:
        open_image(tmp_path / "b2r.zarr")
    message = str(info.value)
    assert "\n" not in message and "pass the path of one image" in message
    cause = info.value.__cause__
    assert cause is not None and type(cause).__name__ in message


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "does not exist"),
    (lambda p: zarr.open_group(p, mode="w"), "without an OME-Zarr image"),
    (lambda p: zarr.open_group(p, mode="w").attrs.update({"plate": {}}), "HCS plate"),
    (lambda p: zarr.open_group(p, mode="w", zarr_format=2).attrs.update(
        {"multiscales": [{"version": "0.3", "axes": ["y", "x"], "datasets": []}]}), "0.3"),
    (lambda p: p.mkdir(), "cannot open"),
])
def test_bad_volumes_get_clear_errors(tmp_path, make, match):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises(FM2SError, match=match):
        open_image(path)


@pytest.mark.parametrize("src,out", [
    ("a/cells.ome.zarr", "a/cells.fm2s.ome.zarr"), ("a/cells.zarr/", "a/cells.fm2s.zarr"),
    ("a/cells.ome.tif", "a/cells.fm2s.ome.zarr"), ("b/s.tiff", "b/s.fm2s.ome.zarr"),
    ("http://host/data/x.ome.zarr", "x.fm2s.ome.zarr")])
def test_default_output(tmp_path, monkeypatch, src, out):
    monkeypatch.chdir(tmp_path)
    image = SimpleNamespace(source=src, plane_file=None)
    assert default_output(image) == Path(out).absolute()


@pytest.mark.parametrize("shape,target", [((2, 75, 133), (2, 37, 66)), ((2, 75, 133), (2, 38, 67)),
                                          ((4, 9, 9), (2, 5, 5))])
def test_downsample_matches_any_level_shape(shape, target):
    data = np.random.default_rng(0).integers(0, 60000, shape).astype(np.uint16)
    small = downsample(da.from_array(data, chunks=(1, 32, 32)), target, np.uint16).compute()
    assert small.shape == target and small.dtype == np.uint16
    # every pixel: the mean of its block (factor from the shapes, rounded); a block past the
    # last row or column repeats the edge, rows and columns past the last block are dropped
    f = [round(a / b) for a, b in zip(shape, target)]
    index = [np.minimum(np.arange(n * k), size - 1) for n, k, size in zip(target, f, shape)]
    blocks = data[np.ix_(*index)].astype(np.float64).reshape(
        target[0], f[0], target[1], f[1], target[2], f[2])
    np.testing.assert_array_equal(small, np.rint(blocks.mean(axis=(1, 3, 5))))


def test_output_chunks_hold_one_plane():
    assert write_chunks((4, 2, 30, 2048, 700)) == (1, 1, 1, 1024, 700)


def test_aborted_output_leaves_nothing(tmp_path, stack_uint16):
    vol = open_image(write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5"))
    out = OutputImage(tmp_path / "out.ome.zarr", vol, np.uint16).create({"command": "x"})
    assert unfinished(tmp_path / "out.ome.zarr") == {"command": "x"}
    out.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.zarr"]


def _mark_written(out, level, region):
    for index in chunk_indices(region, out.arrays[level].chunks):
        out.done.mark(level, index)


def test_missing_chunks_stop_the_commit(tmp_path, stack_uint16):
    """A chunk that no task wrote (a worker writing elsewhere) fails the run, leaves the
    output unfinished, and names the level; a chunk written but not marked counts as missing."""
    vol = open_image(write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5"))
    out = OutputImage(tmp_path / "out.ome.zarr", vol, np.uint16).create()
    first = (slice(0, 1),) + tuple(slice(0, n) for n in stack_uint16.shape[1:])
    out.arrays[0][first] = stack_uint16[:1]  # only the first time point
    _mark_written(out, 0, first)
    out.arrays[1][:] = 0  # written, not marked
    with pytest.raises(FM2SError, match="level s0: 6 of 12 chunks missing; level s1: 12 of"):
        out.commit({})
    # still unfinished: no image metadata published, what was written kept for a resume
    assert unfinished(tmp_path / "out.ome.zarr") is not None
    attrs = zarr.open_group(tmp_path / "out.ome.zarr", mode="r").attrs.asdict()
    assert "ome" not in attrs and "multiscales" not in attrs
    assert read_state(tmp_path / "out.ome.zarr")["state"] == "running"
    kept = zarr.open_array(tmp_path / "out.ome.zarr" / "s0", mode="r")
    np.testing.assert_array_equal(kept[first], stack_uint16[:1])
    with pytest.raises(FM2SError, match="unfinished"):  # refused as an input
        refuse_unfinished(str(tmp_path / "out.ome.zarr"))
    out.arrays[0][:] = 0  # zeros are written too (no chunk is skipped as "empty")
    for level, array in enumerate(out.arrays):
        _mark_written(out, level, tuple(slice(0, n) for n in array.shape))
    assert out.missing_chunks() == []
    out.commit({})
    assert unfinished(tmp_path / "out.ome.zarr") is None
    assert read_state(tmp_path / "out.ome.zarr")["state"] == "complete"
    assert not (tmp_path / "out.ome.zarr" / ".fm2s-run").exists()
    assert open_image(tmp_path / "out.ome.zarr").data.shape == stack_uint16.shape


# --- sharded outputs (--shards) ---------------------------------------------------------


@pytest.fixture(scope="module")
def shard_volume(tmp_path_factory) -> Path:
    """A two-channel OME-Zarr 0.5 of 2 x 6 planes of 72 x 88, two levels."""
    from fm2s.sample import synthetic_stack

    noisy, _ = synthetic_stack((1, 2, 6, 72, 88), np.random.default_rng(11))
    return write_ngff(tmp_path_factory.mktemp("shards") / "in.ome.zarr", noisy, "tczyx", "0.5")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _pixels(path: Path) -> list[np.ndarray]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return [group[name][:] for name in ("s0", "s1")]


@pytest.mark.parametrize("shards", ["auto", "1,1,2,72,88"])
def test_a_sharded_output_holds_the_pixels_of_the_unsharded_one(shard_volume, quick_model,
                                                                tmp_path, shards):
    import zarr
    from ome_zarr_models.v05.image import Image as NgffImage

    from fm2s.jobs import apply

    plain, sharded = tmp_path / "plain.ome.zarr", tmp_path / "sharded.ome.zarr"
    apply(quick_model, shard_volume, plain)
    report = apply(quick_model, shard_volume, sharded, shards=shards)
    for a, b in zip(_pixels(plain), _pixels(sharded)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    level0 = zarr.open_array(str(sharded / "s0"), mode="r")
    expected = (1, 2, 6, 72, 88) if shards == "auto" else (1, 1, 2, 72, 88)
    assert level0.shards == expected and level0.chunks == (1, 1, 1, 72, 88)
    NgffImage.from_zarr(zarr.open_group(str(sharded), mode="r"))  # valid NGFF 0.5
    shard_files = [p for p in _files(sharded) if "/c/" in str(p)]
    chunk_files = [p for p in _files(plain) if "/c/" in str(p)]
    assert len(chunk_files) == 24
    assert len(shard_files) == (2 if shards == "auto" else 12)
    assert report.chunks_written == len(shard_files)  # counted in shards

    # read back by ome-zarr-py, an independent reader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(sharded)))()))
    assert np.array_equal(np.asarray(node.data[0]), _pixels(plain)[0])


def test_no_shard_is_written_by_two_tasks(quick_model, tmp_path, monkeypatch):
    """Blocks of a sharded output are whole shards: each shard is written by one task,
    in one piece; blocks that do not consist of whole shards are refused. The shards span
    two planes, the denoised blocks one: without the alignment two tasks would write each
    shard."""
    import threading

    import dask.array as da
    import zarr

    import fm2s.tiling
    from fm2s.jobs import apply
    from fm2s.sample import synthetic_stack
    from fm2s.tiling import check_aligned, chunk_indices, write_grid, write_tasks

    noisy, _ = synthetic_stack((1, 1, 2, 1100, 300), np.random.default_rng(2))
    source = write_ngff(tmp_path / "in.ome.zarr", noisy[0], "czyx", "0.5", levels=1)
    calls, lock = [], threading.Lock()
    write = fm2s.tiling._write_block

    def _write_block(block, target, done=None, level=0, block_info=None):
        region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
        with lock:
            calls.append((level, region, write_grid(target), target.shape))
        return write(block, target, done, level, block_info)

    monkeypatch.setattr(fm2s.tiling, "_write_block", _write_block)
    out = tmp_path / "out.ome.zarr"
    apply(quick_model, source, out, shards="1,2,1024,300")
    writers: dict[tuple, int] = {}
    for level, region, grid, shape in calls:
        assert grid == (1, 2, 1024, 300)
        for s, g, n in zip(region, grid, shape):  # whole shards only
            assert s.start % g == 0 and (s.stop % g == 0 or s.stop == n)
        for index in chunk_indices(region, grid):
            writers[(level, index)] = writers.get((level, index), 0) + 1
    assert len(writers) == 2 and set(writers.values()) == {1}  # 2 shards in y
    assert np.array_equal(zarr.open_array(str(out / "s0"), mode="r")[:],
                          _apply_plain(quick_model, source, tmp_path))

    target = zarr.open_array(str(out / "s0"), mode="r")
    for blocks in ((1, 1, 1024, 300), (1, 2, 512, 300)):  # half a shard in z, in y
        with pytest.raises(ValueError, match="whole write units"):
            write_tasks(da.zeros(target.shape, dtype="u2", chunks=blocks), target)
    with pytest.raises(ValueError, match="whole write units"):
        check_aligned(((1,), (2,), (1024, 76), (150, 150)), (1, 2, 1024, 300))
    check_aligned(((1,), (2,), (1024, 76), (300,)), (1, 2, 1024, 300))


def _apply_plain(model, source: Path, tmp_path: Path) -> np.ndarray:
    import zarr

    from fm2s.jobs import apply

    apply(model, source, tmp_path / "plain.ome.zarr")
    return zarr.open_array(str(tmp_path / "plain.ome.zarr" / "s0"), mode="r")[:]


def test_shards_are_refused_where_they_do_not_fit(shard_volume, quick_model, tmp_path):
    from fm2s.errors import ParameterError
    from fm2s.jobs import apply

    for shards, words in (("1,1,1,50,88", "multiple of the chunk"), ("1,1,72,88", "one size"),
                          ("big", "auto or one size")):
        with pytest.raises(ParameterError, match=words):
            apply(quick_model, shard_volume, tmp_path / "x.ome.zarr", shards=shards)
    v04 = write_ngff(tmp_path / "v04.ome.zarr", np.zeros((2, 64, 64), np.uint16), "zyx", "0.4",
                     levels=1)
    with pytest.raises(ParameterError, match="NGFF 0.5"):
        apply(quick_model, v04, tmp_path / "y.ome.zarr", shards="auto")
    assert not [p for p in tmp_path.iterdir() if p.name not in ("v04.ome.zarr",)]


#: apply with shards in a fresh interpreter that SIGKILLs itself after the n-th level-0
#: block written: argv = model source output shards n
KILLED_SHARDS = """
import sys
model, source, output, shards, KILL_AFTER = sys.argv[1:5] + [int(sys.argv[5])]
""" + KILL_AFTER_BLOCKS + """
from fm2s.jobs import apply
apply(model, source, output, shards=shards)
"""


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_per_shard_to_the_same_bytes(shard_volume, quick_model,
                                                                  tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import tree_bytes

    from fm2s.jobs import apply
    from fm2s.runs import Done

    shards = "1,1,2,72,88"
    reference = tmp_path / "ref.ome.zarr"
    apply(quick_model, shard_volume, reference, shards=shards)
    out = tmp_path / "out.ome.zarr"
    killed = subprocess.run([sys.executable, "-c", KILLED_SHARDS, str(quick_model),
                             str(shard_volume), str(out), shards, "3"], capture_output=True,
                            text=True, timeout=300, env=dict(os.environ))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    marked = Done(str(out / ".fm2s-run")).listing(0)
    assert len(marked) >= 3  # shards of level 0 (6 of them), each marked once written
    files = {key: (out / "s0" / "c" / key.replace(".", "/")).stat() for key in marked}
    report = apply(quick_model, shard_volume, out, shards=shards, resume=True)
    assert report.resumed and report.chunks_before == len(marked)
    assert report.chunks_written == 6 + 6 - len(marked)
    for key, st in files.items():  # a shard written before was not written again
        now = (out / "s0" / "c" / key.replace(".", "/")).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert tree_bytes(out) == tree_bytes(reference)
    import zarr

    assert zarr.open_array(str(out / "s0"), mode="r").shards == (1, 1, 2, 72, 88)
