from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fm2s.sample import synthetic_image

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


def write_ngff(path: Path, data: np.ndarray, axes: str, version: str, levels: int = 2,
               **metadata) -> Path:
    """An OME-Zarr written by ome-zarr-py, an independent writer (NGFF 0.4 or 0.5)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    chunks = tuple(1 for _ in axes[:-2]) + data.shape[-2:]
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
    model = fm2s.train(noisy, device="cpu", samples=4, warmup_steps=1)
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
