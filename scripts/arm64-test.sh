#!/usr/bin/env bash
# Cross-compile localrank-core for aarch64 and run its tests (unit tests and tests/paths.rs)
# under qemu user-mode emulation, on two emulated CPUs, so that every aarch64 path runs:
#
#   QEMU_CPU=max          has dotprod (like a Raspberry Pi 5 or Graviton 2+): scalar, neon, sdot
#   QEMU_CPU=cortex-a72   no dotprod (like a Raspberry Pi 4): scalar, neon; sdot is refused
#
# LOCALRANK_EXPECT_KERNELS makes the tests fail if detection finds any other set of paths.
# The output names each path that ran ("path sdot: ok (...)").
#
# Follows docs/arm.md: Debian's rustc (the rustup toolchain has no aarch64 std), statically
# linked test binaries (a dynamically linked one can hang under qemu-user when it starts a
# thread), no doctests (the rustdoc on PATH belongs to the other toolchain), and a target
# directory of its own so the host build cache is not rebuilt with a different rustc.
#
# Usage: scripts/arm64-test.sh [--build-only]
#   --build-only   compile the tests for aarch64 (warnings are errors) without running them
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0
case "${1:-}" in
    "") ;;
    --build-only) build_only=1 ;;
    *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

scripts/arm64-toolchain.sh

export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=target-aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
# The aarch64 code is not seen by clippy on x86 hosts; at least rustc's own lints must pass.
export RUSTFLAGS="-C target-feature=+crt-static -D warnings"
args=(-p localrank-core --lib --tests --target aarch64-unknown-linux-gnu)

if [ "$build_only" -eq 1 ]; then
    cargo test "${args[@]}" --no-run
    echo "arm64-test: built localrank-core's aarch64 tests (not run; make test-arm64 runs them)"
    exit 0
fi

cargo test "${args[@]}" --no-run
for cpu in "max scalar,neon,sdot" "cortex-a72 scalar,neon"; do
    set -- $cpu
    echo "arm64-test: QEMU_CPU=$1, expecting paths $2"
    QEMU_CPU=$1 LOCALRANK_EXPECT_KERNELS=$2 cargo test "${args[@]}" -- --nocapture
done
