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
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_bytes, write_ngff
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.jobs import apply, info, train_and_apply
from fm2s.runs import read_state
from fm2s.sample import synthetic_stack
from fm2s.stores import check_storage_options, is_url, location

#: a short training schedule (about a second a channel)
QUICK = {"samples": 4, "warmup_steps": 1}


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A two-channel OME-Zarr 0.5 of 2 x 6 planes (one chunk each), two levels."""
    noisy, _ = synthetic_stack((1, 2, 6, 72, 88), np.random.default_rng(3))
    return write_ngff(tmp_path_factory.mktemp("vol") / "in.ome.zarr", noisy, "tczyx", "0.5")


@pytest.fixture(scope="module")
def local_run(volume, tmp_path_factory) -> Path:
    """The local-to-local run."""
    out = tmp_path_factory.mktemp("local") / "out.ome.zarr"
    train_and_apply(volume, out, device="cpu", train_planes=3, **QUICK)
    return out


@pytest.fixture(scope="module")
def s3_input(s3, volume) -> str:
    s3.bucket("fm2s-in")
    return s3.upload(volume, "s3://fm2s-in/stack/in.ome.zarr")


def _fm2s(path) -> dict:
    """An output's fm2s metadata without what records the run (when, where, how long)."""
    state = dict(read_state(location(path)))
    for key in ("date", "resumed", "command", "source"):
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
    assert check_storage_options('{"anon": true}') == {"anon": True}
    with pytest.raises(Exception, match="JSON"):
        check_storage_options("{anon: true}")
    res = CliRunner().invoke(app, ["info", "s3://b/x.ome.zarr", "--storage-options", "[1]"])
    assert res.exit_code == 1 and res.output.startswith("error: --storage-options [1]")
    assert len(res.output.strip().splitlines()) == 1


def test_train_and_apply_s3_to_s3_writes_the_bytes_of_a_local_run(s3, s3_input, local_run,
                                                                   tmp_path):
    s3.bucket("fm2s-out")
    url = "s3://fm2s-out/denoised/stack.fm2s.ome.zarr"
    report = train_and_apply(s3_input, url, device="cpu", train_planes=3,
                             storage_options=s3.json, **QUICK)
    assert report.output == url and report.source == s3_input
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
