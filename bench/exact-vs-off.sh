#!/usr/bin/env bash
# Racing `exact` against `off` on pipelines: per pipeline, a cold run with
# search.racing="exact" on an empty cache, then one with "off" on the same cache (it
# computes only the rounds exact skipped). Then a table: same winner and figures,
# candidate-rows evaluated, seconds the off run added.
#
#   bench/exact-vs-off.sh C2I OUT NAME=PIPELINE...
#   e.g. bench/exact-vs-off.sh target/release/c2i /tmp/eo fever=pipelines/fever.toml
# Writes OUT/out/NAME-{exact,off}/ (report.json, run.json), OUT/NAME-*.err
# (`/usr/bin/time -v` and progress lines), OUT/cache-NAME, and OUT/exact-vs-off.md.
# The pipeline's lock file (PIPELINE.lock, which every run rewrites) is put back as it
# was, or removed if there was none.
set -euo pipefail
c2i=$(realpath "$1"); out=$(realpath -m "$2"); shift 2
mkdir -p "$out/out"
names=()
for arg in "$@"; do
  name=${arg%%=*}; pipe=${arg#*=}; names+=("$name")
  lock="${pipe%.toml}.lock"; saved=""
  if [ -e "$lock" ]; then saved=$(mktemp); cp "$lock" "$saved"; fi
  rm -rf "$out/cache-$name"
  for mode in exact off; do
    echo "== $name $mode start $(date -Is) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/log"
    /usr/bin/time -v "$c2i" run "$pipe" --cache "$out/cache-$name" \
      --set "search.racing=\"$mode\"" --set "output.dir=\"$out/out/$name-$mode\"" \
      > "$out/$name-$mode.out" 2> "$out/$name-$mode.err"
  done
  if [ -n "$saved" ]; then mv "$saved" "$lock"; else rm -f "$lock"; fi
done
python3 "$(dirname "$0")/exact_off.py" "$out" "${names[@]}" | tee "$out/exact-vs-off.md"
