from __future__ import annotations

import json
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fm2s.sample import synthetic_image, synthetic_stack

FMD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd"


def _cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip on machines without CUDA."""
    if _cuda():
        return
    skip = pytest.mark.skip(reason="no CUDA provider in this onnxruntime (gpu test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def noisy_and_truth(rng) -> tuple[np.ndarray, np.ndarray]:
    """A small uint16 synthetic camera image and its noise-free truth."""
    return synthetic_image((64, 80), rng)


@pytest.fixture
def http_server(tmp_path):
    """A local http server of the folder ``tmp_path/served``: (that folder, its URL)."""
    root = tmp_path / "served"
    root.mkdir()
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fmd() -> Path:
    if not (FMD / "raw").is_dir():
        pytest.skip("shared FMD images are absent (../shared/data/fmd)")
    return FMD


def tree_bytes(root: Path, skip_metadata: bool = True) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (group metadata left out: it holds the date)."""
    meta = {"zarr.json", ".zattrs"}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (skip_metadata and p.name in meta and p.parent == root)}


#: the start of a script run in a fresh interpreter that SIGKILLs itself once ``KILL_AFTER``
#: (set by the script before it) level-0 blocks are written; the script goes on with its job
KILL_AFTER_BLOCKS = """
import os, signal, threading
import fm2s.tiling
count, lock = [0], threading.Lock()
write = fm2s.tiling._write_block

def _write_block(block, target, done=None, level=0, block_info=None):
    out = write(block, target, done, level, block_info)
    if level == 0:
        with lock:
            count[0] += 1
            if count[0] == KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)
    return out

fm2s.tiling._write_block = _write_block
"""


@pytest.fixture(autouse=True)
def _dask_scheduler_kept():
    """Each test starts with dask's default scheduler as the session had it: a
    distributed client that a cluster test closes can leave itself set as the default
    (a CI run hung on it, then failed 25 later tests with "no Client active")."""
    from fm2s.cluster import default_scheduler_kept

    with default_scheduler_kept():
        yield


def two_channel_volume(path: Path) -> Path:
    """A two-channel OME-Zarr 0.5 of 2 x 6 planes of 72 x 88 (one chunk each), two levels,
    written by ome-zarr-py."""
    noisy, _ = synthetic_stack((1, 2, 6, 72, 88), np.random.default_rng(3))
    return write_ngff(path, noisy, "tczyx", "0.5")


def write_ngff(path: Path, data: np.ndarray, axes: str, version: str, levels: int = 2,
               **metadata) -> Path:
    """An OME-Zarr written by ome-zarr-py, an independent writer (NGFF 0.4 or 0.5), with
    dask's local threads (ome-zarr-py computes with dask's default scheduler, which a
    distributed client still closing after a cluster test would otherwise take)."""
    import dask
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    chunks = tuple(1 for _ in axes[:-2]) + data.shape[-2:]
    with dask.config.set(scheduler="threads"):
        write_image(data, root, axes=axes, fmt=fmt, scale_factors=[2] * (levels - 1),
                    storage_options={"chunks": chunks}, **metadata)
    return path


def write_plate(path: Path, version: str, rows: str = "AB", columns: str = "123",
                fields: int = 2, shape: tuple[int, ...] = (1, 2, 64, 64), seed: int = 0) -> Path:
    """An HCS plate written by ome-zarr-py (plate, well and image metadata; NGFF 0.4 or
    0.5): every well holds ``fields`` czyx fields of ``shape``, synthetic uint16 noise."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    from fm2s.sample import synthetic_stack

    fmt = FormatV04() if version == "0.4" else FormatV05()
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    wells = [f"{r}/{c}" for r in rows for c in columns]
    write_plate_metadata(root, list(rows), list(columns), wells, fmt=fmt, field_count=fields,
                         name="test plate")
    for well in wells:
        group = root.require_group(well)
        write_well_metadata(group, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        for f in range(fields):
            noisy, _ = synthetic_stack((1, *shape), rng)
            write_ngff(path / well / str(f), noisy[0], "czyx", version, levels=2)
    return path


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory) -> Path:
    """A model trained in about a second (a short schedule), saved as ONNX."""
    import fm2s

    noisy, _ = synthetic_image((64, 80), np.random.default_rng(5))
    # measured: one training (the tests that use it are about inference, not the choice)
    model = fm2s.train(noisy, microscope="measured", device="cpu", samples=4, warmup_steps=1)
    return model.save(tmp_path_factory.mktemp("model") / "quick.onnx")


@pytest.fixture
def stack_uint16() -> np.ndarray:
    """A small TCZYX-like uint16 stack (t=2, c=2, z=3) with planes of 75 x 133 pixels."""
    from fm2s.sample import synthetic_stack

    noisy, _ = synthetic_stack((2, 2, 3, 75, 133), np.random.default_rng(7))
    return noisy


def read_image(path: Path) -> np.ndarray:
    """A 2D PNG or TIFF read by Pillow / tifffile (independent of fm2s's readers)."""
    if Path(path).suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    import tifffile

    return tifffile.imread(path)


def write_image(path: Path, image: np.ndarray) -> Path:
    """A 2D PNG or TIFF written by Pillow / tifffile."""
    if Path(path).suffix == ".png":
        from PIL import Image

        Image.fromarray(image).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, image, photometric="minisblack")
    return Path(path)


#: what an interrupted or failed run may leave beside or inside an output
LEFTOVER_NAMES = (".part", ".fm2s-lock", ".fm2s-run", ".fm2s-work", ".partial", ".tmp-")


def pytest_sessionfinish(session, exitstatus):
    """After all tests: no temporary path of a run is left anywhere the tests wrote."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        root = factory.getbasetemp()
    except (OSError, ValueError):
        return
    left = [str(p) for p in root.rglob("*") if any(n in p.name for n in LEFTOVER_NAMES)]
    if left:
        print(f"\nleft behind by the tests ({len(left)}): " + ", ".join(left[:10]))
        session.exitstatus = 1


class S3Server:
    """A local S3 server (moto's ThreadedMotoServer on 127.0.0.1) that checks credentials
    as AWS does: the ``AWS_*`` variables of the test session hold the key of an IAM user
    allowed everything on S3; any other key is refused."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.options = {"endpoint_url": endpoint}
        self.json = json.dumps(self.options)

    def client(self):
        import boto3

        # a new session: boto3's default one keeps the credentials it first found
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint,
                                              region_name="us-east-1")

    def bucket(self, name: str, versioned: bool = False) -> str:
        """Create the bucket ``name`` (with versioning: every write of a key kept)."""
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name,
                                         VersioningConfiguration={"Status": "Enabled"})
        return name

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)

    def upload(self, local: Path, url: str) -> str:
        """Copy the folder ``local`` to ``url`` (s3://bucket/key)."""
        self.fs().put(str(local), url.removeprefix("s3://"), recursive=True)
        return url

    def download(self, url: str, local: Path) -> Path:
        """Copy the folder at ``url`` to ``local``."""
        self.fs().get(url.removeprefix("s3://").rstrip("/") + "/", str(local), recursive=True)
        return local

    def keys(self) -> dict[str, int]:
        """Every object of every bucket: ``bucket/key`` -> number of versions written."""
        client = self.client()
        found: dict[str, int] = {}
        for bucket in client.list_buckets()["Buckets"]:
            name = bucket["Name"]
            pages = client.get_paginator("list_object_versions").paginate(Bucket=name)
            for page in pages:
                for v in page.get("Versions", []):
                    key = f"{name}/{v['Key']}"
                    found[key] = found.get(key, 0) + 1
        return found


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server for the session (moto, no mock): dummy credentials in ``AWS_*``,
    no AWS configuration files; authentication on, so a wrong key is refused."""
    import logging
    import os
    import urllib.request

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    home = tmp_path_factory.mktemp("aws")
    saved = {k: os.environ.get(k) for k in _AWS_VARIABLES}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE=str(home / "config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"))
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        iam = boto3.session.Session().client("iam", endpoint_url=endpoint,
                                             region_name="us-east-1")
        iam.create_user(UserName="fm2s")
        key = iam.create_access_key(UserName="fm2s")["AccessKey"]
        iam.put_user_policy(UserName="fm2s", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"],
                          AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                         headers={"Content-Type": "text/plain"},
                                         method="POST")
        urllib.request.urlopen(request, timeout=30).read()  # from now on, keys are checked
        yield S3Server(endpoint)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                  "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                  "AWS_PROFILE", "AWS_SESSION_TOKEN")


@pytest.fixture(autouse=True)
def _no_dask_client_left():
    """No test leaves a distributed client as dask's default: one left behind takes (or
    breaks) every later dask computation of the process, other tests' included."""
    yield
    if "distributed" not in sys.modules:
        return
    from fm2s.cluster import _default_client

    client = _default_client()
    if client is not None:
        pytest.fail(f"the test left a dask client ({client.status}) as dask's default client")
