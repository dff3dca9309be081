"""Where images live: a local path or an fsspec URL (``s3://bucket/key``, ``gs://``,
``http(s)://``, ...), as one path type.

A local path is a :class:`pathlib.Path`; a URL is a :class:`upath.UPath` (universal_pathlib:
the pathlib interface over fsspec) that carries its ``storage_options`` (endpoint, keys,
profile, anonymous access), so that the same code names, reads and writes both, and a
zarr store is opened on either (:func:`zarr_store`). Credentials not given in the storage
options come from where the store's fsspec package looks (for S3: the ``AWS_*``
environment variables, ``~/.aws/credentials`` and ``~/.aws/config``, an instance role).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FM2SError, ParameterError


def is_url(source) -> bool:
    """Whether ``source`` is a URL (``scheme://...``), not a local path."""
    if isinstance(source, Path):
        return False
    if not isinstance(source, str):  # a UPath
        return hasattr(source, "protocol") and bool(source.protocol)
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() != "file"


def is_remote(path) -> bool:
    """Whether ``path`` (a :func:`location`) lies on a remote store, not on a local disk."""
    return not isinstance(path, str | Path) and bool(getattr(path, "protocol", ""))


def is_http(source) -> bool:
    """Whether ``source`` is an http(s) URL (read-only)."""
    return str(source).startswith(("http://", "https://"))


def check_storage_options(options: dict | str | None) -> dict | None:
    """The fsspec storage options: a dict, or its JSON text (``--storage-options``)."""
    if options is None or isinstance(options, dict):
        return options or None
    try:
        value = json.loads(options)
    except ValueError as exc:
        raise ParameterError("storage_options", options, f"is not JSON ({exc.msg}): give an "
                             "object such as '{\"endpoint_url\": \"http://minio:9000\"}'"
                             ) from None
    if not isinstance(value, dict):
        raise ParameterError("storage_options", options, "give a JSON object such as "
                             "'{\"endpoint_url\": \"http://minio:9000\"}'")
    return value or None


def location(source, storage_options: dict | None = None):
    """The path of ``source``: a local :class:`~pathlib.Path` (made absolute) or, for a URL,
    a :class:`upath.UPath` with ``storage_options``.

    Raises
    ------
    FM2SError
        A URL whose protocol has no fsspec package installed (``pip install s3fs``).
    """
    if is_remote(source):
        return source  # a UPath already
    text = str(source)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if not is_url(text):
        return Path(text).absolute()
    import fsspec
    from upath import UPath

    scheme = text.partition("://")[0].lower()
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
                   "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        fix = f"pip install {package}" if package else "install the fsspec package for it"
        raise FM2SError(f"'{text}': no fsspec file system for '{scheme}://' here ({detail}): "
                        f"{fix}") from None
    return UPath(text.rstrip("/"), **(storage_options or {}))


def storage_options_of(path) -> dict | None:
    """The storage options a :func:`location` carries (None: a local path, or none)."""
    return dict(path.storage_options) or None if is_remote(path) else None


def zarr_store(path, read_only: bool = False):
    """What zarr opens ``path`` with: the local path, or an fsspec store of the URL."""
    if not is_remote(path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options),
                                read_only=read_only)


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def store_problem(exc: BaseException, where: str) -> str | None:
    """A failed call on a remote store worded for the user (None: not a store problem).

    Wrong or missing credentials, a missing bucket and an unreachable endpoint each name
    the fix."""
    names = {t.__name__ for t in type(exc).__mro__}
    cause = _cause(exc)
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return (f"no credentials for '{where}' ({cause}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or pass --storage-options with key and "
                "secret, a profile, or {\"anon\": true} for a public bucket")
    if isinstance(exc, PermissionError) or names & {"ClientAuthenticationError"}:
        return (f"access to '{where}' was denied ({cause}): check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, "
                "or key and secret in --storage-options) and the bucket's permissions")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionError", "ServerDisconnectedError", "ConnectionRefusedError",
                "ReadTimeoutError", "TimeoutError"}:
        return (f"cannot reach the store of '{where}' ({cause}): check endpoint_url in "
                "--storage-options and the network")
    return None


def check_store(path, what: str) -> None:
    """Refuse a remote ``path`` whose bucket (container) does not exist or cannot be
    reached with the credentials at hand, before any work. Nothing is written."""
    if not is_remote(path) or is_http(path):
        return
    bucket = path.path.split("/", 1)[0] if "/" in path.path else path.path
    try:
        path.fs.info(bucket)
    except FileNotFoundError:
        raise FM2SError(f"bucket '{bucket}' of the {what} '{path}' does not exist: create it "
                        "first, or check the URL (and endpoint_url in --storage-options)"
                        ) from None
    except Exception as exc:  # noqa: BLE001 - botocore and aiohttp raise many types
        problem = store_problem(exc, str(path))
        if problem is None:
            raise FM2SError(f"cannot use the {what} '{path}' ({_cause(exc)}): check the URL "
                            "and --storage-options") from None
        raise FM2SError(problem) from None


def remove(path) -> None:
    """Remove a file or a folder tree (nothing if it is not there), local or remote."""
    if is_remote(path):
        fs = path.fs
        try:
            fs.rm(path.path, recursive=True)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path.path)
        return
    import shutil

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def listing(path) -> set[str]:
    """Names in the folder ``path`` (an empty set if there is none); on a remote store,
    listed afresh (no cached listing)."""
    if is_remote(path):
        fs = path.fs
        fs.invalidate_cache(path.path)
        try:
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path.path, detail=False)}
        except FileNotFoundError:
            return set()
        finally:  # later checks of single files must not read this listing
            fs.invalidate_cache(path.path)
        return names
    import os

    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


__all__ = ["is_url", "is_remote", "is_http", "location", "storage_options_of",
           "check_storage_options", "zarr_store", "store_problem", "check_store", "remove",
           "listing"]
