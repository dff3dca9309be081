"""Scale-out: a local cluster of worker processes and a separately started dask cluster give
the bytes of the threaded default, also when the workers run in another folder than the
command and the command is given relative paths."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
from conftest import tree_bytes, write_ngff
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.cluster import Runner
from fm2s.errors import ParameterError

runner = CliRunner()


def _apply(model, src, out, *extra) -> str:
    res = runner.invoke(app, ["apply", str(model), str(src), "-o", str(out), "-q", "--provider",
                              "cpu", "--tile", "48", *map(str, extra)])
    assert res.exit_code == 0, res.output
    return res.output


def _chunk_files(tree: dict[str, bytes]) -> list[str]:
    return [k for k in tree if Path(k).name not in ("zarr.json", ".zarray", ".zattrs",
                                                     ".zgroup")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def volume(tmp_path, stack_uint16) -> Path:
    return write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=2)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and 2 single-threaded worker processes started as separate programs
    (``python -m dask scheduler`` / ``worker``), in a folder of their own (their cwd).

    Yields ``(address, cwd)``; the cwd must stay empty (worker scratch and logs go elsewhere).
    """
    from distributed import Client

    cwd = tmp_path_factory.mktemp("workers-cwd")
    scratch = tmp_path_factory.mktemp("workers-scratch")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    logs = open(scratch / "cluster.log", "w")
    dask_cli = [sys.executable, "-m", "dask"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], cwd=cwd, stdout=logs, stderr=logs, env=env))
        procs.append(subprocess.Popen(
            [*dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "2",
             "--no-dashboard", "--local-directory", str(scratch / "dask")],
            cwd=cwd, stdout=logs, stderr=logs, env=env))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, cwd
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logs.close()


def test_threaded_runner_reports_every_task():
    tasks = [dask.delayed(lambda i: i * i)(i) for i in range(5)]
    seen = []
    assert Runner(threads=2).run(tasks, seen.append) == [0, 1, 4, 9, 16]
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_local_worker_processes_give_the_same_bytes(tmp_path, volume, quick_model):
    _apply(quick_model, volume, tmp_path / "threads.ome.zarr")
    before = dask.config.get("scheduler", None)
    summary = _apply(quick_model, volume, tmp_path / "procs.ome.zarr", "--workers", "2")
    assert "2 workers" in summary
    # the run's client does not stay dask's default scheduler for the caller
    assert dask.config.get("scheduler", None) == before
    threads = tree_bytes(tmp_path / "threads.ome.zarr")
    assert len(_chunk_files(threads)) == 2 * 12  # 2 levels of 12 planes
    assert tree_bytes(tmp_path / "procs.ome.zarr") == threads


def test_separate_scheduler_and_workers_give_the_same_bytes(tmp_path, volume, quick_model,
                                                            dask_cluster):
    address, workers_cwd = dask_cluster
    _apply(quick_model, volume, tmp_path / "threads.ome.zarr")
    summary = _apply(quick_model, volume, tmp_path / "cluster.ome.zarr", "--scheduler", address)
    assert address in summary and "2 workers" in summary
    assert tree_bytes(tmp_path / "cluster.ome.zarr") == tree_bytes(tmp_path / "threads.ome.zarr")
    assert list(workers_cwd.iterdir()) == []


def _write_input(folder: Path, kind: str, stack: np.ndarray) -> tuple[str, int]:
    """The input of kind ``kind`` in ``folder``: its name (a path relative to ``folder``)
    and the number of chunk files of its denoised copy."""
    if kind == "tiff":  # an ImageJ czyx stack: 6 planes, 1 level
        tifffile.imwrite(folder / "in.tif", stack[0].transpose(1, 0, 2, 3), imagej=True,
                         metadata={"axes": "ZCYX"})
        return "in.tif", 6
    write_ngff(folder / "in.ome.zarr", stack, "tczyx", kind, levels=2)
    return "in.ome.zarr", 2 * 12


@pytest.mark.parametrize("kind", ["0.4", "0.5", "tiff"])
def test_relative_paths_on_workers_in_another_folder(tmp_path, monkeypatch, stack_uint16,
                                                     quick_model, dask_cluster, kind):
    """Workers whose cwd is not the command's read the input and write the output where the
    command's relative paths point, every chunk of it, and write nothing in their own cwd."""
    address, workers_cwd = dask_cluster
    assert workers_cwd.resolve() != tmp_path.resolve()
    data = tmp_path / "data"
    data.mkdir()
    name, chunks = _write_input(data, kind, stack_uint16)
    shutil.copy(quick_model, data / "model.onnx")
    (data / "results").mkdir()
    _apply(quick_model, data / name, tmp_path / "threads.ome.zarr")

    monkeypatch.chdir(data)
    res = runner.invoke(app, ["apply", "model.onnx", name, "-o", "results/den.ome.zarr", "-q",
                              "--provider", "cpu", "--tile", "48", "--scheduler", address])
    assert res.exit_code == 0, res.output
    assert address in res.output
    out = data / "results" / "den.ome.zarr"
    threads = tree_bytes(tmp_path / "threads.ome.zarr")
    assert len(_chunk_files(threads)) == chunks
    assert tree_bytes(out) == threads  # every chunk file, byte for byte
    assert sorted(p.name for p in (data / "results").iterdir()) == ["den.ome.zarr"]
    assert list(workers_cwd.rglob("*")) == []


def test_unreachable_scheduler_is_one_line(tmp_path, volume, quick_model):
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    res = runner.invoke(app, ["apply", str(quick_model), str(volume), "--scheduler", address])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: --scheduler {address}: cannot reach a dask scheduler")
    assert time.perf_counter() - start < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.zarr"]


@pytest.mark.parametrize("address, problem", [
    ("foo", "no port"),
    ("tcp://", "no port"),
    ("tcp://host:notaport", "port 'notaport' is not a number from 1 to 65535"),
    (":::", "an IPv6 address needs brackets"),
    ("tcp://:8786", "no host"),
    ("tcp://127.0.0.1:99999", "port '99999' is not a number"),
    ("http://10.0.0.5:8786", "unknown protocol 'http'"),
    ("inproc://", "unknown protocol 'inproc'"),
])
def test_malformed_scheduler_address_is_one_line(tmp_path, quick_model, address, problem):
    """Refused before anything is opened or connected: fast, one line naming the flag."""
    from conftest import write_image

    image = write_image(tmp_path / "in.png", np.full((16, 24), 120, np.uint8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*")}
    start = time.perf_counter()
    for command in (["apply", str(quick_model)], ["train-and-apply"]):
        res = runner.invoke(app, [*command, str(image), "--scheduler", address])
        assert res.exit_code == 1
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in res.output, res.output
        assert lines[0].startswith(f"error: --scheduler {address}: {problem}")
        assert "tcp://10.0.0.5:8786" in lines[0]
    assert time.perf_counter() - start < 5
    assert {p: p.read_bytes() for p in tmp_path.rglob("*")} == before


def test_well_formed_scheduler_addresses_pass_the_check():
    from fm2s.cluster import check_cluster_options

    for address in ("tcp://10.0.0.5:8786", "10.0.0.5:8786", "node-3:8786", "tls://h.org:1",
                    "tcp://[::1]:8786", "ws://host:80", "TCP://Host:65535"):
        assert check_cluster_options(address, None) is None
        # the same address one mistake away is refused, naming the mistake
        host, _, port = address.rpartition(":")
        for wrong, problem in ((f"{host}:0", "port"), (f"{host}:{port}x", "port"),
                               (f"udp://{address.partition('://')[2] or address}",
                                "unknown protocol 'udp'")):
            with pytest.raises(ParameterError, match=problem):
                check_cluster_options(wrong, None)
        with pytest.raises(ParameterError, match="excludes workers"):
            check_cluster_options(address, 2)


def test_tls_scheduler_without_tls_settings_is_one_line(tmp_path, volume, quick_model):
    res = runner.invoke(app, ["apply", str(quick_model), str(volume), "--scheduler",
                              "tls://127.0.0.1:9"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith("error: --scheduler tls://127.0.0.1:9: cannot reach a dask "
                               "scheduler there")
    assert "TLS" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.zarr"]


def test_a_failed_connection_leaves_no_default_client():
    """distributed registers a client as dask's default before connecting; one that fails
    (TLS without settings) stayed registered, 'connecting', for the rest of the process:
    ``distributed.get_client()`` returned it, and a computation sent to it (a notebook's
    ``compute(scheduler="dask.distributed")``) waited for ever."""
    from distributed import Client, get_client

    from fm2s.cluster import runner as cluster_runner

    with pytest.raises(ParameterError, match="TLS"):
        with cluster_runner(scheduler="tls://127.0.0.1:9"):
            pass
    with pytest.raises(ValueError):
        Client.current(allow_global=True)
    with pytest.raises(ValueError):
        get_client()
    assert dask.config.get("scheduler", None) is None
    assert float(da.ones(4, chunks=2).sum().compute()) == 4.0


def test_an_unreachable_scheduler_is_found_before_training(tmp_path, volume, monkeypatch):
    """train-and-apply connects before it reads or trains anything."""
    import fm2s.cluster
    import fm2s.model

    def no_training(*args, **kwargs):
        raise AssertionError("trained before connecting to the scheduler")

    monkeypatch.setattr(fm2s.model, "train_model", no_training)
    monkeypatch.setattr(fm2s.cluster, "CONNECT_TIMEOUT", "2s")
    address = f"tcp://127.0.0.1:{_free_port()}"
    res = runner.invoke(app, ["train-and-apply", str(volume), "--scheduler", address])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith(f"error: --scheduler {address}: cannot reach a dask scheduler")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.zarr"]


@pytest.mark.slow
def test_jobqueue_jobs_give_the_same_bytes(tmp_path, volume, quick_model):
    """--cluster local: dask-jobqueue's local job class starts the workers as separate
    processes (one job each), with the jobqueue settings of the user's dask config."""
    scratch = tmp_path / "scratch"
    settings = {"jobqueue.local.cores": 1, "jobqueue.local.memory": "1GiB",
                "jobqueue.local.processes": 1, "jobqueue.local.local-directory": str(scratch),
                "jobqueue.local.death-timeout": 30}
    _apply(quick_model, volume, tmp_path / "threads.ome.zarr")
    with dask.config.set(settings):
        summary = _apply(quick_model, volume, tmp_path / "jobs.ome.zarr", "--cluster", "local",
                         "--workers", "2")
    assert "dask cluster" in summary, summary
    assert tree_bytes(tmp_path / "jobs.ome.zarr") == tree_bytes(tmp_path / "threads.ome.zarr")


@pytest.mark.parametrize("extra, words", [
    (["--cluster", "slurm"], "no dask-jobqueue settings for slurm (cores and memory not set)"),
    (["--cluster", "pbs", "--scheduler", "tcp://127.0.0.1:8786"], "excludes scheduler"),
])
def test_cluster_without_jobqueue_settings_is_one_line(tmp_path, volume, quick_model, extra,
                                                       words):
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        res = runner.invoke(app, ["apply", str(quick_model), str(volume), "-o",
                                  str(tmp_path / "out.ome.zarr"), "-q", *extra])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --cluster ") and words in lines[0], \
        res.output
    assert "jobqueue.yaml" in lines[0] or "scheduler" in words
    assert not (tmp_path / "out.ome.zarr").exists()
