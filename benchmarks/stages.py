"""Where an ``apply`` job spends its time: cluster start, statistics pass, denoising, pyramid,
publishing, timed by wrapping the job's calls to its runner (``fm2s.cluster``).

    python benchmarks/stages.py MODEL.onnx VOLUME.ome.zarr --workers 2
    python benchmarks/stages.py MODEL.onnx VOLUME.ome.zarr            # local threads

(A volume and a model: ``fm2s.bench.write_volume`` and ``fm2s.bench.untrained_model``, or
``--make 1,16,2048,2048``, which writes both into a temporary folder first.)
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import fm2s.cluster as cluster
import fm2s.jobs as jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("volume", nargs="?")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--make", help="T,Z,Y,X: write a synthetic volume and model first")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fm2s-stages-"))
    try:
        model, volume = args.model, args.volume
        if args.make:
            from fm2s.bench import untrained_model, write_volume

            shape = tuple(int(s) for s in args.make.split(","))
            volume = write_volume(folder / "volume.ome.zarr", shape)
            model = folder / "model.onnx"
            model.write_bytes(untrained_model("fast", 0))
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()

        def mark(what: str) -> None:
            marks.append((what, time.perf_counter() - start))

        inner = cluster.runner

        @contextlib.contextmanager
        def runner(*a, **k):
            mark("start cluster")
            with inner(*a, **k) as run:
                mark("cluster up")
                yield run
                mark("work done")
            mark("cluster closed")

        jobs.runner = runner
        names = iter(["statistics pass", "denoising (level 0)", "pyramid level 1",
                      "pyramid level 2", "pyramid level 3"])
        for method in ("compute", "run"):
            original = getattr(cluster.Runner, method)

            def timed(self, *a, _original=original, **k):
                what = next(names)
                t = time.perf_counter()
                result = _original(self, *a, **k)
                print(f"{what:<22} {time.perf_counter() - t:7.2f} s", flush=True)
                return result

            setattr(cluster.Runner, method, timed)
        report = jobs.apply(model, volume, folder / "out.ome.zarr", workers=args.workers)
        mark("returned")
        steps = dict(marks)
        print(f"{'cluster start':<22} {steps['cluster up'] - steps['start cluster']:7.2f} s")
        print(f"{'cluster stop':<22} {steps['cluster closed'] - steps['work done']:7.2f} s")
        print(f"{'whole job':<22} {steps['returned']:7.2f} s "
              f"({report.voxels / steps['returned'] / 1e6:.2f} Mvoxel/s)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
