"""Object storage (:mod:`fm2s.stores`): inputs and outputs on a real local S3 server
(moto, started by the session fixture ``s3``), the same bytes as a local run, resuming a
killed run without writing a finished chunk again, and one-line errors for wrong
credentials, a missing bucket and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import KILL_AFTER_BLOCKS, tree_bytes, two_channel_volume
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.jobs import apply, info, train_and_apply
from fm2s.runs import read_state
from fm2s.stores import check_storage_options, is_url, location

#: a short training schedule (about a second a channel)
QUICK = {"samples": 4, "warmup_steps": 1}


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A two-channel OME-Zarr 0.5 of 2 x 6 planes (one chunk each), two levels."""
    return two_channel_volume(tmp_path_factory.mktemp("vol") / "in.ome.zarr")


@pytest.fixture(scope="module")
def local_run(volume, tmp_path_factory) -> Path:
    """The local-to-local run."""
    out = tmp_path_factory.mktemp("local") / "out.ome.zarr"
    # measured: one training (these tests are about stores and runs, not the choice)
    train_and_apply(volume, out, device="cpu", train_planes=3, microscope="measured", **QUICK)
    return out


@pytest.fixture(scope="module")
def s3_input(s3, volume) -> str:
    s3.bucket("fm2s-in")
    return s3.upload(volume, "s3://fm2s-in/stack/in.ome.zarr")


def _fm2s(path) -> dict:
    """An output's fm2s metadata without what records the run (when, where, how long)."""
    state = dict(read_state(location(path)))
    for key in ("date", "resumed", "command", "source", "scheduler"):
        state.pop(key, None)
    state["channels"] = [{k: v for k, v in c.items() if k != "train_seconds"}
                         for c in state["channels"]]
    return state


def _same_as_local(s3, url: str, local: Path, tmp_path: Path) -> None:
    """Every chunk and metadata file at ``url`` equals the local output's (the group's
    zarr.json compared without the run's date and source)."""
    copy = s3.download(url, tmp_path / "copy.ome.zarr")
    assert tree_bytes(copy) == tree_bytes(local)
    assert sorted(tree_bytes(copy, skip_metadata=False)) == sorted(
        tree_bytes(local, skip_metadata=False))
    assert _fm2s(copy) == _fm2s(local)
    attrs = {k: v for k, v in json.loads((copy / "zarr.json").read_text())["attributes"].items()
             if k != "fm2s"}
    assert attrs == {k: v for k, v in json.loads((local / "zarr.json").read_text())[
        "attributes"].items() if k != "fm2s"}


def test_urls_and_storage_options_are_recognised():
    assert is_url("s3://bucket/a.ome.zarr") and is_url("https://host/a.zarr")
    assert not is_url("a.ome.zarr") and not is_url("/data/s3:/x")
    assert location("file:///data/a.zarr") == Path("/data/a.zarr")
    assert location("s3://bucket/a.zarr/", {"anon": True}).storage_options["anon"] is True
    with pytest.raises(Exception, match="no fsspec file system for 'nosuchfs://'"):
        location("nosuchfs://bucket/a.zarr")
    assert check_storage_options('{"anon": true}') == {"anon": True}
    with pytest.raises(Exception, match="JSON"):
        check_storage_options("{anon: true}")
    res = CliRunner().invoke(app, ["info", "s3://b/x.ome.zarr", "--storage-options", "[1]"])
    assert res.exit_code == 1 and res.output.startswith("error: --storage-options [1]")
    assert len(res.output.strip().splitlines()) == 1


def test_train_and_apply_s3_to_s3_writes_the_bytes_of_a_local_run(s3, s3_input, local_run,
                                                                   tmp_path, monkeypatch):
    """The command as a user types it (with the test's short training schedule)."""
    import fm2s.jobs

    config_for = fm2s.jobs.config_for
    monkeypatch.setattr(fm2s.jobs, "config_for",
                        lambda *a, **k: config_for(*a, **{**k, **QUICK}))
    s3.bucket("fm2s-out")
    url = "s3://fm2s-out/denoised/stack.fm2s.ome.zarr"
    res = CliRunner().invoke(app, ["train-and-apply", s3_input, "-o", url, "--storage-options",
                                   s3.json, "--device", "cpu", "--train-planes", "3",
                                   "--microscope", "measured", "-q"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{s3_input} -> {url}: OME-Zarr")
    assert "warning" not in res.output.lower()
    _same_as_local(s3, url, local_run, tmp_path)
    assert not [k for k in s3.keys() if "fm2s-lock" in k or ".fm2s-run" in k]
    written = info(url, storage_options=s3.options)
    assert written.written_by["state"] == "complete"

    # read back from S3 by ome-zarr-py, an independent reader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=s3.options, read_only=True)
    node = next(iter(Reader(parse_url(store))()))
    level0 = np.asarray(node.data[0])
    assert level0.shape == (1, 2, 6, 72, 88) and level0.dtype == np.uint16
    import zarr

    assert np.array_equal(level0, zarr.open_array(str(local_run / "s0"), mode="r")[:])


@pytest.mark.slow
def test_apply_with_two_workers_s3_to_s3_writes_the_bytes_of_a_local_run(s3, s3_input, volume,
                                                                          quick_model, tmp_path):
    local = tmp_path / "local.ome.zarr"
    apply(quick_model, volume, local)
    s3.bucket("fm2s-apply")
    url = "s3://fm2s-apply/stack.fm2s.ome.zarr"
    res = CliRunner().invoke(app, ["apply", str(quick_model), s3_input, "-o", url, "--workers",
                                   "2", "--storage-options", s3.json, "-q"])
    assert res.exit_code == 0, res.output
    assert "2 workers" in res.output and f"-> {url}" in res.output
    assert "warning" not in res.output.lower()
    _same_as_local(s3, url, local, tmp_path)


#: run in a fresh interpreter: argv = source output storage-options n; SIGKILLs itself
#: after the n-th level-0 block written
KILLED = """
import sys
source, output, options, KILL_AFTER = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
""" + KILL_AFTER_BLOCKS + """
from fm2s.jobs import train_and_apply
train_and_apply(source, output, device="cpu", train_planes=3, samples=4, warmup_steps=1,
                storage_options=options, microscope="measured")
"""


@pytest.mark.slow
def test_a_killed_s3_run_resumes_to_the_same_bytes_without_rewriting_a_chunk(
        s3, s3_input, local_run, tmp_path, monkeypatch):
    bucket = s3.bucket("fm2s-resume", versioned=True)  # every write of a key is kept
    url = f"s3://{bucket}/stack.fm2s.ome.zarr"
    killed = subprocess.run([sys.executable, "-c", KILLED, s3_input, url, s3.json, "5"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = s3.keys()
    marked = {k.rsplit("/", 2)[-2:][0] + "/" + k.rsplit("/", 1)[-1] for k in before
              if "/.fm2s-run/done/" in k}
    assert len([m for m in marked if m.startswith("0/")]) >= 5
    assert any(k.endswith(".stack.fm2s.ome.zarr.fm2s-lock") for k in before)
    res = CliRunner().invoke(app, ["info", url, "--storage-options", s3.json])
    assert res.exit_code == 0 and "UNFINISHED" in res.output, res.output

    res = CliRunner().invoke(app, ["train-and-apply", s3_input, "-o", url, "--storage-options",
                                   s3.json])
    assert res.exit_code == 1 and "--resume" in res.output

    import fm2s.model

    trained = []
    train = fm2s.model.train_model
    monkeypatch.setattr(fm2s.model, "train_model",
                        lambda *a, **k: trained.append(1) or train(*a, **k))
    report = train_and_apply(s3_input, url, device="cpu", train_planes=3, resume=True,
                             storage_options=s3.options, microscope="measured", **QUICK)
    assert not trained  # the models kept on S3 are reused
    assert report.resumed and report.chunks_before == len(marked)
    assert report.chunks_written == 24 - len(marked)
    assert any("taken over" in w for w in report.warnings)
    after = s3.keys()
    prefix = f"{bucket}/stack.fm2s.ome.zarr/"
    for mark in marked:  # a chunk marked as written was not written again
        level, key = mark.split("/")
        chunk = f"{prefix}s{level}/c/" + key.replace(".", "/")
        assert after[chunk] == 1, chunk
    chunks = [k for k in after if k.startswith(prefix) and "/c/" in k]
    assert len(chunks) == 24 and sum(after[k] for k in chunks) <= 24 + 2  # killed mid-block
    _same_as_local(s3, url, local_run, tmp_path)
    assert not [k for k in s3.fs().find(bucket) if "fm2s-lock" in k or ".fm2s-run" in k]


def _objects(s3) -> dict[str, int]:
    return s3.keys()


@pytest.mark.parametrize("case", ["credentials", "bucket", pytest.param(
    "endpoint", marks=pytest.mark.slow)])  # botocore retries the connection (about 14 s)
def test_store_problems_are_one_line_errors_before_training(s3, s3_input, case, monkeypatch,
                                                            tmp_path):
    import fm2s.model

    trained = []
    monkeypatch.setattr(fm2s.model, "train_model", lambda *a, **k: trained.append(1))
    options = dict(s3.options)
    output = "s3://fm2s-in/out/x.fm2s.ome.zarr"
    if case == "credentials":
        options.update(key="AKIAWRONGKEY000000", secret="wrong")
    elif case == "bucket":
        output = "s3://fm2s-no-such-bucket/x.fm2s.ome.zarr"
    else:
        import socket

        with socket.socket() as sock:  # a port where nothing listens
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        options["endpoint_url"] = f"http://127.0.0.1:{port}"
    before = _objects(s3)
    res = CliRunner().invoke(app, ["train-and-apply", s3_input, "-o", output,
                                   "--storage-options", json.dumps(options), "-q"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and "arning" not in res.output
    expected = {"credentials": "denied", "bucket": "does not exist",
                "endpoint": "cannot reach"}[case]
    assert expected in lines[0], lines[0]
    assert not trained and _objects(s3) == before
    assert not list(tmp_path.iterdir())


def test_any_fsspec_protocol_is_an_output(volume, quick_model, tmp_path):
    """A protocol other than S3 (fsspec's in-memory file system, a synchronous one): the
    bytes of the local output."""
    import fsspec

    local = tmp_path / "local.ome.zarr"
    apply(quick_model, volume, local)
    url = "memory://fm2s-test/out.ome.zarr"
    report = apply(quick_model, volume, url)
    assert report.output == url and info(url).written_by["state"] == "complete"
    fs = fsspec.filesystem("memory")
    try:
        copy = tmp_path / "copy.ome.zarr"
        fs.get("/fm2s-test/out.ome.zarr/", str(copy), recursive=True)
        assert tree_bytes(copy) == tree_bytes(local)
    finally:
        fs.rm("/fm2s-test", recursive=True)


def test_an_existing_s3_output_is_refused_then_overwritten(s3, s3_input, quick_model):
    s3.bucket("fm2s-again")
    url = "s3://fm2s-again/out.ome.zarr"
    base = ["apply", str(quick_model), s3_input, "-o", url, "--storage-options", s3.json, "-q"]
    assert CliRunner().invoke(app, base).exit_code == 0
    keys = s3.keys()
    for extra, words in (([], "exists"), (["--resume"], "complete already")):
        res = CliRunner().invoke(app, base + extra)
        assert res.exit_code == 1 and words in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert s3.keys() == keys  # nothing written
    res = CliRunner().invoke(app, base + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert info(url, storage_options=s3.options).written_by["state"] == "complete"
