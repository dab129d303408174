#!/bin/bash
# In-process A/B of the convolution kernels: the working tree's native/src against a git revision's.
# Usage: native/bench/abconv.sh [rev (default HEAD)] [filter-substring] [iterations per pass]
#   e.g. native/bench/abconv.sh HEAD~2 "r20" 100   (RESNET_NUM_THREADS sets the threads of both;
#   COLD=1 flushes the caches before every call)
# The baseline's objects are linked into one program with every global symbol renamed old_*, and the
# two variants' calls alternate (abconv.c): both see the same phases of a shared machine.
set -euo pipefail
rev=${1:-HEAD}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cflags=(-O3 -std=c11 -D_GNU_SOURCE -fno-math-errno)
git -C "$root" archive "$rev" native/src | tar -x -C "$tmp"
objs=()
for f in "$tmp"/native/src/conv*.c "$tmp"/native/src/gemm.c "$tmp"/native/src/ops.c "$tmp"/native/src/pool.c; do
  o="$tmp/old_$(basename "$f" .c).o"
  gcc "${cflags[@]}" -I"$tmp/native/src" -c "$f" -o "$o"
  objs+=("$o")
done
ld -r -o "$tmp/old.o" "${objs[@]}"
nm --defined-only -g "$tmp/old.o" | awk '{print $3" old_"$3}' > "$tmp/syms"
objcopy --redefine-syms="$tmp/syms" "$tmp/old.o" "$tmp/old_renamed.o"
gcc "${cflags[@]}" -I"$root/native/src" "$root/native/bench/abconv.c" "$root"/native/src/conv*.c "$root/native/src/gemm.c" \
  "$root/native/src/ops.c" "$root/native/src/pool.c" "$tmp/old_renamed.o" -o "$tmp/abconv" -lpthread -lm
echo "baseline $rev (left) -> working tree (right), fastest of ${3:-60} alternating calls each"
"$tmp/abconv" "${2:-}" "${3:-60}"
