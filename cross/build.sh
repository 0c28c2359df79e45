#!/usr/bin/env bash
# Builds the Holdfast firmware binaries: fully static, stripped, size-optimized `holdfast` for
# ARM boards, into dist/holdfast-<version>-<target>.
#
#   bash cross/build.sh aarch64|armv7|all
#
# Targets:
#   aarch64  aarch64-unknown-linux-musl       static musl (Rust's self-contained musl crt + libc)
#   armv7    armv7-unknown-linux-gnueabihf    static glibc (+crt-static); set
#            HOLDFAST_ARMV7_TARGET=armv7-unknown-linux-musleabihf to build against musl where
#            rustup can fetch that target's standard library.
#
# On a fresh Debian machine it installs what is missing: the Rust targets (rustup target add)
# and, with apt (as root or through sudo), the cross linkers gcc-aarch64-linux-gnu /
# gcc-arm-linux-gnueabihf. qemu-user-static (for cross/smoke.sh) is installed here too so one
# script prepares the machine. Nothing is installed when it is already there.
#
# The cross gcc is the linker driver and the C compiler for the -sys crates (ring, mimalloc):
# for musl it compiles against Debian's musl-dev headers of that architecture and rustc links
# its own crt objects and libc.a; for armv7 glibc, gcc links Debian's libc6-dev-armhf-cross
# statically. Build flags live in this script's environment, not in
# .cargo/config.toml, so native builds are untouched.
#
# Name resolution in the static binaries: musl's resolver reads /etc/hosts and /etc/resolv.conf
# itself; static glibc >= 2.34 has the `files` and `dns` NSS modules built in, so it does the
# same (other NSS modules named in /etc/nsswitch.conf, e.g. mdns or systemd's `resolve`, are not
# available to a static binary and are skipped). cross/smoke.sh checks `holdfast resolve`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bash cross/build.sh aarch64|armv7|all" >&2
    exit 2
}
[ $# -eq 1 ] || usage

ARMV7_TARGET="${HOLDFAST_ARMV7_TARGET:-armv7-unknown-linux-gnueabihf}"

case "$1" in
    aarch64) arches=(aarch64) ;;
    armv7) arches=(armv7) ;;
    all) arches=(aarch64 armv7) ;;
    *) usage ;;
esac

# --- per-architecture facts -------------------------------------------------------------------
triple_of() {
    case "$1" in
        aarch64) echo aarch64-unknown-linux-musl ;;
        armv7) echo "$ARMV7_TARGET" ;;
    esac
}
gcc_of() {
    case "$1" in
        aarch64) echo aarch64-linux-gnu-gcc ;;
        armv7) echo arm-linux-gnueabihf-gcc ;;
    esac
}
gcc_pkg_of() {
    case "$1" in
        aarch64) echo gcc-aarch64-linux-gnu ;;
        armv7) echo gcc-arm-linux-gnueabihf ;;
    esac
}
# C flags for a musl target: musl's headers in place of the cross gcc's glibc ones, then gcc's
# own (stddef.h, arm_neon.h), as Debian's musl-gcc.specs does for the host.
musl_cflags_of() {
    local t="$1" gcc="$2" dir
    case "$t" in
        aarch64-unknown-linux-musl) dir=/usr/include/aarch64-linux-musl ;;
        armv7-unknown-linux-musleabihf) dir=/usr/include/arm-linux-musleabihf ;;
        *) return 0 ;;
    esac
    echo "-nostdinc -isystem $dir -isystem $("$gcc" -print-file-name=include)"
}
qemu_of() {
    case "$1" in
        aarch64) echo qemu-aarch64-static ;;
        armv7) echo qemu-arm-static ;;
    esac
}

# --- installs ---------------------------------------------------------------------------------
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "error: need root or sudo to install: $*" >&2
            exit 1
        fi
    fi
    echo "== installing with apt: $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_pkgs=()
need_archs=()
for arch in "${arches[@]}"; do
    command -v "$(gcc_of "$arch")" >/dev/null 2>&1 || need_pkgs+=("$(gcc_pkg_of "$arch")")
    # A glibc target links Debian's static glibc for that architecture (a musl target brings
    # its own libc.a with the Rust target).
    # The C the build compiles (ring for rustls, mimalloc as the musl builds' allocator) must
    # see the headers of the libc it is linked with: for a musl target those are Debian's
    # musl-dev of that architecture (a multiarch package, installed beside the host's), used
    # by the cross gcc in place of its glibc headers (see musl_cflags_of). mimalloc compiled
    # against glibc headers would read glibc's thread-control block on a musl thread.
    case "$(triple_of "$arch")" in
        armv7-unknown-linux-gnueabihf)
            [ -f /usr/arm-linux-gnueabihf/lib/libc.a ] || need_pkgs+=(libc6-dev-armhf-cross) ;;
        aarch64-unknown-linux-musl)
            [ -f /usr/include/aarch64-linux-musl/stdint.h ] || need_pkgs+=(musl-dev:arm64)
            need_archs+=(arm64) ;;
        armv7-unknown-linux-musleabihf)
            [ -f /usr/include/arm-linux-musleabihf/stdint.h ] || need_pkgs+=(musl-dev:armhf)
            need_archs+=(armhf) ;;
    esac
    command -v "$(qemu_of "$arch")" >/dev/null 2>&1 || need_pkgs+=(qemu-user-static)
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    # A foreign architecture's package (musl-dev:arm64) needs that architecture known to dpkg.
    for a in "${need_archs[@]}"; do
        if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
            echo "== dpkg --add-architecture $a (for its musl-dev)"
            if [ "$(id -u)" -eq 0 ]; then dpkg --add-architecture "$a"; else sudo dpkg --add-architecture "$a"; fi
        fi
    done
    # shellcheck disable=SC2046
    apt_install $(printf '%s\n' "${need_pkgs[@]}" | sort -u)
fi

installed_targets="$(rustup target list --installed 2>/dev/null || true)"
for arch in "${arches[@]}"; do
    t="$(triple_of "$arch")"
    if ! grep -qx "$t" <<<"$installed_targets"; then
        echo "== rustup target add $t"
        rustup target add "$t"
    fi
done

# Global RUSTFLAGS would replace the per-target flags below (cargo takes only one source).
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    echo "warning: ignoring RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS for the firmware build" >&2
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi

version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)"
[ -n "$version" ] || { echo "error: no workspace version in Cargo.toml" >&2; exit 1; }
mkdir -p dist

# --- build ------------------------------------------------------------------------------------
for arch in "${arches[@]}"; do
    t="$(triple_of "$arch")"
    gcc="$(gcc_of "$arch")"
    prefix="${gcc%-gcc}"
    up="$(tr 'a-z-' 'A-Z_' <<<"$t")"
    low="$(tr '-' '_' <<<"$t")"
    # musl targets link static-pie (ASLR) through cross/static-pie-cc.sh; static glibc cannot
    # on armv7 (Debian's armhf glibc is built without static-pie: it ships no rcrt1.o).
    linker="$gcc"
    pie=""
    case "$t" in
        *-musl*) linker="$PWD/cross/static-pie-cc.sh" pie=1 ;;
    esac
    echo "== building holdfast $version for $t (profile firmware${pie:+, static-pie})"
    start=$SECONDS
    env \
        "HOLDFAST_LINK_CC=$gcc" \
        "CARGO_TARGET_${up}_LINKER=$linker" \
        "CARGO_TARGET_${up}_RUSTFLAGS=-C target-feature=+crt-static" \
        "CC_${low}=$gcc" \
        "AR_${low}=${prefix}-ar" \
        "CFLAGS_${low}=$(musl_cflags_of "$t" "$gcc")" \
        cargo build --locked --profile firmware --target "$t" -p holdfast --bin holdfast
    out="${CARGO_TARGET_DIR:-target}/$t/firmware/holdfast"
    dest="dist/holdfast-$version-$t"

    # Fully static: no program interpreter and no shared libraries.
    headers="$("${prefix}-readelf" -ld "$out")"
    if grep -q "Requesting program interpreter" <<<"$headers" || grep -q "(NEEDED)" <<<"$headers"; then
        echo "error: $out is dynamically linked:" >&2
        grep -E "interpreter|NEEDED" <<<"$headers" >&2
        exit 1
    fi
    # Position independent where the target can be: ELF type DYN (a static-pie) rather than EXEC.
    if [ -n "$pie" ] && ! "${prefix}-readelf" -h "$out" | grep -q "Type:.*DYN"; then
        echo "error: $out is not a static-pie executable:" >&2
        "${prefix}-readelf" -h "$out" | grep "Type:" >&2
        exit 1
    fi
    # Stripped: no symbol table left (the firmware profile sets strip = true).
    if "${prefix}-readelf" -S "$out" | grep -q "\.symtab"; then
        echo "== stripping $out"
        "${prefix}-strip" --strip-all "$out"
    fi
    cp "$out" "$dest"
    size=$(stat -c %s "$dest")
    awk -v d="$dest" -v s="$size" -v t=$((SECONDS - start)) \
        -v p="${pie:+static-pie}" \
        'BEGIN { printf "== %s: %d bytes (%.2f MiB), %s, stripped, built in %ds\n", d, s, s / 1048576, p ? p : "static", t }'
done

(cd dist && sha256sum holdfast-"$version"-* > SHA256SUMS)
