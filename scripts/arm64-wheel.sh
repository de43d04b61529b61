#!/usr/bin/env bash
# Build localrank's aarch64 abi3 wheel with maturin and, unless --build-only, smoke-test it
# under an emulated aarch64 Python (see docs/arm.md).
#
#   wheel        target-aarch64/wheels/localrank-*-cp310-abi3-manylinux_*_aarch64.whl
#   Python root  target-aarch64/pyroot: Debian 12 arm64 python3 + python3-numpy, fetched by
#                `debootstrap --foreign` and unpacked with dpkg -x (its second stage needs
#                binfmt_misc, which a sandbox may lack; unpacking is enough for Python)
#   smoke test   scripts/arm64_smoke.py, once per emulated CPU: `max` (scalar, neon, sdot) and
#                `cortex-a72` (scalar, neon), plus LOCALRANK_KERNEL forcing neon
#
# The wheel is linked dynamically: rustc drops the cdylib crate type under +crt-static.
#
# Usage: scripts/arm64-wheel.sh [--build-only]
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0
case "${1:-}" in
    "") ;;
    --build-only) build_only=1 ;;
    *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

if [ "$build_only" -eq 1 ]; then
    scripts/arm64-toolchain.sh
else
    scripts/arm64-toolchain.sh --python
fi

OUT=target-aarch64/wheels
ROOT=target-aarch64/pyroot
SITE=target-aarch64/smoke-site
MATURIN="${MATURIN:-$(command -v .venv/bin/maturin || command -v maturin)}"

rm -f "$OUT"/localrank-*aarch64.whl
RUSTC=/usr/bin/rustc \
CARGO_TARGET_DIR=target-aarch64 \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    "$MATURIN" build --release --target aarch64-unknown-linux-gnu --out "$OUT"
wheel="$(ls "$OUT"/localrank-*-abi3-*aarch64.whl)"
echo "arm64-wheel: built $wheel"
[ "$build_only" -eq 1 ] && exit 0

if [ ! -e "$ROOT/.localrank-ready" ]; then
    echo "arm64-wheel: fetching an aarch64 Python into $ROOT"
    rm -rf "$ROOT"
    # The mirror apt uses here, or debootstrap's default when none is found.
    mirror="$(scripts/arm64-toolchain.sh --mirror)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-numpy \
        bookworm "$ROOT" $mirror >"$ROOT.log" 2>&1 \
        || { tail -20 "$ROOT.log" >&2; exit 1; }
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg -x "$deb" "$ROOT"
    done
    # numpy links libblas.so.3 / liblapack.so.3, which Debian provides through alternatives
    # that only the (skipped) configure step would create.
    ln -sf blas/libblas.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/liblapack.so.3"
    touch "$ROOT/.localrank-ready"
fi

rm -rf "$SITE"
mkdir -p "$SITE"
python3 -m zipfile -e "$wheel" "$SITE"

py() {
    PYTHONPATH="$SITE" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3" "$@"
}
for cpu in "max scalar,neon,sdot" "cortex-a72 scalar,neon"; do
    set -- $cpu
    echo "arm64-wheel: smoke test, QEMU_CPU=$1, expecting paths $2"
    QEMU_CPU=$1 LOCALRANK_EXPECT_KERNELS=$2 py scripts/arm64_smoke.py
done
echo "arm64-wheel: LOCALRANK_KERNEL=neon on a CPU with sdot"
QEMU_CPU=max LOCALRANK_KERNEL=neon py -c \
    "import localrank; k = localrank.default_kernel(); print('default kernel', k); assert k == 'neon'"
echo "arm64-wheel: ok"
