#!/usr/bin/env bash
# `make test-arm`: the runtime wheel on an emulated aarch64 box (tests/arm/aarch64_env.sh), installed
# by the box's own pip (so its environment markers are aarch64's: plain onnxruntime, not -gpu),
# then on a copy of a build: probe, verify (RESTRICTED: see ARM_VERIFY), classify one photograph,
# and verify on a copy with a planted int8 bug, which must exit 1 naming the artifact. Exit 0 only
# if all of that holds. Each kernel runs ~40x slower under qemu than natively.
#
#   tests/arm/test_arm.sh BUILD_DIR WHEEL_DIR PHOTO [OUT]
set -euo pipefail
set -f  # ARM_VERIFY holds artifact patterns (engines/ort/*) for verify, not for the shell
BUILD=${1:?usage: test_arm.sh BUILD_DIR WHEEL_DIR PHOTO [OUT]}
WHEELS_DIST=${2:?}
PHOTO=${3:?}
OUT=${4:-build/arm}
HERE=$(cd "$(dirname "$0")" && pwd)
ARM_CPU=${ARM_CPU:-neoverse-n1}
# what fits CI: ONNX Runtime (the portable target) on the artifacts it serves, on 8 of the held-out
# golden images at the opt size; fp16, the TensorRT graph, OpenVINO and the corner shapes are
# measured on ARM by the stored run (docs/edge.md), whose whole verify takes an hour under qemu
ARM_VERIFY=${ARM_VERIFY:---case heldout --images 8 --reader onnxruntime --artifact model.onnx,model.int8-cpu.onnx,engines/ort/*}
PLANTED_BUG="int8 activation range clipped"
PLANTED_ARTIFACT=model.int8-cpu.onnx

"$HERE/aarch64_env.sh" "$OUT"
ROOT=$OUT/root
PIP_WHEEL=$(find "$OUT/wheels" -name 'pip-*.whl' | head -1)
box() { PYTHONPATH="$OUT/site" PYTHONDONTWRITEBYTECODE=1 qemu-aarch64 -cpu "$ARM_CPU" -L "$ROOT" \
          "$ROOT/usr/bin/python3.11" "$@"; }
step() { local start=$SECONDS; echo "== [aarch64 $ARM_CPU] $1"; shift; "$@"; local rc=$?; \
         echo "== $((SECONDS - start)) s"; return $rc; }

rm -rf "$OUT/site" "$OUT/build" "$OUT/planted"
step "pip install attnvgg-runtime[onnxruntime,openvino] (the box's own pip)" \
  box "$PIP_WHEEL/pip" install -q --no-index --find-links "$OUT/wheels" \
      --find-links "$WHEELS_DIST" --target "$OUT/site" --no-compile --root-user-action=ignore \
      'attnvgg-runtime[onnxruntime,openvino]'
ls "$OUT/site" | grep -q '^onnxruntime-[0-9].*dist-info$' \
  || { echo "FAIL: the box's pip did not choose plain onnxruntime"; exit 1; }
cp -r "$BUILD" "$OUT/build"
step "probe" box -m attnvgg_runtime probe
# shellcheck disable=SC2086
step "verify $ARM_VERIFY" box -m attnvgg_runtime verify "$OUT/build/manifest.json" $ARM_VERIFY
step "classify $(basename "$PHOTO")" box -m attnvgg_runtime classify "$OUT/build/manifest.json" "$PHOTO" \
  --runtime onnxruntime

# the planted copy is made natively (it needs onnx); the box must catch it
.venv/bin/attnvgg-export selftest --manifest "$BUILD/manifest.json" --plant "$PLANTED_BUG" \
  --into "$OUT/planted"
set +e
step "verify the planted copy ($PLANTED_BUG): must exit 1" box -m attnvgg_runtime verify \
  "$OUT/planted/manifest.json" --case heldout --images 8 --reader onnxruntime \
  --artifact "$PLANTED_ARTIFACT" | tee "$OUT/planted.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 1 ] || ! grep -q "$PLANTED_ARTIFACT \[onnxruntime.*FAIL" "$OUT/planted.log"; then
  echo "FAIL: verify on the aarch64 box did not catch '$PLANTED_BUG' in $PLANTED_ARTIFACT (exit $rc)"
  exit 1
fi
echo "== make test-arm: passed on aarch64 $ARM_CPU ($OUT/build/verify.json)"
