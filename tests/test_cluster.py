"""Scale-out: a local cluster of worker processes and a separately started dask cluster give
the bytes of the threaded default."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tree_bytes, write_ngff
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.cluster import Runner

runner = CliRunner()


def _apply(model, src, out, *extra):
    res = runner.invoke(app, ["apply", str(model), str(src), "-o", str(out), "-q", "--provider",
                              "cpu", "--tile", "48", *map(str, extra)])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def volume(tmp_path, stack_uint16):
    return write_ngff(tmp_path / "in.ome.zarr", stack_uint16, "tczyx", "0.5", levels=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_threaded_runner_reports_every_task():
    import dask

    tasks = [dask.delayed(lambda i: i * i)(i) for i in range(5)]
    seen = []
    assert Runner(threads=2).run(tasks, seen.append) == [0, 1, 4, 9, 16]
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_local_worker_processes_give_the_same_bytes(tmp_path, volume, quick_model):
    _apply(quick_model, volume, tmp_path / "threads.ome.zarr")
    summary = _apply(quick_model, volume, tmp_path / "procs.ome.zarr", "--workers", "2")
    assert "2 workers" in summary
    assert tree_bytes(tmp_path / "procs.ome.zarr") == tree_bytes(tmp_path / "threads.ome.zarr")


def test_separate_scheduler_and_worker_processes_give_the_same_bytes(tmp_path, volume,
                                                                     quick_model):
    dask_cli = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    logs = open(tmp_path / "cluster.log", "w")
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=logs, stderr=logs, env=env)]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1",
                                       "--nworkers", "2", "--no-dashboard",
                                       "--local-directory", str(tmp_path / "dask-worker")],
                                      stdout=logs, stderr=logs, env=env))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        _apply(quick_model, volume, tmp_path / "threads.ome.zarr")
        summary = _apply(quick_model, volume, tmp_path / "cluster.ome.zarr", "--scheduler",
                         address)
        assert address in summary
        assert tree_bytes(tmp_path / "cluster.ome.zarr") == \
            tree_bytes(tmp_path / "threads.ome.zarr")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def test_unreachable_scheduler_is_one_line(tmp_path, volume, quick_model):
    res = runner.invoke(app, ["apply", str(quick_model), str(volume), "--scheduler",
                              f"tcp://127.0.0.1:{_free_port()}"])
    assert res.exit_code == 1 and res.output.startswith("error: cannot reach the dask scheduler")
    assert not (tmp_path / "in.fm2s.ome.zarr").exists()
