#!/usr/bin/env bash
# Checks the Yocto layer yocto/meta-holdfast as far as it can be checked without a Poky build:
#   - layer structure (conf/layer.conf with its collection, priority, series; BBFILES finds the
#     recipe; README);
#   - the recipe: named after the workspace version, with the variables a cargo + systemd +
#     useradd recipe needs, every file:// it names present;
#   - the release series: real names only, each shipping a Rust at least as new as the lock
#     file needs (computed from the crates' rust-version), the same minimum in Cargo.toml and
#     the layer README;
#   - the recipe's source: SRCREV pinned to a commit (never AUTOREV), no UNPACKDIR override,
#     the firmware profile guarded for both cargo class generations, no "static" claim;
#   - holdfast-crates.inc the standard `bitbake -c update_crates` output for the pinned
#     commit, holdfast-licenses.inc covering what the binary links (yocto/update-crates.sh
#     --check);
#   - oelint-adv (the recipe linter from PyPI) with no errors, where it is installed (CI
#     installs it);
#   - the systemd unit: the directives the product requires, and `systemd-analyze verify` where
#     systemd-analyze exists (skipped with a message where not);
#   - tmpfiles and udev rules present with the lines the unit relies on;
#   - the default /etc/holdfast/holdfast.toml passes `holdfast check` of a freshly built binary.
# Exits non-zero naming every failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

layer=yocto/meta-holdfast
recipe_dir=$layer/recipes-holdfast/holdfast
files=$recipe_dir/files
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
ok() {
    echo "ok: $*"
}
# has FILE REGEX DESCRIPTION
has() {
    if grep -Eq -- "$2" "$1"; then ok "$3"; else fail "$3 (no line matching /$2/ in $1)"; fi
}

# --- layer structure --------------------------------------------------------------------------
conf=$layer/conf/layer.conf
if [ -f "$conf" ]; then
    has "$conf" '^BBPATH \.= ":\$\{LAYERDIR\}"' "layer.conf extends BBPATH"
    has "$conf" '^BBFILE_COLLECTIONS \+= "holdfast"' "layer.conf names the holdfast collection"
    has "$conf" '^BBFILE_PATTERN_holdfast = "\^\$\{LAYERDIR\}/"' "layer.conf sets BBFILE_PATTERN_holdfast"
    has "$conf" '^BBFILE_PRIORITY_holdfast = "[0-9]+"' "layer.conf sets BBFILE_PRIORITY_holdfast"
    has "$conf" '^LAYERSERIES_COMPAT_holdfast = "[a-z ]+"' "layer.conf sets LAYERSERIES_COMPAT_holdfast"
    # OE-core release series and the Rust each ships (meta/recipes-devtools/rust).
    declare -A series_rust=([kirkstone]=1.59.0 [langdale]=1.63.0 [mickledore]=1.68.2
        [nanbield]=1.70.0 [scarthgap]=1.75.0 [styhead]=1.79.0 [walnascar]=1.84.1
        [whinlatter]=1.90.0 [wrynose]=1.94.1)
    # The newest rust-version any crate of the lock file (or the workspace) declares: the
    # Rust the build needs.
    needed="$(cargo metadata --format-version 1 --locked --filter-platform aarch64-unknown-linux-musl 2>/dev/null \
        | python3 -c '
import json, sys
meta = json.load(sys.stdin)
versions = [p["rust_version"] for p in meta["packages"] if p.get("rust_version")]
versions += ["1.85" for p in meta["packages"] if p.get("edition") == "2024"]
key = lambda v: tuple(int(x) for x in v.split("."))
print(max(versions, key=key))
' || true)"
    # version_ge A B: A >= B, with missing components as 0 (1.88 = 1.88.0).
    version_ge() {
        python3 -c 'import sys
v = [tuple(int(x) for x in a.split(".")) for a in sys.argv[1:]]
v = [t + (0,) * (3 - len(t)) for t in v]
sys.exit(0 if v[0] >= v[1] else 1)' "$1" "$2"
    }
    if [ -z "$needed" ]; then
        fail "cannot compute the Rust the lock file needs (cargo metadata failed)"
    else
        ok "the lock file needs Rust >= $needed"
        for name in $(sed -n -E 's/^LAYERSERIES_COMPAT_holdfast = "([a-z ]+)"/\1/p' "$conf"); do
            if [ -z "${series_rust[$name]:-}" ]; then
                fail "LAYERSERIES_COMPAT names '$name', which is no OE-core release series (${!series_rust[*]})"
            elif version_ge "${series_rust[$name]}" "$needed"; then
                ok "series $name ships Rust ${series_rust[$name]} >= $needed"
            else
                fail "series $name ships Rust ${series_rust[$name]}, older than the $needed the lock file needs"
            fi
        done
        workspace_rust="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^rust-version *=/{print $2; exit}' Cargo.toml)"
        if [ -n "$workspace_rust" ] && version_ge "$workspace_rust" "$needed"; then
            ok "Cargo.toml rust-version $workspace_rust covers it"
        else
            fail "Cargo.toml [workspace.package] rust-version '${workspace_rust}' is below the $needed the lock file needs"
        fi
        for member in $(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("Cargo.toml","rb"))["workspace"]["members"]))'); do
            grep -q '^rust-version.workspace = true$' "$member/Cargo.toml" \
                || fail "$member/Cargo.toml does not take the workspace rust-version (rust-version.workspace = true)"
        done
        grep -q "Rust >= ${workspace_rust}" "$layer/README.md" \
            && ok "layer README states Rust >= $workspace_rust" \
            || fail "layer README does not state the Rust the build needs (Rust >= ${workspace_rust})"
    fi
    has "$conf" '^LAYERDEPENDS_holdfast = ' "layer.conf sets LAYERDEPENDS_holdfast"
    has "$conf" 'recipes-\*/\*/\*\.bb' "BBFILES covers recipes-*/*/*.bb"
else
    fail "$conf missing"
fi
[ -f "$layer/README.md" ] && ok "layer README present" || fail "$layer/README.md missing"
grep -q "meta-raspberrypi" "$layer/README.md" 2>/dev/null \
    && ok "README explains a meta-raspberrypi build" || fail "README does not mention meta-raspberrypi"

# --- recipe -----------------------------------------------------------------------------------
version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)"
recipes=("$layer"/recipes-*/*/*.bb)
recipe="$recipe_dir/holdfast_${version}.bb"
if [ ${#recipes[@]} -ne 1 ] || [ "${recipes[0]}" != "$recipe" ]; then
    fail "expected exactly one recipe, $recipe (the workspace version is $version); found: ${recipes[*]}"
fi
if [ -f "$recipe" ]; then
    ok "recipe $recipe matches the workspace version"
    for var in SUMMARY DESCRIPTION HOMEPAGE SRC_URI SRCREV S \
        'SYSTEMD_SERVICE:\$\{PN\}' 'USERADD_PACKAGES' 'USERADD_PARAM:\$\{PN\}' \
        'GROUPADD_PARAM:\$\{PN\}' 'CONFFILES:\$\{PN\}' 'REQUIRED_DISTRO_FEATURES'; do
        has "$recipe" "^${var} \??\??=" "recipe sets ${var//\\/}"
    done
    has "$recipe" '^inherit .*\bcargo\b' "recipe inherits cargo"
    has "$recipe" '^inherit .*\bsystemd\b' "recipe inherits systemd"
    has "$recipe" '^inherit .*\buseradd\b' "recipe inherits useradd"
    has "$recipe" '^require \$\{BPN\}-crates\.inc' "recipe requires the generated crate list"
    has "$recipe" 'oe_cargo_build -p holdfast' "recipe builds the holdfast package"
    has "$recipe" '^require \$\{BPN\}-licenses\.inc' "recipe requires the generated licenses"
    has "$recipe_dir/holdfast-licenses.inc" '^LICENSE = "Apache-2\.0 & ' "LICENSE starts with Holdfast's own Apache-2.0"
    has "$recipe_dir/holdfast-licenses.inc" '^LIC_FILES_CHKSUM = "file://LICENSE;md5=[0-9a-f]{32}' "LIC_FILES_CHKSUM covers Holdfast's LICENSE"
    grep -q 'license = "Apache-2.0"' Cargo.toml || fail "Cargo.toml's license is no longer Apache-2.0: update LICENSE and the licenses include"
    has "$recipe" '^SRCREV = "[0-9a-f]{40}"$' "SRCREV is pinned to a commit"
    if grep -q 'AUTOREV' "$recipe"; then fail "the recipe uses AUTOREV: not reproducible, and the crate list is for one commit"; fi
    if grep -Eq '^UNPACKDIR' "$recipe"; then fail "the recipe sets UNPACKDIR (bitbake.conf owns it; WORKDIR is refused from 5.1 on)"; fi
    has "$recipe" '^S = "\$\{UNPACKDIR\}/' "S is under UNPACKDIR"
    has "$recipe" '^CARGO_PROFILE = ' "recipe sets CARGO_PROFILE (cargo class on master)"
    has "$recipe" '^BUILD_MODE = "--profile ' "recipe sets BUILD_MODE (cargo class up to whinlatter)"
    has "$recipe" 'bbfatal "the cargo class did not take' "do_compile refuses a build without the firmware profile"
    has "$recipe" '^RRECOMMENDS:\$\{PN\} \+= "ca-certificates"' "recipe recommends ca-certificates"
    if grep -iqE '\bstatic\b' "$recipe" "$conf"; then
        fail "recipe or layer.conf calls the Yocto build static (only cross/build.sh is)"
    fi
    for f in $(grep -oE 'file://[^ ";$]+' "$recipe" | sed 's#file://##' | sort -u); do
        [ -f "$files/$f" ] && ok "SRC_URI file $f present" || fail "SRC_URI names file://$f, missing from $files"
    done
    # The firmware profile the recipe asks for must exist.
    grep -q '^\[profile.firmware\]' Cargo.toml && ok "Cargo.toml has the firmware profile" \
        || fail "the recipe builds --profile firmware but Cargo.toml has no [profile.firmware]"
fi

# --- crate list -------------------------------------------------------------------------------
if bash yocto/update-crates.sh --check; then ok "crate list and licenses match the lock files"; else fail "holdfast-crates.inc or holdfast-licenses.inc is out of date"; fi

# --- recipe linter ----------------------------------------------------------------------------
# CI installs the pinned oelint-adv into a virtualenv; elsewhere one on PATH is used if present.
# oelint.vars.inconspaces is suppressed: the crate list must be bitbake -c update_crates's
# output byte for byte, and that writes `SRC_URI += " \`.
oelint="${OELINT_ADV:-$(command -v oelint-adv || true)}"
if [ -z "$oelint" ] && [ "${CI:-}" = true ]; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/holdfast-oelint"
    if [ ! -x "$venv/bin/oelint-adv" ]; then
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        }
        "$venv/bin/pip" install -q "oelint-adv==9.11.2"
    fi
    oelint="$venv/bin/oelint-adv"
fi
if [ -n "$oelint" ]; then
    for release in $(sed -n -E 's/^LAYERSERIES_COMPAT_holdfast = "([a-z ]+)"/\1/p' "$conf"); do
        lint="$("$oelint" --quiet --relpaths --release "$release" --suppress oelint.vars.inconspaces "$recipe" 2>&1 || true)"
        errors="$(grep ':error:' <<<"$lint" || true)"
        if [ -n "$errors" ]; then
            fail "oelint-adv --release $release: $errors"
        else
            ok "oelint-adv $("$oelint" --version 2>/dev/null | tail -n 1) --release $release: no errors ($(grep -c ':warning:' <<<"$lint" || true) warnings)"
        fi
    done
else
    echo "skip: oelint-adv not installed (pip install oelint-adv; CI installs it)"
fi

# --- systemd unit -----------------------------------------------------------------------------
unit=$files/holdfast.service
if [ -f "$unit" ]; then
    has "$unit" '^Type=notify$' "unit is Type=notify"
    has "$unit" '^WatchdogSec=[0-9]+' "unit sets WatchdogSec"
    # systemd must restart a hung service before the hardware watchdog resets the board.
    unit_wd="$(sed -n -E 's/^WatchdogSec=([0-9]+)s?$/\1/p' "$unit")"
    hw_wd="$(sed -n -E 's/^watchdog_timeout = "([0-9]+)s"$/\1/p' "$files/holdfast.toml")"
    if [ -n "$unit_wd" ] && [ -n "$hw_wd" ] && [ "$unit_wd" -lt "$hw_wd" ]; then
        ok "WatchdogSec=${unit_wd}s is shorter than the hardware watchdog's ${hw_wd}s"
    else
        fail "WatchdogSec (${unit_wd:-?}s) must be shorter than the default config's watchdog_timeout (${hw_wd:-?}s): systemd restarts before the board resets"
    fi
    has "$unit" '^Restart=always$' "unit restarts always"
    has "$unit" '^User=holdfast$' "unit runs as the holdfast user"
    has "$unit" '^ProtectSystem=strict$' "unit has ProtectSystem=strict"
    has "$unit" '^ReadWritePaths=/var/lib/holdfast /etc/holdfast$' "unit may write only /var/lib/holdfast and /etc/holdfast"
    has "$unit" '^ExecStart=/usr/bin/holdfast run --config /etc/holdfast/holdfast.toml$' "unit runs the installed config"
    has "$unit" '^CapabilityBoundingSet=$' "unit drops every capability by default"
    has "$unit" '^MemoryMax=' "unit caps the service's memory (MemoryMax)"
    has "$recipe" 'USERADD_PARAM:\$\{PN\} = ".*--groups dialout' "the service user is in dialout (serial lines)"
    if grep -Eq '^(After|Wants|Requires)=.*network-online' "$unit"; then
        fail "unit waits for network-online.target (minutes with the uplink down)"
    fi
    if grep -Eq '^AmbientCapabilities=.+' "$unit"; then
        fail "unit grants capabilities by default (only the low-ports drop-in may)"
    fi
    has "$files/holdfast-low-ports.conf" '^AmbientCapabilities=CAP_NET_BIND_SERVICE$' "low-ports drop-in grants CAP_NET_BIND_SERVICE"
    if command -v systemd-analyze >/dev/null 2>&1; then
        # verify needs the ExecStart binaries to exist: point them at a stand-in.
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        printf '#!/bin/sh\nexit 0\n' >"$tmp/holdfast"
        chmod +x "$tmp/holdfast"
        sed "s#/usr/bin/holdfast#$tmp/holdfast#g" "$unit" >"$tmp/holdfast.service"
        mkdir -p "$tmp/holdfast.service.d"
        cp "$files/holdfast-low-ports.conf" "$tmp/holdfast.service.d/low-ports.conf"
        out="$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no ./holdfast.service 2>&1 || true)"
        # Only what concerns our unit counts (a container may warn about its own units).
        problems="$(grep -i 'holdfast' <<<"$out" || true)"
        if [ -n "$problems" ]; then
            fail "systemd-analyze verify: $problems"
        else
            ok "systemd-analyze verify ($(systemd-analyze --version | head -n 1))"
        fi
    else
        echo "skip: systemd-analyze not available; unit checked by pattern only"
    fi
else
    fail "$unit missing"
fi

# --- tmpfiles and udev --------------------------------------------------------------------------
has "$files/holdfast.tmpfiles" '^d /var/lib/holdfast 0750 holdfast holdfast' "tmpfiles creates the data dir for holdfast"
has "$files/99-holdfast.rules" 'KERNEL=="watchdog\*".*GROUP="holdfast"' "udev gives holdfast the watchdog"
has "$files/99-holdfast.rules" 'KERNEL=="watchdog", SUBSYSTEM=="misc".*GROUP="holdfast"' "udev gives holdfast /dev/watchdog (misc device)"
has "$files/99-holdfast.rules" 'SUBSYSTEM=="leds"' "udev gives holdfast the LEDs"

# --- default config ---------------------------------------------------------------------------
config=$files/holdfast.toml
if [ -f "$config" ]; then
    # Always rebuilt (a no-op when fresh): a stale binary would check the config against old rules.
    bin="${CARGO_TARGET_DIR:-target}/debug/holdfast"
    cargo build --locked -q -p holdfast
    if out="$("$bin" check --config "$config" 2>&1)"; then
        ok "default config passes holdfast check"
    else
        fail "default config: $out"
    fi
    has "$config" '^data_dir = "/var/lib/holdfast"$' "default config keeps data in /var/lib/holdfast"
    has "$config" '^kind = "linux"$' "default config uses the linux board"
    has "$config" '^allow_anonymous = false$' "default config is closed to anonymous clients"
else
    fail "$config missing"
fi

if [ "$failures" -gt 0 ]; then
    echo "yocto check: $failures problem(s)" >&2
    exit 1
fi
echo "yocto check: layer OK"
