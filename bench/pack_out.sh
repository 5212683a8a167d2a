#!/usr/bin/env bash
# bench/pack_out.sh: pack a device call's $OUT so that all of it comes back through the device tool's limits (at most
# 8 files of 16 MiB, folders at most 2 deep). Run it last in the call's command: `...; bash bench/pack_out.sh`.
#   - each suite state (<side>/state/*.tgz, e.g. gpu0/state/suite-llm.tgz) becomes $OUT/<side>-<name>, the rest of
#     $OUT one $OUT/results.tgz;
#   - a file over 15 MiB is split into <file>.part-aa, -ab, ... (join: cat <file>.part-* > <file>);
#   - the compiled-kernel caches (cupy-cache.tgz) come back only where KEEP_CACHE=1 (they are the largest, and a
#     call compiles what it misses);
#   - it prints what it left and warns when more than 8 files would come back.
set -u
OUT=${OUT:-/tmp/out}
cd "$OUT" || exit 2
tmp=$(mktemp -d)
for f in state/*.tgz */state/*.tgz; do
    [ -f "$f" ] || continue
    base=$(basename "$f")
    side=$(dirname "$(dirname "$f")")
    if [ "$base" = cupy-cache.tgz ] && [ "${KEEP_CACHE:-0}" != 1 ]; then rm -f "$f"; continue; fi
    if [ "$side" = . ]; then mv "$f" "$tmp/$base"; else mv "$f" "$tmp/$side-$base"; fi
done
tar czf "$tmp/results.tgz" --exclude='./state' . 2>/dev/null
find . -mindepth 1 -delete
mv "$tmp"/* . && rmdir "$tmp"
for f in *; do
    if [ "$(stat -c %s "$f")" -gt $((15 * 1024 * 1024)) ]; then split -b 15M "$f" "$f.part-" && rm -f "$f"; fi
done
n=$(ls | wc -l)
ls -la
[ "$n" -le 8 ] || echo "pack_out: WARNING: $n files, only 8 come back" >&2
