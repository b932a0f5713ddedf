#!/bin/sh
# gen-proto.sh PROTOC_C PROTO_DIR OUT_DIR — run protoc-c on csi.proto and the wrappers it
# imports, and put the four files flat in OUT_DIR (meson outputs cannot have subfolders):
# csi.pb-c.{c,h}, wrappers.pb-c.{c,h}; csi.pb-c.h then includes "wrappers.pb-c.h".
set -eu
protoc_c=$1 src=$2 out=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$protoc_c" -I"$src" --c_out="$tmp" "$src/csi.proto" "$src/google/protobuf/wrappers.proto"
sed 's|#include "google/protobuf/wrappers.pb-c.h"|#include "wrappers.pb-c.h"|' \
	"$tmp/csi.pb-c.h" >"$out/csi.pb-c.h"
cp "$tmp/csi.pb-c.c" "$out/csi.pb-c.c"
cp "$tmp/google/protobuf/wrappers.pb-c.h" "$out/wrappers.pb-c.h"
sed 's|#include "google/protobuf/wrappers.pb-c.h"|#include "wrappers.pb-c.h"|' \
	"$tmp/google/protobuf/wrappers.pb-c.c" >"$out/wrappers.pb-c.c"
