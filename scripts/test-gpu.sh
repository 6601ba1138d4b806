#!/usr/bin/env bash
# The GPU suite (`make test-gpu`): on a host with an NVIDIA GPU, its driver, and TensorRT
# (`pip install tensorrt` into .venv), rebuild the C++ runtime with its TensorRT backend,
# build every deployable in export/ with TensorRT plans in fp32, fp16 and bf16, and run
# parity (every plan, in Python and through the C++ runtime) and the benchmark on each.
# Anywhere else it says what is missing and exits 0: nothing here can run without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KILN=.venv/bin/kiln
why=$($PY -c 'from kiln.exporters.tensorrt import tensorrt_unavailable as u; print(u() or "")')
if [ -n "$why" ]; then
  echo "make test-gpu: skipped: $why"
  exit 0
fi
out=${GPU_RESULTS:-gpu-results}
mkdir -p "$out"
trt_root=$($PY -c 'import tensorrt, os; print(os.path.dirname(tensorrt.__file__))')
echo "== C++ runtime with the TensorRT backend (TensorRT from $trt_root)"
.venv/bin/pip install -q --no-build-isolation --no-deps -e . \
  -Ccmake.define.KILN_WITH_TENSORRT=ON -Ccmake.define.TENSORRT_ROOT="$trt_root"
fail=0
for recipe in export/*.toml; do
  name=$(basename "$recipe" .toml)
  echo "== $name"
  $KILN build "$recipe" --output "engines/$name" --formats torchscript onnx aoti tensorrt \
    --precision fp32 fp16 bf16 || { fail=1; continue; }
  $KILN parity "engines/$name" --json "$out/parity-$name.json" || fail=1
  batches=1,8  # generation engines: batch x beams rows must fit the decoder's batch range
  grep -q '"kind": "generation"' "engines/$name/manifest.json" && batches=1
  $KILN bench "engines/$name" --batch "$batches" --json "$out/bench-$name.json" || fail=1
done
echo "results in $out/"
exit $fail
