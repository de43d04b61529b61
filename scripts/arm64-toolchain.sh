#!/usr/bin/env bash
# Install, from Debian's archive, what cross-building and emulating aarch64 needs on an x86-64
# Debian machine (see docs/arm.md):
#
#   rustc-web (/usr/bin/rustc) + libstd-rust-web-dev:arm64   a rustc with an aarch64 std; the
#                                                            rustup toolchain on PATH has none
#   gcc-aarch64-linux-gnu, libc6-dev-arm64-cross             the linker and the aarch64 C library
#   qemu-user-static                                         runs aarch64 binaries
#   debootstrap        (only with --python)                  fetches an aarch64 Python for smoke tests
#
# Idempotent: when everything is installed it changes nothing and runs no apt command.
# It never touches the package sources unless the archive already configured cannot provide a
# good enough qemu (older than QEMU_MIN, 1:7.2 unless ARM64_QEMU_MIN says otherwise); then, on
# Debian 12, it adds bookworm-backports from the mirror the system already uses.
# Adding the arm64 architecture to dpkg is needed for the aarch64 std and is done once.
#
# Usage: scripts/arm64-toolchain.sh [--python | --mirror]
#   --python   also install debootstrap (for scripts/arm64-wheel.sh)
#   --mirror   install nothing; print the Debian mirror this machine's apt sources use for its
#              release (empty if none is found)
set -euo pipefail

# QEMU 7.2 (Debian 12's own) emulates `-cpu max` with FEAT_DotProd, and runs statically linked
# threaded test binaries; that is what the tests here need.
QEMU_MIN="${ARM64_QEMU_MIN:-1:7.2}"

want_python=0
print_mirror=0
for arg in "$@"; do
    case "$arg" in
        --python) want_python=1 ;;
        --mirror) print_mirror=1 ;;
        *) echo "usage: $0 [--python | --mirror]" >&2; exit 2 ;;
    esac
done

codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"

# The first URI of a `deb` source for the release itself (not -updates or -security), from
# deb822 *.sources files or one-line *.list files, so that backports and debootstrap use the
# mirror this machine is configured with.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk -v c="$codename" '
            function flush() {
                if (!found && deb && suite && uri != "") { print uri; found = 1 }
                deb = 0; suite = 0; uri = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == c) suite = 1 }
            /^URIs:/ { uri = $2 }
            END { flush() }' "$f"
    done
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } | awk -v c="$codename" '
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == c) print $i
        }'
}

first_mirror() {
    local all
    all="$(debian_mirror)"
    printf '%s\n' "${all%%$'\n'*}"
}

if [ "$print_mirror" -eq 1 ]; then
    first_mirror
    exit 0
fi

log() { echo "arm64-toolchain: $*" >&2; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

updated=0
apt_update() {
    if [ "$updated" -eq 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        updated=1
    fi
}

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'
}

# Which Rust packages: Debian 12 ships a recent rustc as rustc-web (from bookworm-security);
# releases without it ship a plain rustc.
rust_pkgs() {
    if installed rustc-web || [ -n "$(candidate rustc-web | grep -v '(none)')" ]; then
        echo "rustc-web libstd-rust-web-dev:arm64"
    else
        echo "rustc libstd-rust-dev:arm64"
    fi
}

missing=()

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "dpkg --add-architecture arm64"
    $SUDO dpkg --add-architecture arm64
    updated=0
    apt_update
fi

pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static"
[ "$want_python" -eq 1 ] && pkgs="$pkgs debootstrap"
# The apt cache may be empty on a fresh machine; only look at candidates when something is missing.
if ! { installed rustc-web || installed rustc; } || ! { installed libstd-rust-web-dev:arm64 || installed libstd-rust-dev:arm64; }; then
    apt_update
    pkgs="$(rust_pkgs) $pkgs"
fi
for p in $pkgs; do
    installed "$p" || missing+=("$p")
done

# pyo3 0.29 (the wheel) needs Rust 1.83; Debian 12's plain rustc is 1.63.
check_rustc() {
    local v
    v="$(/usr/bin/rustc --version | awk '{print $2}')"
    if ! dpkg --compare-versions "$v" ge 1.83; then
        log "/usr/bin/rustc is $v; 1.83 or newer is needed (Debian 12: rustc-web)"
        exit 1
    fi
    if ! ls "$(/usr/bin/rustc --print sysroot)"/lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-*.rlib >/dev/null 2>&1; then
        log "/usr/bin/rustc has no aarch64 std"
        exit 1
    fi
}

if [ "${#missing[@]}" -eq 0 ]; then
    check_rustc
    log "everything installed: $(/usr/bin/rustc --version), $(qemu-aarch64-static --version | head -1)"
    exit 0
fi

apt_update
qemu_from=()
if [[ " ${missing[*]} " == *" qemu-user-static "* ]]; then
    cand="$(candidate qemu-user-static)"
    if [ -z "$cand" ] || [ "$cand" = "(none)" ] || dpkg --compare-versions "$cand" lt "$QEMU_MIN"; then
        mirror="$(first_mirror)"
        if [ "$codename" != "bookworm" ] || [ -z "$mirror" ]; then
            log "qemu-user-static ${cand:-none} is older than $QEMU_MIN and this is not Debian 12; install a newer qemu-user-static by hand"
            exit 1
        fi
        log "qemu-user-static $cand < $QEMU_MIN: adding bookworm-backports"
        echo "deb $mirror bookworm-backports main" \
            | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
        updated=0
        apt_update
        qemu_from=(-t bookworm-backports)
    fi
fi

log "installing: ${missing[*]}"
rest=()
for p in "${missing[@]}"; do
    [ "$p" = qemu-user-static ] || rest+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
if [ "${#rest[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${rest[@]}" >/dev/null
fi
if [[ " ${missing[*]} " == *" qemu-user-static "* ]]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${qemu_from[@]}" qemu-user-static >/dev/null
fi
check_rustc
log "done: $(/usr/bin/rustc --version), $(qemu-aarch64-static --version | head -1)"
