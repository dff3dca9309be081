"""The on-disk state of a run, so that an interrupted run can be resumed.

An output is written in place. While a run writes it, its zarr group holds only
``{"fm2s": {"state": "running", "run": {...}}}`` (no image metadata, so no viewer takes it
for an image) and a hidden folder :data:`RUN_DIR` that holds the run's trained models and
one empty marker file per output chunk written (:class:`Done`). The image metadata and
``"state": "complete"`` are written last, then the run folder is removed. A PNG or TIFF
output is assembled in a hidden zarr beside it (:func:`work_path`) and renamed into place.

One run writes an output at a time: :class:`RunLock` holds an exclusive ``flock`` on a
lock file beside the output; the kernel drops it when its process dies, so a lock file
left by a killed run is recognised as stale and taken over. On object storage (S3) there
is no such lock: the lock object beside the output names the run that writes it, and a
run that finds one goes on (it cannot tell a live run from a killed one) and says so.

Every path here is a :func:`fm2s.stores.location`: a local path or a URL.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FM2SError, ParameterError
from .stores import check_store, is_http, is_remote, listing, location, store_problem
from .stores import remove as remove_location

#: the hidden folder of a running output that holds its models and chunk markers
RUN_DIR = ".fm2s-run"

RUNNING, COMPLETE = "running", "complete"


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; the message says how to go on."""

    def __init__(self, message: str = "", signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name


def _path(path):
    """A local path or a URL's path object (kept as it is)."""
    return path if is_remote(path) else Path(path)


def work_path(output: Path, plane_file: bool) -> Path:
    """Where an output's zarr is written: the output itself (OME-Zarr) or, for a PNG or
    TIFF output, a hidden zarr beside it."""
    output = _path(output)
    return output.with_name(f".{output.name}.fm2s-work.zarr") if plane_file else output


def lock_path(output: Path) -> Path:
    """The lock file of an output (beside it)."""
    output = _path(output)
    return output.with_name(f".{output.name}.fm2s-lock")


def part_path(output: Path) -> Path:
    """The hidden file a PNG or TIFF output is written to before its rename."""
    output = _path(output)
    return output.with_name(f".{output.name}.part")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (on object
    storage, where a write is atomic: directly)."""
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove(path: Path) -> None:
    """Remove a file or a folder tree (nothing if it is not there)."""
    remove_location(_path(path))


def read_state(zarr_path: Path) -> dict | None:
    """The ``fm2s`` attributes of a zarr group (None: not a zarr group, or none there)."""
    zarr_path = _path(zarr_path)
    for name in ("zarr.json", ".zattrs"):
        meta = zarr_path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except (OSError, ValueError):
                return None
            if name == "zarr.json":
                attrs = attrs.get("attributes", {}) if isinstance(attrs, dict) else {}
            state = attrs.get("fm2s") if isinstance(attrs, dict) else None
            return state if isinstance(state, dict) else None
    return None


def unfinished(output: Path, plane_file: bool = False) -> dict | None:
    """The run record of an unfinished output at ``output`` (None if there is none)."""
    state = read_state(work_path(output, plane_file))
    if state is not None and state.get("state") == RUNNING:
        return state.get("run", {})
    return None


def check_settings(output: Path, before: dict, now: dict) -> None:
    """Refuse to resume ``output``, started with the settings ``before``, with others."""
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if changed:
        words = ", ".join("the input's pixels" if k == "input_stats_sha256" else
                          "the images selected" if k == "images" else
                          f"{k} ({before.get(k)!r} then, {now.get(k)!r} now)"
                          for k in changed)
        raise FM2SError(f"output '{output}' was started with other input or settings "
                        f"({words}): rerun with the same input and options to resume it, "
                        "or pass --overwrite instead to start over")


def refuse_unfinished(source, storage_options: dict | None = None) -> None:
    """Refuse an unfinished output as input (and, on a remote store, a missing bucket or
    wrong credentials)."""
    path = location(source, storage_options)
    if is_remote(path):
        if is_http(path):
            return
        check_store(path, "input")
    if path.is_dir() and unfinished(path) is not None:
        raise FM2SError(f"'{source}' is an unfinished fm2s-tile output (its run was "
                        "interrupted): complete it by rerunning the command that wrote it "
                        "with --resume, or remove it")


@dataclass(frozen=True)
class Done:
    """Markers of the output chunks written: ``<run folder>/done/<level>/<chunk key>``.

    A marker is made after its chunk is written, so a chunk with a marker is complete;
    picklable, so that tasks on dask workers mark what they write. ``folder`` is a local
    path or a URL (then with its ``storage_options``).
    """

    folder: str
    storage_options: dict | None = field(default=None, compare=False)

    def _dir(self, level: int) -> Path:
        return location(self.folder, self.storage_options) / "done" / str(level)

    @staticmethod
    def key(index: tuple[int, ...]) -> str:
        """The marker name of the chunk at grid position ``index``."""
        return ".".join(map(str, index)) or "0"

    def mark(self, level: int, index: tuple[int, ...]) -> None:
        """Record the chunk at ``index`` of level ``level`` as written."""
        folder = self._dir(level)
        if is_remote(folder):  # no folders on object storage: an empty object
            (folder / self.key(index)).write_bytes(b"")
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.key(index)).touch()

    def is_done(self, level: int, index: tuple[int, ...]) -> bool:
        """Whether the chunk at ``index`` of ``level`` was written."""
        return (self._dir(level) / self.key(index)).exists()

    def listing(self, level: int) -> set[str]:
        """Marker names of the chunks of ``level`` written so far."""
        return listing(self._dir(level))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on an output, held for a run (a context manager).

    Parameters
    ----------
    output
        The output path (the lock file lies beside it).

    Attributes
    ----------
    stale
        What the lock file of a killed run said, when one was found and taken over.
    """

    def __init__(self, output: Path) -> None:
        self.output = _path(output)
        self.path = lock_path(self.output)
        self.stale: str | None = None
        self._fd: int | None = None
        self._object = False

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return (f"pid {info['pid']} on {info['host']}, since {info['since']}")
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> RunLock:
        """Take the lock; refuse when another live run holds it."""
        if is_remote(self.output):
            return self._acquire_object()
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise FM2SError(f"output '{self.output}' is being written by another run "
                                    f"({self._holder()}): wait for it to end, or choose "
                                    "another output") from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # no flock: trust the pid
                    return self._acquire_by_pid()
                raise
            try:  # the file may have been removed by the run that held it: retry
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            self._fd = fd
            old = os.read(fd, 4096)
            if old.strip():
                self.stale = self._holder()
            self._write_info()
            return self
        raise FM2SError(f"could not lock output '{self.output}' ({self.path}): try again")

    def _acquire_by_pid(self) -> RunLock:
        if self.path.exists():
            try:
                info = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                info = {}
            if (info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
                    and _pid_alive(info["pid"]) and info["pid"] != os.getpid()):
                raise FM2SError(f"output '{self.output}' is being written by another run "
                                f"({self._holder()}): wait for it to end, or choose another "
                                "output")
            self.stale = self._holder() if info else None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_info()
        return self

    def _acquire_object(self) -> RunLock:
        """Object storage has no flock: write the lock object, and note one found (the
        run it names was killed, or still writes: that cannot be told here)."""
        try:
            if self.path.exists():
                self.stale = (f"{self._holder()}; on object storage fm2s-tile cannot tell "
                              "whether that run still writes")
            self.path.write_text(json.dumps(self._info()))
        except OSError as exc:
            problem = store_problem(exc, str(self.output))
            raise FM2SError(problem or f"cannot write the lock object '{self.path}' "
                            f"({exc}): check the URL and --storage-options") from None
        self._object = True
        return self

    @staticmethod
    def _info() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _write_info(self) -> None:
        info = self._info()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self._object:
            self._object = False
            remove_location(self.path)
            return
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def kept_model(folder: Path, channel: int) -> tuple[bytes, dict] | None:
    """The model of ``channel`` an interrupted run trained and kept in ``folder`` (its ONNX
    bytes and its record, :func:`keep_model`), if any and intact."""
    onnx_file, record_file = folder / f"c{channel}.onnx", folder / f"c{channel}.json"
    if not (onnx_file.is_file() and record_file.is_file()):
        return None
    data, record = onnx_file.read_bytes(), json.loads(record_file.read_text())
    if hashlib.sha256(data).hexdigest() != record.get("record", {}).get("model_sha256"):
        return None
    return data, record


def keep_model(folder: Path, channel: int, data: bytes, record: dict) -> None:
    """Keep a trained model in a run's ``folder`` for a resumed run: ``c<k>.onnx`` and
    ``c<k>.json``, its record, whose ``record.model_sha256`` checks the bytes."""
    write_atomic(folder / f"c{channel}.onnx", data)
    write_atomic(folder / f"c{channel}.json", json.dumps(record).encode())


def os_message(exc: OSError, output: Path, kept: bool = True) -> str:
    """A failed write (``exc``) worded for the user: the problem, the fix, and whether the
    unfinished ``output`` is kept for ``--resume``."""
    where = exc.filename or output
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        problem = f"no space left on the device writing '{where}': free some space"
    elif exc.errno == errno.EFBIG:
        problem = (f"file too large writing '{where}' (a file size limit, 'ulimit -f'?): "
                   "raise the limit")
    else:
        problem = f"{exc.strerror or exc} ('{where}'): fix that"
    if not kept:
        return f"{problem}, then run the command again (nothing was written)"
    return (f"{problem}, then rerun the same command with --resume (the unfinished output "
            f"'{output}' is kept)")


@contextmanager
def resumable(output: Path) -> Iterator[None]:
    """Word failures of a run that wrote into ``output``: it is kept, --resume completes it."""
    try:
        yield
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        raise Interrupted(f"stopped by {name}; the unfinished output '{output}' is kept: rerun "
                          "the same command with --resume to complete it", name) from None
    except OSError as exc:
        raise FM2SError(os_message(exc, output)) from None
    except FM2SError as exc:
        if isinstance(exc, ParameterError) or "--resume" in str(exc):
            raise
        raise FM2SError(f"{exc} (the unfinished output '{output}' is kept: rerun with "
                        "--resume once that is fixed)") from None


def leftovers(output: Path) -> Iterator[Path]:
    """Hidden temporary paths of earlier runs beside ``output`` (older versions' part
    folders, a PNG/TIFF part file)."""
    output = _path(output)
    if not is_remote(output):
        yield from output.parent.glob(f".{output.name}.part-*")
    if part_path(output).exists():
        yield part_path(output)


__all__ = ["RUN_DIR", "RUNNING", "COMPLETE", "Interrupted", "work_path", "lock_path",
           "part_path", "write_atomic", "remove", "read_state", "unfinished", "refuse_unfinished",
           "Done", "RunLock", "leftovers", "kept_model", "keep_model", "os_message",
           "resumable", "check_settings"]
