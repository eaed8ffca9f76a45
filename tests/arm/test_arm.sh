#!/usr/bin/env bash
# `make test-arm`: the runtime wheel on an emulated aarch64 box (tests/arm/aarch64_env.sh), installed
# by the box's own pip (so its environment markers are aarch64's: plain onnxruntime, not -gpu),
# then on a copy of a build: probe, verify (RESTRICTED: see ARM_VERIFY), classify one photograph,
# and verify on a copy with a planted int8 bug, which must exit 1 naming the artifact. Exit 0 only
# if all of that holds. Each kernel runs ~40x slower under qemu than natively.
#
# Signed builds: the build is signed here with a key made for the run, and the box verifies with
# --require-signature; FULL_BUILD (a full-size build, optional) is signed too, its signature
# checked on the box, and a copy with one altered byte must be refused, naming the file.
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
step "pip install attnvgg-runtime[onnxruntime,openvino,signing] (the box's own pip)" \
  box "$PIP_WHEEL/pip" install -q --no-index --find-links "$OUT/wheels" \
      --find-links "$WHEELS_DIST" --target "$OUT/site" --no-compile --root-user-action=ignore \
      'attnvgg-runtime[onnxruntime,openvino,signing]'
ls "$OUT/site" | grep -q '^onnxruntime-[0-9].*dist-info$' \
  || { echo "FAIL: the box's pip did not choose plain onnxruntime"; exit 1; }
cp -r "$BUILD" "$OUT/build"
# a key pair made for this run; the build signed where it was built (natively), checked on the box
rm -rf "$OUT/key"
.venv/bin/attnvgg-export keygen --out "$OUT/key"
.venv/bin/attnvgg-export sign --manifest "$OUT/build/manifest.json" --key "$OUT/key/private.pem"
step "probe" box -m attnvgg_runtime probe
# shellcheck disable=SC2086
step "verify --require-signature $ARM_VERIFY" box -m attnvgg_runtime verify "$OUT/build/manifest.json" \
  --require-signature "$OUT/key/public.pem" $ARM_VERIFY
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
refused() {  # $1: what; the rest: the box's command, which must exit 2 naming $ALTERED
  local what=$1; shift
  set +e
  box -m attnvgg_runtime "$@" 2> "$OUT/refused.log"
  local rc=$?
  set -e
  cat "$OUT/refused.log"
  if [ "$rc" != 2 ] || ! grep -q "does not match its signature.*$ALTERED" "$OUT/refused.log"; then
    echo "FAIL: the aarch64 box did not refuse $what (exit $rc)"; exit 1
  fi
}
ALTERED=model.int8-cpu.onnx
if [ -n "${FULL_BUILD:-}" ]; then
  # signed in place (build.sig beside its manifest); the altered copy is hard links but for the
  # one file altered, which is a copy of its own
  .venv/bin/attnvgg-export sign --manifest "$FULL_BUILD/manifest.json" --key "$OUT/key/private.pem"
  step "signature of the full-size build $FULL_BUILD" box -m attnvgg_runtime signature \
    "$FULL_BUILD/manifest.json" --key "$OUT/key/public.pem"
  rm -rf "$OUT/altered" && cp -al "$FULL_BUILD" "$OUT/altered"
  rm "$OUT/altered/$ALTERED" && cp "$FULL_BUILD/$ALTERED" "$OUT/altered/$ALTERED"
  printf '\x01' | dd of="$OUT/altered/$ALTERED" bs=1 seek=4096 conv=notrunc status=none
  step "the full-size build with one altered byte in $ALTERED: must be refused" \
    refused "one altered byte" signature "$OUT/altered/manifest.json" --key "$OUT/key/public.pem"
  rm -rf "$OUT/altered"
fi
echo "== make test-arm: passed on aarch64 $ARM_CPU ($OUT/build/verify.json)"
