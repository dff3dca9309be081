import numpy as np
import pytest
import tifffile
from conftest import write_image  # noqa: I001
from PIL import Image

from fm2s.errors import FM2SError
from fm2s.readers import open_image


def read_image(path):
    return open_image(path).data.compute()


@pytest.mark.parametrize("name, dtype", [("a.png", np.uint8), ("a.png", np.uint16),
                                         ("a.tif", np.uint8), ("a.tiff", np.uint16),
                                         ("a.tif", np.float32)])
def test_round_trip_keeps_values_and_dtype(tmp_path, rng, name, dtype):
    img = (rng.random((19, 23)) * (200 if dtype == np.uint8 else 60000)).astype(dtype)
    write_image(tmp_path / name, img)
    back = read_image(tmp_path / name)
    assert back.dtype == dtype and np.array_equal(back, img)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FM2SError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(FM2SError, match="neither a zarr folder nor a TIFF or PNG"):
        read_image(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(FM2SError, match="colour|RGB"):
        read_image(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(FM2SError, match="RGB"):
        read_image(tmp_path / "rgb.tif")
    Image.fromarray(np.zeros((5, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(FM2SError, match="at least 8 x 8"):
        read_image(tmp_path / "small.png")


@pytest.mark.parametrize("name", ["t.png", "t.tif"])
def test_truncated_files_are_reported(tmp_path, rng, name):
    img = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    write_image(tmp_path / name, img)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(FM2SError, match="cannot read|truncated"):
        read_image(tmp_path / name)
