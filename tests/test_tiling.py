import dask.array as da
import numpy as np
import pytest
import zarr

from fm2s.runtime import OnnxDenoiser
from fm2s.tiling import (
    block_chunks,
    denoise_array,
    plane_maps,
    plane_stats,
    tiled,
    tiles_in,
    write_tasks,
)


@pytest.fixture(scope="module")
def runtime(quick_model):
    return OnnxDenoiser(quick_model, provider="cpu", threads=1)


@pytest.mark.parametrize("tile", [8, 16, 23, 64, 500])
def test_tiled_equals_whole_plane(runtime, stack_uint16, tile):
    planes = stack_uint16[0, 0].astype(np.float32)  # 3 planes of 75 x 133
    whole = runtime(planes)
    out = tiled(planes, runtime, tile, runtime.halo)
    assert np.array_equal(out, whole)


@pytest.mark.parametrize("skip", [((5, 0), (0, 5)), ((5, 5), (5, 5)), ((0, 3), (7, 0))])
def test_skipped_margins_are_not_computed_and_the_rest_is_exact(runtime, stack_uint16, skip):
    planes = stack_uint16[0, 0].astype(np.float32)
    calls = []

    def run(x):
        calls.append(x.shape)
        return runtime(x)

    out = tiled(planes, run, 32, runtime.halo, skip)
    (top, bottom), (left, right) = skip
    inner = (slice(None), slice(top, 75 - bottom), slice(left, 133 - right))
    assert np.array_equal(out[inner], runtime(planes)[inner])
    rest = np.ones(out.shape, bool)
    rest[inner] = False
    assert not out[rest].any()
    assert len(calls) == tiles_in((75 - top - bottom, 133 - left - right), 32)
    # a tile reads at most its halo beyond what it computes
    assert all(h <= 32 + 2 * runtime.halo and w <= 32 + 2 * runtime.halo for _, h, w in calls)


def test_a_halo_too_small_changes_the_result(runtime, stack_uint16):
    planes = stack_uint16[0, 0].astype(np.float32)
    assert not np.array_equal(tiled(planes, runtime, 16, runtime.halo - 1), runtime(planes))


@pytest.mark.parametrize("block", [0, 100, 2048])
@pytest.mark.parametrize("shape,tile,chunk", [((2, 75, 133), 64, 32), ((3, 1030, 70), 512, 1024),
                                              ((1, 1027, 9), 4096, 1024), ((5, 40), 7, 16),
                                              ((1, 5000, 4100), 512, 1024)])
def test_blocks_are_whole_output_chunks(shape, tile, chunk, block):
    chunks = block_chunks(shape, tile, 5, chunk, block)
    assert all(c == (1,) * n for c, n in zip(chunks[:-2], shape[:-2]))
    for sizes, n in zip(chunks[-2:], shape[-2:]):
        assert sum(sizes) == n
        starts = np.cumsum((0,) + sizes[:-1])
        assert all(s % min(n, chunk) == 0 for s in starts)  # blocks start on chunk boundaries
        assert min(sizes) >= 5 or len(sizes) == 1  # never thinner than the halo
        assert max(sizes) >= min(n, tile, block) or len(sizes) == 1


@pytest.mark.parametrize("in_chunks", [(1, 2, 40, 50), (2, 1, 75, 133), (1, 1, 17, 19)])
def test_dask_result_equals_whole_plane_for_odd_chunks(runtime, quick_model, stack_uint16,
                                                       in_chunks):
    data = stack_uint16[:, :, 0]  # (t, c, y, x) = (2, 2, 75, 133)
    model = quick_model.read_bytes()
    lazy = denoise_array(da.from_array(data, chunks=in_chunks), [model], runtime.halo, tile=32,
                         chunk=48, block=0)
    assert len(lazy.chunks[-1]) > 1  # several blocks per plane, halos between them
    got = lazy.compute(scheduler="threads")
    expect = np.clip(np.rint(runtime(data.reshape(-1, 75, 133).astype(np.float32))), 0, 65535)
    assert got.dtype == np.uint16
    assert np.array_equal(got, expect.astype(np.uint16).reshape(data.shape))


def test_one_model_per_channel(runtime, quick_model, tmp_path, stack_uint16):
    import fm2s

    other = fm2s.train(stack_uint16[0, 1, 0], device="cpu", samples=2, warmup_steps=1, seed=9)
    models = [quick_model.read_bytes(), other.to_onnx().SerializeToString()]
    data = stack_uint16[:, :, 0]
    got = denoise_array(da.from_array(data), models, 5, tile=64, c_axis=1,
                        dtype=np.float32).compute()
    assert np.array_equal(got[:, 0], runtime(data[:, 0].astype(np.float32)))
    second = OnnxDenoiser(other.to_bytes(), provider="cpu")
    assert np.array_equal(got[:, 1], second(data[:, 1].astype(np.float32)))


@pytest.mark.parametrize("in_chunks", [(1, 40, 50), (3, 17, 19)])
def test_planes_outside_the_range_are_mapped_the_same_for_any_tiling(runtime, stack_uint16,
                                                                       in_chunks):
    """A plane scaled three times (background included) is mapped into the model's range,
    one with brighter structures only keeps its scale with a widened clamp; both the same
    in every tile, so the tiled result still equals the whole plane's."""
    data = stack_uint16[0, 0].astype(np.float32)
    data[1] *= 3
    data[2] = np.where(data[2] > np.percentile(data[2], 99.5), data[2] * 4, data[2])
    lazy = da.from_array(data, chunks=in_chunks)
    stats = plane_stats(lazy).compute()
    assert np.allclose(stats[:, :2], np.stack([data.min((1, 2)), data.max((1, 2))], 1))
    maps = plane_maps(stats, [runtime.reference])
    assert maps[1, 0] < 1 and tuple(maps[2, :2]) == (1.0, 0.0)  # scaled vs brighter spots
    assert maps[2, 3] == data[2].max() > runtime.reference[1]  # clamp widened to the plane
    got = denoise_array(lazy, [runtime.data], runtime.halo, tile=16, chunk=24,
                        dtype=np.float32, maps=maps, block=0).compute(scheduler="threads")
    for i, (a, b, lo, hi) in enumerate(maps):
        a, b = np.float32(a), np.float32(b)
        x = data[i] * a + b if (a, b) != (1, 0) else data[i]
        y = runtime(x, (lo, hi))
        assert np.array_equal(got[i], (y - b) / a if (a, b) != (1, 0) else y)
    assert got[1].max() > 2 * data[0].max()  # not clipped at the model's range
    assert got[2].max() > runtime.reference[1]  # above the training range: not clipped


def test_write_tasks_fill_the_target_once(tmp_path):
    data = da.from_array(np.arange(3 * 70 * 90, dtype=np.uint16).reshape(3, 70, 90),
                         chunks=(1, 64, 64))
    target = zarr.create_array(tmp_path / "t.zarr", shape=data.shape, chunks=(1, 32, 32),
                               dtype=np.uint16)
    tasks = write_tasks(data, target)
    assert len(tasks) == 3 * 2 * 2
    import dask

    counts = dask.compute(*tasks)
    assert sum(int(c.sum()) for c in counts) == data.size
    assert np.array_equal(target[:], data.compute())


def test_tiles_in():
    assert tiles_in((75, 133), 64) == 2 * 3
    assert tiles_in((64, 64), 64) == 1
