#!/usr/bin/env bash
# Linker driver for the musl firmware builds: links a static-pie executable (ET_DYN with no
# program interpreter, so the kernel loads it at a random address: ASLR) where rustc would link
# a fixed-address static one.
#
#   HOLDFAST_LINK_CC=aarch64-linux-gnu-gcc cross/static-pie-cc.sh <rustc's linker arguments>
#
# rustc links static-pie only on targets whose spec says they support it; for
# aarch64-unknown-linux-musl and armv7-unknown-linux-musleabihf it does not (rust-lang/rust
# target specs), although musl and the crt objects rustc ships for them do (rcrt1.o,
# crtbeginS.o). The code is already position independent (the targets' default relocation
# model is pic, and the C is compiled with -fPIC), so this wrapper makes the one change rustc
# makes for a static-pie target: the self-relocating start file and `-static-pie` in place of
# `-static -no-pie`. cross/build.sh checks the result (ELF type DYN, no interpreter, no NEEDED).
set -euo pipefail
cc="${HOLDFAST_LINK_CC:?HOLDFAST_LINK_CC names the cross gcc}"
args=()
for a in "$@"; do
    case "$a" in
        -no-pie) ;;
        -static) args+=(-static-pie) ;;
        */self-contained/crt1.o) args+=("${a%crt1.o}rcrt1.o") ;;
        */self-contained/crtbegin.o) args+=("${a%crtbegin.o}crtbeginS.o") ;;
        */self-contained/crtend.o) args+=("${a%crtend.o}crtendS.o") ;;
        *) args+=("$a") ;;
    esac
done
exec "$cc" "${args[@]}"
