#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, Release build with -Werror (and the CUDA target when
# nvcc is present: compiled, not run), every test, then an ASan+UBSan build of the tests, run again.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

bash scripts/setup.sh

echo "== Release build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
echo "== Release tests"
(cd build && ctest --output-on-failure -j"$JOBS")

echo "== ASan+UBSan build"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVDIAL_SANITIZE=ON -DKVDIAL_BENCH=OFF \
  -DKVDIAL_CUDA=OFF >/dev/null
cmake --build build-asan -j"$JOBS" --target kvdial_tests kvdial
echo "== ASan+UBSan tests"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j"$JOBS")
