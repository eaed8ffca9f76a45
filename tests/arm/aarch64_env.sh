#!/usr/bin/env bash
# An aarch64 box on any x86 Linux host, for `make test-arm`: qemu-user 10 (Debian bookworm-backports;
# bookworm's 7.2 segfaults importing onnxruntime 1.32 for aarch64), Debian's arm64 python3.11 and
# its libraries unpacked into ROOT (no chroot, no root filesystem: qemu's -L finds the loader and
# libraries there), and the aarch64 wheels the runtime package installs from, in WHEELS. Each part is
# made once and kept (the ROOT/.done and WHEELS/.done stamps); the session's own apt sources are
# extended only when qemu is missing or older than 10.
#
#   tests/arm/aarch64_env.sh build/arm       # -> build/arm/root, build/arm/wheels
set -euo pipefail
DIR=${1:?usage: aarch64_env.sh FOLDER}
ROOT=$DIR/root
WHEELS=$DIR/wheels
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DIR"

qemu_major() { qemu-aarch64 --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\).*/\1/p'; }
if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
  echo "installing qemu-user 10 from Debian bookworm-backports (found: $(qemu_major || echo none))"
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports qemu-user >/dev/null
fi

if [ ! -f "$ROOT/.done" ]; then
  echo "unpacking Debian's arm64 python3.11 into $ROOT"
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
  rm -rf "$ROOT" "$DIR/debs" && mkdir -p "$DIR/debs"
  # python3.11 and what it and the wheels' native libraries link against
  (cd "$DIR/debs" && apt-get download -qq $(sed 's/$/:arm64/' "$HERE/aarch64-debs.txt") 2>/dev/null)
  for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  rm -rf "$DIR/debs"
  touch "$ROOT/.done"
fi

if [ ! -f "$WHEELS/.done" ] || [ "$HERE/aarch64-requirements.txt" -nt "$WHEELS/.done" ]; then
  echo "downloading aarch64 wheels into $WHEELS"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # pip (to install on the emulated box itself, where environment markers are aarch64's) and the
  # runtimes at the versions measured (aarch64-requirements.txt)
  python3 -m pip download -q --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform manylinux_2_35_aarch64 --platform manylinux_2_31_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    -d "$WHEELS" -r "$HERE/aarch64-requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
  touch "$WHEELS/.done"
fi
