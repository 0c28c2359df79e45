#!/usr/bin/env bash
# Checks the Yocto layer yocto/meta-holdfast as far as it can be checked without a Poky build:
#   - layer structure (conf/layer.conf with its collection, priority, series; BBFILES finds the
#     recipe; README);
#   - the recipe: named after the workspace version, with the variables a cargo + systemd +
#     useradd recipe needs, every file:// it names present;
#   - holdfast-crates.inc up to date with Cargo.lock (yocto/update-crates.sh --check);
#   - the systemd unit: the directives the product requires, and `systemd-analyze verify` where
#     systemd-analyze exists (skipped with a message where not);
#   - tmpfiles and udev rules present with the lines the unit relies on;
#   - the default /etc/holdfast/holdfast.toml passes `holdfast check`.
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
    for var in SUMMARY DESCRIPTION HOMEPAGE LICENSE LIC_FILES_CHKSUM SRC_URI SRCREV S \
        'SYSTEMD_SERVICE:\$\{PN\}' 'USERADD_PACKAGES' 'USERADD_PARAM:\$\{PN\}' \
        'GROUPADD_PARAM:\$\{PN\}' 'CONFFILES:\$\{PN\}' 'REQUIRED_DISTRO_FEATURES'; do
        has "$recipe" "^${var} \??\??=" "recipe sets ${var//\\/}"
    done
    has "$recipe" '^inherit .*\bcargo\b' "recipe inherits cargo"
    has "$recipe" '^inherit .*\bsystemd\b' "recipe inherits systemd"
    has "$recipe" '^inherit .*\buseradd\b' "recipe inherits useradd"
    has "$recipe" '^require \$\{BPN\}-crates\.inc' "recipe requires the generated crate list"
    has "$recipe" 'oe_cargo_build -p holdfast' "recipe builds the holdfast package"
    has "$recipe" '^LICENSE = "Apache-2\.0"' "recipe license matches Cargo.toml"
    grep -q 'license = "Apache-2.0"' Cargo.toml || fail "Cargo.toml's license is no longer Apache-2.0: update the recipe"
    for f in $(grep -oE 'file://[^ ";$]+' "$recipe" | sed 's#file://##' | sort -u); do
        [ -f "$files/$f" ] && ok "SRC_URI file $f present" || fail "SRC_URI names file://$f, missing from $files"
    done
    # The firmware profile the recipe asks for must exist.
    grep -q '^\[profile.firmware\]' Cargo.toml && ok "Cargo.toml has the firmware profile" \
        || fail "the recipe builds --profile firmware but Cargo.toml has no [profile.firmware]"
fi

# --- crate list -------------------------------------------------------------------------------
if bash yocto/update-crates.sh --check; then ok "holdfast-crates.inc matches Cargo.lock"; else fail "holdfast-crates.inc is out of date"; fi

# --- systemd unit -----------------------------------------------------------------------------
unit=$files/holdfast.service
if [ -f "$unit" ]; then
    has "$unit" '^Type=notify$' "unit is Type=notify"
    has "$unit" '^WatchdogSec=[0-9]+' "unit sets WatchdogSec"
    has "$unit" '^Restart=always$' "unit restarts always"
    has "$unit" '^User=holdfast$' "unit runs as the holdfast user"
    has "$unit" '^ProtectSystem=strict$' "unit has ProtectSystem=strict"
    has "$unit" '^ReadWritePaths=/var/lib/holdfast$' "unit may write only /var/lib/holdfast"
    has "$unit" '^ExecStart=/usr/bin/holdfast run --config /etc/holdfast/holdfast.toml$' "unit runs the installed config"
    has "$unit" '^CapabilityBoundingSet=$' "unit drops every capability by default"
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
    bin="${CARGO_TARGET_DIR:-target}/debug/holdfast"
    [ -x "$bin" ] || cargo build --locked -q -p holdfast
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
