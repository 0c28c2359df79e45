#!/usr/bin/env bash
# The power-cut test: the static `holdfast` binary in a small qemu VM (kernel + busybox
# initramfs, data dir on an ext4 virtio disk image), a device on the host publishing QoS 1
# through the VM's forwarded MQTT port, the VM SIGKILLed mid-stream (the guest's page cache dies
# with it), a second boot on the same disk with the bridge's uplink up, and a count of which
# PUBACKed messages reached the cloud broker (a host mosquitto). See README.md beside this file.
#
#   bash tests/powercut/run.sh                  # plumbing checks, then 3 power-cut rounds
#   bash tests/powercut/run.sh --rounds 10      # more rounds
#   bash tests/powercut/run.sh --plumbing       # only the VM plumbing checks (no bridge needed)
#   bash tests/powercut/run.sh --watchdog       # only the watchdog check (softdog, service user, udev rules)
#   bash tests/powercut/run.sh --no-plumbing    # only the power-cut rounds
#   bash tests/powercut/run.sh --help           # every option of harness.py
#
# Exit status: 0 when every check and round passed, 1 otherwise (a lost acknowledged message,
# a VM that did not boot, a build that does not support [[bridges]] yet, a missing tool).
#
# On a fresh Debian machine it installs what is missing (as root, or through sudo): qemu, busybox
# (static), mosquitto + clients, musl-tools, cpio, e2fsprogs and python3-venv with apt; the Rust
# target x86_64-unknown-linux-musl with rustup; paho-mqtt with pip into a venv in the work dir.
# The guest kernel is Debian's linux-image-amd64, fetched with `apt-get download` and unpacked
# into the work dir (nothing is installed into /boot and no initramfs hook runs).
#
# Environment:
#   CARGO_TARGET_DIR   where the musl release build goes (default: target/ in the workspace)
#   POWERCUT_WORK      work dir: kernel, venv, initramfs, disk images, logs
#                      (default: $TMPDIR/holdfast-powercut); the images of the last run stay
#                      there for a look after a failure
#   POWERCUT_HOLDFAST  use this static x86_64 holdfast binary instead of building one
#   POWERCUT_ACCEL     kvm | tcg (default: kvm when /dev/kvm is usable, else tcg)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${POWERCUT_WORK:-${TMPDIR:-/tmp}/holdfast-powercut}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
triple=x86_64-unknown-linux-musl
mkdir -p "$work"

log() { echo "== $*"; }
t_start=$SECONDS

# --- installs ---------------------------------------------------------------------------------
apt_updated=""
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo -n"
        else
            echo "error: need root or sudo to install: $*" >&2
            exit 1
        fi
    fi
    log "installing with apt: $*"
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" \
        </dev/null >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; exit 1; }
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
# The guest needs a static busybox (the plain `busybox` package is dynamically linked).
pkg_installed busybox-static || need+=(busybox-static)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || need+=(e2fsprogs)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v nbdkit >/dev/null 2>&1 || need+=(nbdkit)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
command -v stdbuf >/dev/null 2>&1 || need+=(coreutils)
if [ -z "${POWERCUT_HOLDFAST:-}" ]; then
    # ring's C code for the musl target.
    command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"
# qemu-io (the disk-image check after each cut) must be there whatever the installs above did
# to the qemu packages (a qemu-system upgrade has been seen to leave it out).
command -v qemu-io >/dev/null 2>&1 || apt_install qemu-utils

# A venv with paho-mqtt (the device client). A Debian python3 needs python3-venv for this.
venv="$work/venv"
if ! "$venv/bin/python" -c 'import paho.mqtt, sys; assert paho.mqtt.__version__ >= "2"' 2>/dev/null; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    log "pip install paho-mqtt (into $venv)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'paho-mqtt>=2,<3' </dev/null
fi

# --- the guest kernel: Debian's linux-image-amd64, unpacked, not installed ---------------------
kernel_dir="$work/kernel"
if [ ! -f "$kernel_dir/ready" ]; then
    [ -n "$apt_updated" ] || { apt-get update -qq 2>/dev/null || sudo -n apt-get update -qq; apt_updated=1; }
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    [ -n "$pkg" ] || { echo "error: apt knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
    log "fetching the guest kernel: $pkg (apt-get download, unpacked into $kernel_dir)"
    rm -rf "$kernel_dir"
    mkdir -p "$kernel_dir/deb"
    # _apt cannot write into a root-only dir; download as root without the sandbox user.
    (cd "$kernel_dir/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    dpkg-deb -x "$kernel_dir"/deb/*.deb "$kernel_dir/root"
    rm -rf "$kernel_dir/deb"
    touch "$kernel_dir/ready"
fi
vmlinuz="$(ls "$kernel_dir"/root/boot/vmlinuz-* | head -n1)"
moddir="$(ls -d "$kernel_dir"/root/lib/modules/* | head -n1)"

# --- the gateway: static x86_64 musl release build ---------------------------------------------
if [ -n "${POWERCUT_HOLDFAST:-}" ]; then
    holdfast="$POWERCUT_HOLDFAST"
else
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        log "rustup target add $triple"
        rustup target add "$triple"
    fi
    log "building holdfast for $triple (release)"
    b_start=$SECONDS
    (cd "$root" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
        CC_x86_64_unknown_linux_musl=musl-gcc \
        cargo build --locked --release --target "$triple" -p holdfast --bin holdfast)
    holdfast="$target_dir/$triple/release/holdfast"
    log "build took $((SECONDS - b_start))s"
fi
[ -x "$holdfast" ] || { echo "error: no holdfast binary at $holdfast" >&2; exit 1; }

# --- the initramfs: busybox, holdfast, init, the modules for virtio disk/net and ext4 ----------
stage="$work/initramfs"
rm -rf "$stage"
mkdir -p "$stage"/{bin,etc,lib/modules,proc,sys,dev,data,tmp,run}
cp /bin/busybox "$stage/bin/busybox"
cp "$holdfast" "$stage/bin/holdfast"
cp "$here/init" "$stage/init"
chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/bin/holdfast"
# The modules for virtio disk/net and ext4, dependencies first (read from each .ko's modinfo:
# the .deb ships no modules.dep, depmod runs at install time), decompressed, with their load
# order in etc/modules. A module built into the kernel is skipped; a `?` marks an optional one.
"$venv/bin/python" "$here/harness.py" modules "$moddir" "$stage" \
    crc32c_generic '?crc32c-intel' virtio_pci virtio_blk virtio_net ext4 softdog
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$work/initramfs.cpio.gz"
log "initramfs: $(du -h "$work/initramfs.cpio.gz" | cut -f1), modules: $(tr '\n' ' ' <"$stage/etc/modules")"
log "setup took $((SECONDS - t_start))s"

# --- the test itself ---------------------------------------------------------------------------
harness_pid=""
cleanup() {
    if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
        kill -TERM "$harness_pid" 2>/dev/null || true
        wait "$harness_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$venv/bin/python" -u "$here/harness.py" run \
    --work "$work" --kernel "$vmlinuz" --initramfs "$work/initramfs.cpio.gz" \
    --holdfast "$holdfast" "$@" </dev/null &
harness_pid=$!
set +e
wait "$harness_pid"
rc=$?
set -e
harness_pid=""
log "total time $((SECONDS - t_start))s"
exit "$rc"
