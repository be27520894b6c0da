#!/usr/bin/env bash
# Cold quickstart runs of an old and a new c2i binary, side by side on the same machine,
# alternating, each on its own empty cache: wall, user and system seconds, minor page
# faults (/usr/bin/time -v), the base model's selection evaluation and the candidates'
# evaluation seconds, and the candidate-rows evaluated (run.json / report.json).
#
#   bench/quickstart-old-new.sh OLD_BIN NEW_BIN OUT_DIR [REPEATS]
#
# Each repeat runs: OLD, NEW (search.racing = exact, the default), NEW with
# search.racing = halving. Run it on an otherwise idle machine; the load average before
# and after each run is logged. Prints a Markdown table at the end (summary.md).
set -euo pipefail
old=$(readlink -f "$1"); new=$(readlink -f "$2"); out=$(mkdir -p "$3" && readlink -f "$3")
repeats=${4:-1}
cd "$(dirname "$0")/.."
run() { # name bin extra-args...
  local name=$1 bin=$2; shift 2
  local dir="$out/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  echo "== $name start $(date -Is) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log"
  # A copy of the pipeline, so that the run's lock file is written beside it, not in the repo.
  cp pipelines/quickstart.toml "$dir/quickstart.toml"
  /usr/bin/time -v "$bin" --quiet run "$dir/quickstart.toml" --cache "$dir/cache" \
    --set "output.dir=\"$dir/out\"" "$@" > "$dir/stdout" 2> "$dir/time" || echo "$name failed" | tee -a "$out/log"
  echo "== $name end $(date -Is) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log"
  rm -rf "$dir/cache" "$dir/out/model"
}
for i in $(seq 1 "$repeats"); do
  run "old-$i" "$old"
  run "new-exact-$i" "$new"
  run "new-halving-$i" "$new" --set 'search.racing="halving"'
done
python3 - "$out" <<'PY' | tee "$out/summary.md"
import json, os, re, sys
out = sys.argv[1]
print("| run | wall s | user s | sys s | sys/user | minor faults | base selection eval s | candidate evals s | candidate-rows | winner | held-out |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name in sorted(os.listdir(out), key=lambda n: (n.split('-')[-1], n)):
    d = os.path.join(out, name)
    if not os.path.isdir(d):
        continue
    t = open(os.path.join(d, "time")).read()
    def field(label):
        m = re.search(re.escape(label) + r": (.*)", t)
        return m.group(1).strip() if m else "?"
    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(x) for x in wall.split(":")]
    wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    user, sys_ = float(field("User time (seconds)")), float(field("System time (seconds)"))
    faults = int(field("Minor (reclaiming a frame) page faults"))
    run = json.load(open(os.path.join(d, "out", "run.json")))
    rep = json.load(open(os.path.join(d, "out", "report.json")))
    base = sum(s["seconds"] for s in run["stages"] if s["stage"] == "evaluate"
               and s["instance"].startswith("base model, Selection") and s["outcome"] == "computed")
    cands = sum(s["seconds"] for s in run["stages"] if s["stage"] == "evaluate"
                and not s["instance"].startswith("base model") and "Heldout" not in s["instance"]
                and s["outcome"] == "computed")
    race = rep.get("race") or {}
    rows = f"{race.get('candidate_rows', '-')} / {race.get('candidate_rows_full', '-')}" if race else "all"
    b = rep.get("best") or {}
    win = f"{b.get('matrix', '?').replace('model.', '').replace('.weight', '')} K={b.get('blocks')} keep={b.get('keep')}"
    held = b.get("heldout", {}).get("accuracy", float("nan"))
    print(f"| {name} | {wall_s:.1f} | {user:.1f} | {sys_:.1f} | {sys_ / user:.1%} | {faults} | {base:.1f} | {cands:.1f} | {rows} | {win} | {held:.4f} |")
PY
