"""Many images in one run: HCS plates, bioformats2raw layouts, folders of images.

Plates are written by ome-zarr-py (an independent writer) and the outputs validated by
ome-zarr-models and read back by ome-zarr-py's reader. Every field of a plate output must
equal a run of that field alone with the same seed, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import read_image, tree_bytes, write_image, write_ngff, write_plate
from typer.testing import CliRunner

from fm2s.batch import train_and_apply_many
from fm2s.cli import app
from fm2s.errors import FM2SError
from fm2s.jobs import apply, train_and_apply
from fm2s.layouts import open_collection
from fm2s.runs import read_state
from fm2s.sample import synthetic_image, synthetic_stack

runner = CliRunner()
QUICK = {"samples": 4, "warmup_steps": 1}  # a short schedule: these tests check plumbing
FIELDS = [f"{r}/{c}/{f}" for r in "AB" for c in "123" for f in "01"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _chunks(root: Path) -> dict[str, bytes]:
    """Every array chunk file under ``root`` (metadata left out: it holds dates)."""
    return {k: v for k, v in tree_bytes(root, skip_metadata=False).items()
            if Path(k).name not in ("zarr.json", ".zattrs", ".zgroup", ".zarray")}


def _times(root: Path, fields: list[str]) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for f in fields
            for p in sorted((root / f).rglob("*")) if p.is_file()}


def _validate_plate(path: Path, version: str):
    if version == "0.4":
        from ome_zarr_models.v04.hcs import HCS
    else:
        from ome_zarr_models.v05.hcs import HCS
    return HCS.from_zarr(zarr.open_group(path, mode="r"))


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def plate(request, tmp_path_factory) -> tuple[Path, str]:
    """A 2 x 3 wells x 2 fields plate of one-channel z-stacks (2 x 64 x 64 uint16)."""
    version = request.param
    path = tmp_path_factory.mktemp(f"plate{version}") / "plate.ome.zarr"
    return write_plate(path, version), version


@pytest.fixture(scope="module")
def plate_output(plate, tmp_path_factory) -> tuple[Path, object]:
    """The uninterrupted run over the whole plate."""
    src, _ = plate
    out = tmp_path_factory.mktemp("out") / "plate.fm2s.ome.zarr"
    report = train_and_apply_many(open_collection(str(src)), out, device="cpu",
                                  train_planes=2, **QUICK)
    return out, report


def test_a_plate_gives_a_valid_plate_of_the_same_fields(plate, plate_output, tmp_path):
    (src, version), (out, report) = plate, plate_output
    assert [r.name for r in report.rows] == FIELDS and not report.failed
    assert {r.status for r in report.rows} == {"done"} and report.trainings == 12
    hcs = _validate_plate(out, version)  # plate, wells and images, by ome-zarr-models
    assert hcs.n_wells == 6 and len(list(hcs.well_groups)) == 6
    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    meta = attrs.get("ome", attrs)
    src_attrs = zarr.open_group(src, mode="r").attrs.asdict()
    assert meta["plate"] == src_attrs.get("ome", src_attrs)["plate"]
    assert attrs["fm2s"]["state"] == "complete" and attrs["fm2s"]["images"] == FIELDS
    if version == "0.5":
        assert meta["version"] == "0.5" and "plate" not in attrs
    for field in ("A/1/0", "B/3/1"):  # a field alone, with the same seed: the same bytes
        alone = tmp_path / f"{field.replace('/', '_')}.ome.zarr"
        train_and_apply(src / field, alone, device="cpu", train_planes=2, **QUICK)
        image = json.loads(json.dumps(read_state(out / field)))
        assert image["source"] == str(src / field)
        assert _chunks(alone) == _chunks(out / field) and len(_chunks(alone)) == 4

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))  # ome-zarr-py opens it as a plate
    assert type(node.specs[0]).__name__ == "Plate"
    assert node.data[0].shape[-2:] == (128, 192)  # 2 x 3 wells of the first field


def test_info_lists_the_fields_and_what_would_be_done(plate):
    src, version = plate
    res = _invoke("info", src)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].endswith(f"HCS plate (NGFF {version}), 12 image(s)")
    assert [line.split()[0] for line in lines[1:13]] == FIELDS
    assert "12 training(s)" in lines[-1] and "--share-models 1" in lines[-1]
    res = _invoke("info", src, "--images", "B/3/*,A/1/0")
    assert res.exit_code == 0 and "3 image(s)" in res.output.splitlines()[0]
    res = _invoke("info", src, "--images", "C/*")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "--images C/*: selects no image" in res.output


def test_a_selection_writes_a_plate_of_the_selected_fields(plate, tmp_path, quick_model):
    src, version = plate
    out = tmp_path / "sel.ome.zarr"
    res = _invoke("apply", quick_model, src, "-o", out, "--images", "B/3/*,A/1/1", "-q")
    assert res.exit_code == 0, res.output
    assert "3 image(s): 3 done" in res.output
    hcs = _validate_plate(out, version)
    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    wells = attrs.get("ome", attrs)["plate"]["wells"]
    assert [w["path"] for w in wells] == ["A/1", "B/3"] and hcs.n_wells == 2
    well = zarr.open_group(out / "A/1", mode="r").attrs.asdict()
    assert [i["path"] for i in well.get("ome", well)["well"]["images"]] == ["1"]
    assert not (out / "A/1/0").exists() and not (out / "A/2").exists()


#: argv = source output n: a plate run that SIGKILLs itself once its n-th field is complete
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import fm2s.jobs
    from fm2s.batch import train_and_apply_many
    from fm2s.layouts import open_collection
    source, output, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count, one = [0], fm2s.jobs.train_and_apply

    def train_and_apply(*args, **kwargs):
        report = one(*args, **kwargs)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return report

    fm2s.jobs.train_and_apply = train_and_apply
    train_and_apply_many(open_collection(source), output, device="cpu", train_planes=2,
                         samples=4, warmup_steps=1)
""")


@pytest.mark.parametrize("n", [2, pytest.param(7, marks=pytest.mark.slow)])
def test_a_killed_plate_resumes_without_recomputing_complete_fields(plate, plate_output,
                                                                    tmp_path, n):
    (src, version), (reference, _) = plate, plate_output
    if version == "0.4":
        pytest.skip("resuming does not depend on the NGFF version: 0.5 is killed")
    out = tmp_path / "killed.ome.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(out), str(n)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = FIELDS[:n]
    assert all(read_state(out / f)["state"] == "complete" for f in done)
    assert not (out / FIELDS[n]).exists()
    before = _times(out, done)
    res = _invoke("info", out)
    assert res.exit_code == 0 and f"images complete: {n} of 12" in res.output, res.output
    with pytest.raises(FM2SError, match="is unfinished.*--resume"):
        train_and_apply_many(open_collection(str(src)), out, device="cpu", train_planes=2,
                             **QUICK)
    report = train_and_apply_many(open_collection(str(src)), out, device="cpu",
                                  train_planes=2, resume=True, **QUICK)
    assert [r.status for r in report.rows] == ["skipped"] * n + ["done"] * (12 - n)
    assert _times(out, done) == before  # no complete field written again
    assert _chunks(out) == _chunks(reference)
    _validate_plate(out, version)
    assert read_state(out)["state"] == "complete" and read_state(out)["resumed"] == 1


def test_a_damaged_chunk_fails_its_field_only_and_resume_finishes_it(tmp_path, quick_model):
    src = write_plate(tmp_path / "plate.ome.zarr", "0.5", rows="A", columns="12")
    chunk = src / "A/2/0/s0/c/0/1/0/0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"\x00garbage" * 8)
    out = tmp_path / "out.ome.zarr"
    res = _invoke("apply", quick_model, src, "-o", out, "-q")
    assert res.exit_code == 1
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "1 of 4 image(s) failed (A/2/0: cannot read chunk c/0/1/0/0" \
        in err[0] and "--resume" in err[0], res.output
    others = ["A/1/0", "A/1/1", "A/2/1"]
    assert all(read_state(out / f)["state"] == "complete" for f in others)
    assert read_state(out)["state"] == "running" and not (out / "A/2/0").exists()
    before = _times(out, others)
    chunk.write_bytes(good)  # repaired
    res = _invoke("apply", quick_model, src, "-o", out, "-q", "--resume")
    assert res.exit_code == 0, res.output
    assert "1 done, 3 complete before, 0 failed" in res.output
    assert _times(out, others) == before
    _validate_plate(out, "0.5")
    single = tmp_path / "single.ome.zarr"
    apply(quick_model, src / "A/2/0", single)
    assert _chunks(single) == _chunks(out / "A/2/0")


def test_shared_models_train_once_per_channel(tmp_path):
    src = write_plate(tmp_path / "plate.ome.zarr", "0.4", rows="A", columns="12",
                      shape=(2, 1, 64, 64))
    out = tmp_path / "shared.ome.zarr"
    report = train_and_apply_many(open_collection(str(src)), out, device="cpu",
                                  share_models=True, **QUICK)
    assert report.trainings == 2 and len(report.shared_models) == 2
    assert {r.model for r in report.rows} == {"shared model"}
    shas = [m["model_sha256"] for m in report.shared_models]
    for field in ("A/1/0", "A/2/1"):
        channels = read_state(out / field)["channels"]
        assert [c["model_sha256"] for c in channels] == shas
        # the shared models were in the run folder, removed: named by checksum only
        assert [c["model_file"] for c in channels] == [None, None]
    planes = report.shared_models[0]["training_planes"]
    assert len({p[0] for p in planes}) == 4  # drawn from every field
    # the record names what trained (auto: the candidate it chose) and why
    for m in report.shared_models:
        chosen = m["noise"]["chosen_name"]  # "measured" trains as microscope auto
        assert m["preset"] == (chosen if chosen != "measured" else "auto")
        assert f"chose {chosen}" in m["noise"]["decision"]
    _validate_plate(out, "0.4")
    assert not (out / ".fm2s-run").exists()


def _export(path: Path, version: str, shapes: list[tuple[int, ...]], listed: bool) -> Path:
    """A bioformats2raw layout: series of different shapes written by ome-zarr-py, the
    layout's root and OME group, an OME-XML."""
    fmt = 3 if version == "0.5" else 2
    root = zarr.open_group(path, mode="w", zarr_format=fmt)
    layout = {"bioformats2raw.layout": 3}
    root.attrs.put({"ome": {"version": "0.5", **layout}} if version == "0.5" else layout)
    rng = np.random.default_rng(2)
    for i, shape in enumerate(shapes):
        noisy, _ = synthetic_stack((1, 1, *shape), rng)
        write_ngff(path / str(i), noisy[0, 0], "zyx", version, levels=1)
    ome = root.require_group("OME")
    if listed:
        series = [str(i) for i in range(len(shapes))]
        ome.attrs.put({"ome": {"version": "0.5", "series": series}} if version == "0.5"
                      else {"series": series})
    (path / "OME" / "METADATA.ome.xml").write_text(
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        + "".join(f'<Image ID="Image:{i}"/>' for i in range(len(shapes))) + "</OME>")
    return path


@pytest.mark.parametrize(("version", "listed"), [("0.4", True), ("0.5", False)])
def test_every_series_of_a_bioformats2raw_layout(tmp_path, quick_model, version, listed):
    shapes = [(2, 64, 64), (1, 72, 96), (3, 64, 80)]
    src = _export(tmp_path / "export.zarr", version, shapes, listed)
    res = _invoke("info", src)
    assert res.exit_code == 0 and "bioformats2raw layout" in res.output and \
        "3 image(s)" in res.output, res.output
    out = tmp_path / "export.fm2s.zarr"
    res = _invoke("apply", quick_model, src, "-q")  # the default output
    assert res.exit_code == 0, res.output
    assert "3 image(s): 3 done" in res.output
    assert (out / "OME/METADATA.ome.xml").read_bytes() == \
        (src / "OME/METADATA.ome.xml").read_bytes()
    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    assert attrs.get("ome", attrs)["bioformats2raw.layout"] == 3
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    for i, shape in enumerate(shapes):
        node = next(iter(Reader(parse_url(str(out / str(i))))()))
        assert node.data[0].shape == shape
        single = tmp_path / f"s{i}.ome.zarr"
        apply(quick_model, src / str(i), single)
        assert _chunks(single) == _chunks(out / str(i))
    if version == "0.4":
        from ome_zarr_models.v04.bioformats2raw import BioFormats2Raw
    else:
        from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw
    BioFormats2Raw.from_zarr(zarr.open_group(out, mode="r"))
    res = _invoke("info", out)
    assert res.exit_code == 0 and "3 image(s)" in res.output, res.output


def _folder(path: Path, n: int = 3) -> Path:
    path.mkdir()
    rng = np.random.default_rng(4)
    for i in range(n):
        write_image(path / f"cap_{i}.png", synthetic_image((64, 72), rng)[0])
    (path / "notes.txt").write_text("not an image")
    return path


def test_a_folder_of_images_in_one_run(tmp_path):
    src = _folder(tmp_path / "caps")
    before = tree_bytes(src)
    report = train_and_apply_many(open_collection(str(src)), None, device="cpu", **QUICK)
    out = tmp_path / "caps.fm2s"
    assert [r.name for r in report.rows] == ["cap_0.png", "cap_1.png", "cap_2.png"]
    assert sorted(p.name for p in out.iterdir()) == [f"cap_{i}.fm2s.png" for i in range(3)]
    assert tree_bytes(src) == before
    alone = tmp_path / "alone.png"
    train_and_apply(src / "cap_1.png", alone, device="cpu", **QUICK)
    assert np.array_equal(read_image(alone), read_image(out / "cap_1.fm2s.png"))
    with pytest.raises(FM2SError, match="exists: pass --resume"):
        train_and_apply_many(open_collection(str(src)), None, device="cpu", **QUICK)
    report = train_and_apply_many(open_collection(str(src)), None, device="cpu",
                                  resume=True, **QUICK)
    assert {r.status for r in report.rows} == {"skipped"}


def test_a_glob_and_a_list_write_beside_their_inputs(tmp_path, quick_model):
    src = _folder(tmp_path / "caps")
    res = _invoke("apply", quick_model, src / "cap_*.png", "--images", "cap_[01].png", "-q")
    assert res.exit_code == 0, res.output
    assert (src / "cap_0.fm2s.png").is_file() and (src / "cap_1.fm2s.png").is_file()
    assert not (src / "cap_2.fm2s.png").exists()
    res = _invoke("apply", quick_model, src / "cap_0.png", src / "cap_2.png", "-q")
    assert res.exit_code == 1 and "cap_0.fm2s.png' (of cap_0.png) exists" in res.output
    assert not (src / "cap_2.fm2s.png").exists()  # refused before any work
    res = _invoke("apply", quick_model, src / "cap_0.png", src / "cap_2.png", "-q", "--resume")
    assert res.exit_code == 0 and "1 done, 1 complete before" in res.output, res.output


def test_bad_collection_input_is_one_line(tmp_path, quick_model):
    src = _folder(tmp_path / "caps")
    res = _invoke("apply", quick_model, tmp_path / "none_*.png", "-q")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no image matches" in \
        res.output
    res = _invoke("train-and-apply", src, "--preview", tmp_path / "p.png", "-q")
    assert res.exit_code == 1 and "--preview" in res.output and res.output.count("\n") == 1
    res = _invoke("train-and-apply", src / "cap_0.png", "--share-models", "-q")
    assert res.exit_code == 1 and "--share-models" in res.output
    res = _invoke("apply", quick_model, src, "--tile", 3, "-q")  # refused at the first image
    assert res.exit_code == 1 and res.output.startswith("error: --tile 3: too small")
    assert res.output.count("\n") == 1
    assert not list(tmp_path.glob("caps.fm2s*")) and not list(tmp_path.glob(".caps*"))


def test_a_plate_over_http_is_listed_from_its_metadata(tmp_path, http_server, quick_model):
    root, url = http_server  # a plain http server: no directory listing is used
    write_plate(root / "plate.ome.zarr", "0.4", rows="A", columns="12")
    res = _invoke("info", f"{url}/plate.ome.zarr")
    assert res.exit_code == 0, res.output
    assert [line.split()[0] for line in res.output.splitlines()[1:5]] == \
        ["A/1/0", "A/1/1", "A/2/0", "A/2/1"]
    out = tmp_path / "local.ome.zarr"
    res = _invoke("apply", quick_model, f"{url}/plate.ome.zarr", "-o", out, "--images",
                  "A/2/*", "-q")
    assert res.exit_code == 0, res.output
    _validate_plate(out, "0.4")
    single = tmp_path / "single.ome.zarr"
    apply(quick_model, root / "plate.ome.zarr/A/2/1", single)
    assert _chunks(single) == _chunks(out / "A/2/1")


def test_models_of_many_images_trained_together(tmp_path):
    """batched=True (CUDA's default; on a CPU opt-in: one at a time is faster there): one
    program for the 3 images' models, each output that of its image alone up to float
    rounding, each row and channel report saying so; a broken image fails in its own row."""
    from fm2s.cli import format_batch

    src = _folder(tmp_path / "caps")
    (src / "cap_9.png").write_bytes(b"not a png")
    # measured: one synthesis and schedule for all three (auto's winners batch only where
    # they share their network shape and schedule: tests/test_grouped.py)
    report = train_and_apply_many(open_collection(str(src)), tmp_path / "out", device="cpu",
                                  batched=True, microscope="measured", **QUICK)
    assert [r.status for r in report.rows] == ["done", "done", "done", "failed"]
    assert format_batch(report).count("trained, 3 models at once") == 3
    assert [r.report.channels[0].batched for r in report.rows[:3]] == [3, 3, 3]
    for i in range(3):
        alone = tmp_path / f"alone{i}.png"
        single = train_and_apply(src / f"cap_{i}.png", alone, device="cpu",
                                 microscope="measured", **QUICK)
        assert single.channels[0].batched == 1
        a = read_image(alone).astype(np.int64)
        b = read_image(tmp_path / "out" / f"cap_{i}.fm2s.png").astype(np.int64)
        assert np.abs(a - b).max() <= 2 and np.mean(a != b) < 0.01


def test_models_trained_together_in_chunks(tmp_path, monkeypatch):
    """At most MAX_MODELS models are read and trained at once: 3 images with a cap of 2
    train as 2 + 1 (a model alone trains exactly as alone)."""
    import fm2s.grouped

    monkeypatch.setattr(fm2s.grouped, "MAX_MODELS", 2)
    src = _folder(tmp_path / "caps")
    report = train_and_apply_many(open_collection(str(src)), tmp_path / "out", device="cpu",
                                  batched=True, microscope="measured", **QUICK)
    assert [r.report.channels[0].batched for r in report.rows] == [2, 2, 1]
    alone = tmp_path / "alone.png"
    train_and_apply(src / "cap_2.png", alone, device="cpu", microscope="measured", **QUICK)
    assert np.array_equal(read_image(alone), read_image(tmp_path / "out" / "cap_2.fm2s.png"))
