#!/usr/bin/env bash
# Every GPU check of fm2s-tile (issue 28's items 1-4 among them), on the device machine,
# within 8 minutes; figures as JSON under $OUT (default: ./device-out). See ../shared/DEVICE.md. Prepare the carry here once:
#
#   echo /.ort/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   ../shared/tools/ort-gpu-carry .ort
#   ../shared/tools/device-wheels $(grep -v '^#' benchmarks/device_wheels.txt)
#
# .ort (57.4 MiB) and the wheels (6.9 MB) do not fit in one call's 64 MiB, and the machine
# keeps /tmp for 30 s after a call, so two calls right after each other:
#   run(command="bash benchmarks/device_check.sh --unpack-only", carry=[".ort"], timeout_s=120)
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
# To train on the real FMD images there (the device has no ../shared), copy the 24 raw/*.png
# and the 6 gt/*.png to an ignored .fmd/{raw,gt} (echo /.fmd/ >> .git/info/exclude) and run
# it as FM2S_FMD=$PWD/.fmd bash ..., carrying [".whl", ".fmd"] (5.1 MB more): the many-models
# step trains all 24 captures, the fresh-process step the first two.
# Elsewhere (a GPU box with the project installed) just run it: the carry steps are skipped
# when .ort/.whl are absent.
# `bash benchmarks/device_check.sh --cpu` is a dry run of every step on the CPU provider.
# The device tool brings back at most 8 files from $OUT: the script writes exactly 8.
# It exits 1 when the gpu tests did not pass, a run where all of them skipped included.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
if [ -f .ort/ort-gpu-sm90.tar.xz ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .ort/ort-gpu-sm90.tar.xz
fi
if [ "${1:-}" = "--unpack-only" ]; then
  ls /tmp/site; exit 0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 510 python3 benchmarks/device_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
