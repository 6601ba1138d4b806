#!/usr/bin/env bash
# Builds libkiln with the TensorRT backend against the TensorRT lean runtime and checks,
# without a GPU, that it compiles, links and refuses an engine with a Device error instead
# of crashing.
#
#   scripts/check-tensorrt-build.sh TENSORRT_INCLUDE_DIR      (or: make check-tensorrt TENSORRT_INCLUDE_DIR=...)
#
# TENSORRT_INCLUDE_DIR is the directory with NvInferRuntime.h (e.g. include/ of the public
# NVIDIA/TensorRT repository, kept outside this repository). The lean runtime comes from the
# PyPI wheel tensorrt-lean-cu13-libs (installed into the venv when missing); the CUDA runtime
# from the CUDA toolkit. Builds into build/trt with KILN_WITH_TORCH=OFF (core + TensorRT).
set -euo pipefail
cd "$(dirname "$0")/.."

INCLUDE_DIR=${1:-${TENSORRT_INCLUDE_DIR:-}}
if [[ -z "$INCLUDE_DIR" || ! -f "$INCLUDE_DIR/NvInferRuntime.h" ]]; then
  echo "usage: $0 TENSORRT_INCLUDE_DIR   (the directory holding NvInferRuntime.h; got '${INCLUDE_DIR}')" >&2
  exit 2
fi
INCLUDE_DIR=$(cd "$INCLUDE_DIR" && pwd)
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
BUILD=${BUILD:-build/trt}
JOBS=${JOBS:-2}

lean_dir() {
  "$PY" - <<'EOF' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("tensorrt_lean_libs")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")
EOF
}
LEAN_DIR=$(lean_dir || true)
if [[ -z "$LEAN_DIR" ]]; then
  echo "== installing tensorrt-lean-cu13-libs into $VENV"
  "$VENV/bin/pip" install -q --no-deps tensorrt-lean-cu13-libs
  LEAN_DIR=$(lean_dir)
fi
LEAN_LIB=$(ls "$LEAN_DIR"/libnvinfer_lean.so.* 2>/dev/null | head -n1)
[[ -n "$LEAN_LIB" ]] || { echo "no libnvinfer_lean.so.* in $LEAN_DIR" >&2; exit 1; }
echo "== TensorRT headers: $INCLUDE_DIR ($(grep -E '#define TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE' "$INCLUDE_DIR/NvInferVersion.h" | awk '{print $3}' | paste -sd.))"
echo "== lean runtime:     $LEAN_LIB"

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
echo "== configure $BUILD (KILN_WITH_TENSORRT=ON, KILN_TENSORRT_RUNTIME=lean, KILN_WITH_TORCH=OFF)"
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DKILN_WITH_TORCH=OFF -DKILN_WITH_TENSORRT=ON -DKILN_TENSORRT_RUNTIME=lean \
  -DTENSORRT_INCLUDE_DIR="$INCLUDE_DIR" -DTENSORRT_LIBRARY="$LEAN_LIB" \
  -DKILN_BUILD_PYTHON=OFF -DPython_EXECUTABLE="$PY" >"$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log"; exit 1; }
grep -E "kiln: TensorRT" "$BUILD.configure.log" || true
echo "== build"
cmake --build "$BUILD" -j "$JOBS"
echo "== libkiln links:"
ldd "$BUILD/cpp/libkiln.so" | grep -E "nvinfer|cudart" || { echo "libkiln does not link TensorRT/cudart" >&2; exit 1; }
echo "== tests (no GPU: the tensorrt backend must refuse with a Device error, not crash)"
ctest --test-dir "$BUILD" --output-on-failure
echo "== the no-device message, as kiln-run prints it:"
set +e
"$BUILD/cpp/kiln-run" "$BUILD/test-fixtures/tensorrt/trt-engine" --batch 1 --seq 8
rc=$?
set -e
echo "(kiln-run exit status $rc)"
