import math

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fm2s.pixels import MIN_SIDE
from fm2s.runtime import OnnxDenoiser
from fm2s.tiling import (
    block_chunks,
    denoise_array,
    min_window,
    plane_maps,
    plane_stats,
    tiled,
    tiles_in,
    windows,
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

    other = fm2s.train(stack_uint16[0, 1, 0], microscope="measured", device="cpu", samples=2,
                       warmup_steps=1, seed=9)
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


@st.composite
def _chunking(draw, n: int) -> tuple[int, ...]:
    """Uneven chunk sizes that add up to ``n`` (at most 4 chunks, any sizes)."""
    cuts = draw(st.lists(st.integers(1, n - 1), unique=True, max_size=3)) if n > 1 else []
    edges = [0, *sorted(cuts), n]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


@st.composite
def _tiling_cases(draw) -> dict:
    """A volume shape, its input chunks, plane gains and the arguments of denoise_array:
    tiles, blocks and output chunks from smaller than the plane (many blocks, halos between
    them) to larger (one block)."""
    lead: tuple[int, ...] = ()
    for _ in range(draw(st.integers(1, 3))):  # 1 to 3 leading axes, at most 4 planes
        lead += (draw(st.integers(1, min(3, 4 // math.prod(lead)))),)
    shape = lead + (draw(st.integers(MIN_SIDE + 1, 90)), draw(st.integers(MIN_SIDE + 1, 90)))
    return dict(
        shape=shape,
        in_chunks=tuple(draw(_chunking(n)) for n in shape),
        # 1: the model's own range; others: planes mapped into it (40 saturates uint8 into
        # constant planes)
        gains=draw(st.lists(st.sampled_from([1.0, 0.25, 3.0, 40.0]), min_size=math.prod(lead),
                            max_size=math.prod(lead))),
        tile=draw(st.integers(MIN_SIDE, 24) | st.integers(MIN_SIDE, 128)),
        chunk=draw(st.integers(1, 24) | st.integers(1, 48) | st.integers(1, 128)),
        block=draw(st.integers(0, 24) | st.integers(0, 128) | st.just(2048)),
        seed=draw(st.integers(0, 2**16)),
    )


def _volume(shape: tuple[int, ...], dtype: str, gains: list[float], seed: int) -> np.ndarray:
    """Noisy planes in the quick model's range, each scaled by its gain (1: left in the
    range, others: mapped into it); in int16 the planes of gain 0.25 shifted below zero;
    integers rounded and clipped to their type."""
    rng = np.random.default_rng(seed)
    gains = np.reshape(gains, shape[:-2] + (1, 1))
    values = (100 + rng.gamma(2.0, 8.0, shape)) * gains
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        values -= 100 * (gains == 0.25)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def _whole_planes(runtime: OnnxDenoiser, data: np.ndarray, maps: np.ndarray | None
                  ) -> np.ndarray:
    """Every plane through the model whole (with its map, if any), cast back to the input's
    type: the reference the tiled result must equal."""
    planes = data.reshape((-1,) + data.shape[-2:]).astype(np.float32)
    if maps is None:
        out = runtime(planes)
    else:
        out = np.empty(planes.shape, np.float32)
        for i, (a, b, lo, hi) in enumerate(maps.reshape(-1, 4)):
            if (a, b) == (1.0, 0.0):
                out[i] = runtime(planes[i], (lo, hi))
            else:
                a, b = np.float32(a), np.float32(b)
                out[i] = (runtime(planes[i] * a + b, (lo, hi)) - b) / a
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(data.dtype).reshape(data.shape)


@pytest.mark.parametrize("use_maps", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=_tiling_cases())
# always run: several blocks per plane (the last one joined to its neighbour), planes of
# every gain, uneven input chunks across block edges
@example(case=dict(shape=(1, 3, 41, 37), in_chunks=((1,), (2, 1), (13, 28), (5, 17, 15)),
                   gains=[1.0, 3.0, 0.25], tile=8, chunk=10, block=12, seed=3))
@example(case=dict(shape=(2, 45, 59), in_chunks=((1, 1), (45,), (30, 29)), gains=[1.0, 40.0],
                   tile=13, chunk=7, block=0, seed=4))
def test_tiled_result_equals_whole_plane_for_any_shape_chunking_and_tile(runtime, dtype,
                                                                         use_maps, case):
    """Property: whatever the volume, input chunks, tile, output chunk, block side, plane
    maps (or none) and pixel type, the tiled dask result is the whole-plane result, bit for
    bit, in the input's type."""
    data = _volume(case["shape"], dtype, case["gains"], case["seed"])
    lazy = da.from_array(data, chunks=case["in_chunks"])
    maps = (plane_maps(plane_stats(lazy).compute(scheduler="sync"), [runtime.reference])
            if use_maps else None)
    got = denoise_array(lazy, [runtime.data], runtime.halo, tile=case["tile"],
                        chunk=case["chunk"], maps=maps, block=case["block"])
    assert got.dtype == data.dtype
    blocks = math.prod(len(c) for c in got.chunks[-2:])
    event("several blocks per plane" if blocks > 1 else "one block per plane")
    got = got.compute(scheduler="threads")
    assert got.dtype == data.dtype and got.shape == data.shape
    np.testing.assert_array_equal(got, _whole_planes(runtime, data, maps))


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


@given(n=st.integers(1, 300), tile=st.integers(1, 80), halo=st.integers(0, 8),
       margins=st.tuples(st.integers(0, 8), st.integers(0, 8)), uniform=st.booleans())
@example(n=2048 + 4, tile=2048, halo=5, margins=(0, 0), uniform=False)  # the 9-pixel sliver
def test_windows_cover_once_with_their_halo_and_none_is_narrow(n, tile, halo, margins,
                                                               uniform):
    """Computed parts tile [start, stop) once; each reads its halo wherever the axis goes
    on; no window is narrower than the halo-padded minimum (unless the axis is); uniform:
    one width."""
    start, stop = margins[0], n - margins[1]
    spans = windows(start, stop, n, tile, halo, uniform)
    covered = [i for _, _, v0, v1 in spans for i in range(v0, v1)]
    assert covered == list(range(start, stop))
    for a, b, v0, v1 in spans:
        assert 0 <= a <= v0 < v1 <= b <= n
        assert v0 - a >= halo or a == 0
        assert b - v1 >= halo or b == n
        assert b - a >= min(n, min_window(tile, halo))
        assert b - a <= max(tile + 2 * halo, min_window(tile, halo))
    if uniform and spans:
        assert {b - a for a, b, _, _ in spans} == {min(n, tile + 2 * halo)}


@pytest.mark.parametrize("uniform", [False, True])
def test_no_sliver_reaches_the_session_and_the_result_stays_exact(runtime, stack_uint16,
                                                                  uniform):
    """133 = 2 x 64 + 5: the last column of tiles computes 5 pixels, fewer than the halo; it
    is sent at least min_window wide (uniform: every tile at one shape), and the result is
    still the whole plane's, bit for bit."""
    planes = stack_uint16[0, 0].astype(np.float32)  # 3 x 75 x 133
    calls = []

    def run(x):
        calls.append(x.shape[-2:])
        return runtime(x)

    out = tiled(planes, run, 64, runtime.halo, uniform=uniform)
    assert np.array_equal(out, runtime(planes))
    assert min(w for _, w in calls) >= min_window(64, runtime.halo)
    assert len(calls) == tiles_in((75, 133), 64)
    if uniform:
        side = 64 + 2 * runtime.halo
        assert set(calls) == {(min(75, side), side)}
    else:  # without widening it would have been 5 + halo pixels wide
        assert min(w for _, w in calls) > 5 + runtime.halo


def test_uniform_tiles_through_dask_equal_the_whole_plane(runtime, quick_model, stack_uint16,
                                                          monkeypatch):
    from fm2s.tiling import UNIFORM_TILES_ENV

    data = stack_uint16[:, :, 0]
    whole = runtime(data.reshape(-1, 75, 133).astype(np.float32)).reshape(data.shape)
    monkeypatch.setenv(UNIFORM_TILES_ENV, "1")
    got = denoise_array(da.from_array(data, chunks=(1, 1, 40, 50)), [quick_model.read_bytes()],
                        runtime.halo, tile=24, chunk=48, dtype=np.float32,
                        block=0).compute(scheduler="threads")
    assert np.array_equal(got, whole)
