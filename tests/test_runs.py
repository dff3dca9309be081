"""Interrupted runs: the run state on disk, resuming, the output lock, signals, a full disk.

The killed runs are real processes that kill themselves (SIGKILL, SIGTERM, SIGINT) at a
chosen moment: a wrapper in the test's script, not in the package, counts the chunks
written (or the trainings started) and sends the signal.
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
from conftest import tree_bytes, two_channel_volume
from typer.testing import CliRunner

from fm2s.cli import app
from fm2s.errors import FM2SError
from fm2s.jobs import apply, info, train_and_apply
from fm2s.runs import Done, RunLock, lock_path, read_state, unfinished

#: a short training schedule (about a second a channel)
#: a short schedule and one training (these tests are about runs, not the choice)
QUICK = {"samples": 4, "warmup_steps": 1, "microscope": "measured"}

#: run in a fresh interpreter: argv = source output where n [apply-model]; ``where`` says
#: when the process signals itself: "training" (in the n-th training), "apply" (after the
#: n-th level-0 block written), "pyramid" (after the n-th level-1 block), "sigterm" and
#: "sigint" (the command line, signalled after the n-th level-0 block)
SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    import fm2s.model, fm2s.tiling
    source, output, where, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    count, lock = [0], threading.Lock()
    sig = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}.get(where, signal.SIGKILL)
    # Ctrl-C as in a terminal: a test run started in the background (``cmd &`` in a
    # script, nohup) hands its children SIGINT ignored, and Python keeps it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def hit():
        with lock:
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), sig)

    if where == "training":
        train = fm2s.model.train_model

        def train_model(planes, config, device, progress=None):
            hit()
            return train(planes, config, device, progress)

        fm2s.model.train_model = train_model
    else:
        write = fm2s.tiling._write_block
        wanted = 1 if where == "pyramid" else 0

        def _write_block(block, target, done=None, level=0, block_info=None):
            out = write(block, target, done, level, block_info)
            if level == wanted:
                hit()
            return out

        fm2s.tiling._write_block = _write_block
    if where in ("sigterm", "sigint"):
        from fm2s.cli import app
        app(["apply", sys.argv[5], source, "-o", output, "-q"], prog_name="fm2s-tile")
    else:
        from fm2s.jobs import train_and_apply
        train_and_apply(source, output, device="cpu", train_planes=3, samples=4,
                        warmup_steps=1, microscope="measured")
""")


def _run_script(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A two-channel OME-Zarr of 2 x 6 planes (one chunk each), two levels."""
    return two_channel_volume(tmp_path_factory.mktemp("vol") / "in.ome.zarr")


@pytest.fixture(scope="module")
def reference(volume, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "out.ome.zarr"
    train_and_apply(volume, out, device="cpu", train_planes=3, **QUICK)
    return out


def _attrs(path: Path) -> dict:
    """The output's fm2s metadata without what records when and how long."""
    fm2s = dict(read_state(path))
    for key in ("date", "resumed", "command"):
        fm2s.pop(key, None)
    fm2s["channels"] = [{k: v for k, v in c.items() if k != "train_seconds"}
                        for c in fm2s["channels"]]
    return fm2s


def _chunk_stats(out: Path, names: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of the chunk file of each chunk named ``level/key`` (default: every
    chunk marked as written in the output's run folder)."""
    import zarr

    group = zarr.open_group(out, mode="r")
    if names is None:
        done = Done(str(out / ".fm2s-run"))
        names = [f"{level}/{key}" for level in (0, 1) for key in done.listing(level)]
    stats = {}
    for name in names:
        level, key = name.split("/")
        array = group[f"s{level}"]
        index = tuple(int(i) for i in key.split("."))
        st = (out / f"s{level}" / array.metadata.encode_chunk_key(index)).stat()
        stats[name] = (st.st_ino, st.st_mtime_ns)
    return stats


def _no_leftovers(folder: Path) -> None:
    names = [p.name for p in folder.rglob("*")]
    assert not [n for n in names if ".part" in n or n.endswith(".fm2s-lock")
                or n == ".fm2s-run" or ".fm2s-work" in n], names


@pytest.mark.slow
@pytest.mark.parametrize("where, n", [("training", 2), ("apply", 2), ("apply", 6),
                                      ("apply", 11), ("pyramid", 3)],
                         ids=["training", "early", "middle", "late", "pyramid"])
def test_a_killed_run_resumes_to_the_same_bytes(volume, reference, tmp_path, where, n,
                                                monkeypatch):
    out = tmp_path / "out.ome.zarr"
    killed = _run_script(volume, out, where, n)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = unfinished(out)
    assert run is not None and lock_path(out).exists()  # the killed run's lock is left
    models = sorted(p.name for p in (out / ".fm2s-run" / "models").glob("*.onnx"))
    assert models == (["c0.onnx"] if where == "training" else ["c0.onnx", "c1.onnx"])
    finished = _chunk_stats(out)
    written = {"training": 0, "apply": n, "pyramid": 12 + n}[where]
    assert len(finished) >= written  # another thread may have finished one more

    res = CliRunner().invoke(app, ["train-and-apply", str(volume), "-o", str(out)])
    assert res.exit_code == 1 and "unfinished" in res.output and "--resume" in res.output
    assert "UNFINISHED" in CliRunner().invoke(app, ["info", str(out)]).output

    trained = []
    import fm2s.model

    train = fm2s.model.train_model
    monkeypatch.setattr(fm2s.model, "train_model",
                        lambda *a, **k: trained.append(1) or train(*a, **k))
    report = train_and_apply(volume, out, device="cpu", train_planes=3, resume=True, **QUICK)
    assert len(trained) == (1 if where == "training" else 0)  # kept models are reused
    assert report.resumed and report.chunks_before == len(finished)
    assert report.chunks_written == 24 - len(finished)
    assert any("taken over" in w for w in report.warnings)  # the stale lock
    after = _chunk_stats(out, list(finished))
    assert after == finished  # no finished chunk was written again
    assert tree_bytes(out) == tree_bytes(reference)
    assert _attrs(out) == _attrs(reference)
    assert read_state(out)["resumed"] == 1
    _no_leftovers(tmp_path)


def test_an_unfinished_output_is_reported_and_refused_as_input(volume, quick_model,
                                                               tmp_path):
    out = tmp_path / "out.ome.zarr"
    killed = _run_script(volume, out, "apply", 3)
    assert killed.returncode == -signal.SIGKILL
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "UNFINISHED" in res.output
    assert "level s0: 3 of 12 chunks written" in res.output or \
        "level s0: 4 of 12 chunks written" in res.output
    assert "--resume" in res.output
    for args in (["apply", str(quick_model), str(out), "-o", str(tmp_path / "b.ome.zarr")],
                 ["train-and-apply", str(out), "-o", str(tmp_path / "b.ome.zarr")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "unfinished fm2s-tile output" in lines[0], res.output
    assert not (tmp_path / "b.ome.zarr").exists()
    report = info(str(out))
    assert report.image is None and report.unfinished["levels"][0][2] == 12
    os.remove(lock_path(out))
    res = CliRunner().invoke(app, ["apply", str(quick_model), str(volume), "-o", str(out),
                                   "--overwrite", "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["info", str(out)])
    assert "fm2s-tile output, complete" in res.output
    _no_leftovers(tmp_path)


def test_resume_refuses_other_settings_and_a_complete_output(volume, quick_model, tmp_path):
    out = tmp_path / "out.ome.zarr"
    assert _run_script(volume, out, "apply", 2).returncode == -signal.SIGKILL
    res = CliRunner().invoke(app, ["train-and-apply", str(volume), "-o", str(out),
                                   "--resume", "--seed", "1"])
    assert res.exit_code == 1 and "other input or settings" in res.output
    assert "seed (0 then, 1 now)" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["apply", str(quick_model), str(volume), "-o", str(out),
                                   "--resume"])
    assert res.exit_code == 1 and "job ('train-and-apply' then, 'apply' now)" in res.output
    res = CliRunner().invoke(app, ["apply", str(quick_model), str(volume), "-o", str(out),
                                   "--resume", "--overwrite"])
    assert res.exit_code == 1 and "--resume" in res.output and "excludes overwrite" in res.output
    assert unfinished(out) is not None  # refusals change nothing
    apply(quick_model, volume, out, overwrite=True)
    with pytest.raises(FM2SError, match="complete already"):
        apply(quick_model, volume, out, resume=True)
    # resume without an unfinished output starts the run
    report = apply(quick_model, volume, tmp_path / "new.ome.zarr", resume=True)
    assert not report.resumed and report.chunks_before == 0
    _no_leftovers(tmp_path)


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from fm2s.runs import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_concurrent_run_is_refused_and_a_stale_lock_recovered(volume, quick_model,
                                                                 tmp_path):
    out = tmp_path / "out.ome.zarr"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = CliRunner().invoke(app, ["apply", str(quick_model), str(volume), "-o", str(out)])
        assert res.exit_code == 1
        assert "being written by another run (pid" in res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # left by the killed holder: stale
    report = apply(quick_model, volume, out)
    assert any("taken over" in w for w in report.warnings)
    assert read_state(out)["state"] == "complete"
    _no_leftovers(tmp_path)


def test_the_lock_is_exclusive_within_a_process_too(tmp_path):
    out = tmp_path / "x.ome.zarr"
    with RunLock(out):
        with pytest.raises(FM2SError, match="being written by another run"):
            RunLock(out).acquire()
    assert not lock_path(out).exists()
    with RunLock(out) as again:
        assert again.stale is None


@pytest.mark.parametrize("where, code, name", [("sigterm", 143, "SIGTERM"),
                                               ("sigint", 130, "SIGINT")])
def test_a_signal_stops_the_run_resumably_in_one_line(volume, quick_model, tmp_path, where,
                                                      code, name):
    out = tmp_path / "out.ome.zarr"
    res = _run_script(volume, out, where, 3, quick_model)
    assert res.returncode == code, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"interrupted: stopped by {name}")
    assert str(out) in lines[0] and "--resume" in lines[0]
    assert unfinished(out) is not None and not lock_path(out).exists()
    done = Done(str(out / ".fm2s-run")).listing(0)
    assert 3 <= len(done) < 12
    report = apply(quick_model, volume, out, resume=True)
    assert report.chunks_before == len(done)
    apply(quick_model, volume, tmp_path / "ref.ome.zarr")
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref.ome.zarr")
    _no_leftovers(tmp_path)


FULL_DISK = textwrap.dedent("""
    import resource, sys
    import fm2s.tiling
    write = fm2s.tiling._write_block

    def _write_block(block, target, done=None, level=0, block_info=None):
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))  # no file over 600 bytes now
        return write(block, target, done, level, block_info)

    fm2s.tiling._write_block = _write_block
    from fm2s.cli import app
    app(["apply", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "-q"], prog_name="fm2s-tile")
""")


def test_a_full_disk_names_the_path_and_resume_completes(volume, quick_model, tmp_path):
    """A file size limit (``ulimit -f``, set once the chunks are being written): writes
    fail as on a full disk (EFBIG)."""
    out = tmp_path / "out.ome.zarr"
    res = subprocess.run([sys.executable, "-c", FULL_DISK, str(quick_model), str(volume),
                          str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: file too large writing '")
    assert str(out / "s0") in lines[0] and "--resume" in lines[0]
    assert unfinished(out) is not None and not lock_path(out).exists()
    res = CliRunner().invoke(app, ["apply", str(quick_model), str(volume), "-o", str(out),
                                   "--resume", "-q"])
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    apply(quick_model, volume, tmp_path / "ref.ome.zarr")
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref.ome.zarr")
    _no_leftovers(tmp_path)


def test_a_failing_task_waits_for_the_others_and_leaves_a_resumable_output(
        volume, quick_model, tmp_path, monkeypatch):
    """A task that fails: the run waits for the running ones, keeps the output, names it."""
    import threading
    import time

    import fm2s.tiling

    write, calls, lock = fm2s.tiling._write_block, [0], threading.Lock()

    def failing(block, target, done=None, level=0, block_info=None):
        with lock:
            calls[0] += 1
            mine = calls[0]
        if mine == 2:
            raise OSError(28, "No space left on device", "somewhere")
        time.sleep(0.2)  # still writing when the failure arrives
        return write(block, target, done, level, block_info)

    monkeypatch.setattr(fm2s.tiling, "_write_block", failing)
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(FM2SError, match="no space left on the device writing 'somewhere'"):
        apply(quick_model, volume, out)
    marks = Done(str(out / ".fm2s-run")).listing(0)
    time.sleep(0.5)
    assert Done(str(out / ".fm2s-run")).listing(0) == marks  # nothing wrote after the error
    assert not lock_path(out).exists() and unfinished(out) is not None
    monkeypatch.setattr(fm2s.tiling, "_write_block", write)
    report = apply(quick_model, volume, out, resume=True)
    assert report.chunks_before == len(marks) and json.dumps(read_state(out))
    _no_leftovers(tmp_path)


def test_a_killed_png_output_resumes_from_its_hidden_zarr(tmp_path, quick_model):
    from conftest import read_image, write_image

    from fm2s.sample import synthetic_image

    noisy, _ = synthetic_image((72, 88), np.random.default_rng(4))
    source = write_image(tmp_path / "cells.png", noisy)
    out = tmp_path / "cells.fm2s.png"
    killed = _run_script(source, out, "apply", 1)  # killed once its one chunk is written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and unfinished(out, plane_file=True) is not None
    res = CliRunner().invoke(app, ["train-and-apply", str(source), "-o", str(out)])
    assert res.exit_code == 1 and "is unfinished" in res.output and "--resume" in res.output
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "UNFINISHED" in res.output
    assert "level 0: 1 of 1 chunks written" in res.output
    report = train_and_apply(source, out, device="cpu", train_planes=3, resume=True, **QUICK)
    assert report.resumed and report.chunks_before == 1 and report.chunks_written == 0
    reference = train_and_apply(source, tmp_path / "ref.png", device="cpu", train_planes=3,
                                **QUICK)
    assert reference.chunks_written == 1
    np.testing.assert_array_equal(read_image(out), read_image(tmp_path / "ref.png"))
    _no_leftovers(tmp_path)
