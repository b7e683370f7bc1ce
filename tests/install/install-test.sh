#!/usr/bin/env bash
# Install libpvm into a scratch prefix, then build and run an outside program
# against it twice: with find_package(pvm) and with pkg-config.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(ls -d "$tmp"/prefix/lib*/ | head -n1)

cmake -S "$src" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
LD_LIBRARY_PATH="$libdir" "$tmp/cm/consumer" | grep -q "^libpvm 0.1.0 on native$"

export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c11 -Wall -Wextra -Werror -o "$tmp/pc-consumer" "$src/consumer.c" $(pkg-config --cflags --libs pvm)
LD_LIBRARY_PATH="$libdir" "$tmp/pc-consumer" | grep -q "^libpvm 0.1.0 on native$"
# Static linking through pkg-config's private libraries.
cc -std=c11 -o "$tmp/pc-static" "$src/consumer.c" $(pkg-config --cflags pvm) "$libdir/libpvm.a" \
   $(pkg-config --libs-only-l --static pvm | sed 's/-lpvm//')
"$tmp/pc-static" | grep -q "^libpvm 0.1.0 on native$"
echo "install consumer: find_package, pkg-config (shared and static) OK"
