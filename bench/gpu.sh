#!/usr/bin/env bash
# The GPU checks and the 7B-scale benchmark, from a carried `--features cuda` build of
# c2i, on a machine with an NVIDIA GPU and the CUDA 13 libraries (the project's GPU
# machines: H100/H200, CUDA 13.0, the libraries in the image's Python environment).
#
# Expects, under $GPU_DIR (default gpu/):
#   c2i.xz                          the cuda build, stripped and xz-compressed (11 MB
#                                   instead of 86 MB: it must travel)
#   smollm2.gguf                    SmolLM2-135M-Instruct (or smollm2.gguf.part* to join)
#   laser_epistemic_reasoning.jsonl the quickstart's rows (c2i fetch bigbench)
#   qwen-tokenizer.json             Qwen2.5's tokenizer (for the 7B bench's real lengths)
#   cpu-report.json                 the CPU quickstart's report.json, to compare winners
# Writes $OUT/check.json, $OUT/quickstart-report.json, $OUT/bench.json and
# $OUT/summary.txt (OUT defaults to gpu-out/).
#
# Steps (GPU_STEPS, default "check quickstart bench"): run a subset to fit a time slot.
# The files travel to the GPU machine in two calls (README, "The GPU path"): stage them
# outside the checkout (e.g. /tmp/g, GPU_DIR=/tmp/g), which the second call's copy of
# the working tree does not touch.
set -uo pipefail
dir=${GPU_DIR:-gpu}
out=${OUT:-gpu-out}
steps=${GPU_STEPS:-check quickstart bench}
mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/summary.txt"; }

# The CUDA 13 libraries: the image's Python environment holds NVIDIA's wheels.
libs=$(find /opt /usr /root /home -name 'libcublas.so.13' 2>/dev/null | head -1)
if [ -n "$libs" ]; then export LD_LIBRARY_PATH="$(dirname "$libs"):${LD_LIBRARY_PATH:-}"; fi
for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
log "libraries: $LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/summary.txt"

if [ ! -x "$dir/c2i" ]; then
  python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
    "$dir/c2i.xz" "$dir/c2i" && chmod +x "$dir/c2i"
fi
# SmolLM2 may come in parts (98 MB does not travel in one call): join and check it.
smollm2_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$dir/smollm2.gguf" ] && ls "$dir"/smollm2.gguf.part* >/dev/null 2>&1; then
  cat "$dir"/smollm2.gguf.part* > "$dir/smollm2.gguf.joined"
  if [ "$(sha256sum < "$dir/smollm2.gguf.joined" | cut -d' ' -f1)" = "$smollm2_sha" ]; then
    mv "$dir/smollm2.gguf.joined" "$dir/smollm2.gguf"
  else
    rm -f "$dir/smollm2.gguf.joined"; log "smollm2.gguf parts incomplete (sha256 differs)"
  fi
fi
bin=$(readlink -f "$dir/c2i")
"$bin" --version | tee -a "$out/summary.txt" || { log "the binary does not start"; ldd "$bin" | tee -a "$out/summary.txt"; exit 1; }
[ -f "$dir/smollm2.gguf" ] && sha256sum "$dir/smollm2.gguf" | tee -a "$out/summary.txt"

for step in $steps; do
  case $step in
    check)
      log "check: gradients, log-probs and SVDs on SmolLM2, GPU against CPU"
      /usr/bin/time -v "$bin" --quiet gpu check --model "$dir/smollm2.gguf" \
        --data "$dir/laser_epistemic_reasoning.jsonl" --out "$out/check.json" 2> "$out/check.time"
      log "check exit $?"; grep -E "Elapsed|Maximum resident" "$out/check.time" | tee -a "$out/summary.txt"
      ;;
    quickstart)
      log "quickstart on the GPU"
      cache=$(mktemp -d)
      /usr/bin/time -v "$bin" run pipelines/quickstart.toml --cache "$cache" \
        --set model.path="\"$(readlink -f "$dir/smollm2.gguf")\"" \
        --set data.path="\"$(readlink -f "$dir/laser_epistemic_reasoning.jsonl")\"" \
        --set run.device=cuda --set output.dir="\"$(readlink -f "$out")/quickstart\"" \
        > "$out/quickstart.log" 2> "$out/quickstart.time"
      log "quickstart exit $?"; grep -E "Elapsed|Maximum resident" "$out/quickstart.time" | tee -a "$out/summary.txt"
      cp "$out/quickstart/report.json" "$out/quickstart-report.json" 2>/dev/null
      cp "$out/quickstart/run.json" "$out/quickstart-run.json" 2>/dev/null
      python3 - "$out/quickstart-report.json" "$dir/cpu-report.json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
pick = lambda r: (r["best"]["matrix"], r["best"]["blocks"], r["best"]["keep"]) if r.get("best") else None
print("winner gpu", pick(g), "cpu", pick(c), "same" if pick(g) == pick(c) else "DIFFERENT")
print("held-out accuracy gpu", g["best"]["heldout"]["accuracy"], "cpu", c["best"]["heldout"]["accuracy"])
print("seconds gpu", g.get("seconds"), "cpu", c.get("seconds"))
PY
      ;;
    pool)
      log "quickstart on the GPU through the pool executor (workers compute the device the actions name)"
      cache=$(mktemp -d)
      /usr/bin/time -v "$bin" run pipelines/quickstart.toml --cache "$cache" --executor pool --jobs 2 \
        --set model.path="\"$(readlink -f "$dir/smollm2.gguf")\"" \
        --set data.path="\"$(readlink -f "$dir/laser_epistemic_reasoning.jsonl")\"" \
        --set run.device=cuda --set output.dir="\"$(readlink -f "$out")/pool\"" \
        > "$out/pool.log" 2> "$out/pool.time"
      log "pool exit $?"; grep -E "Elapsed|Maximum resident" "$out/pool.time" | tee -a "$out/summary.txt"
      cp "$out/pool/report.json" "$out/pool-report.json" 2>/dev/null
      python3 - "$out/pool-report.json" "$out/quickstart-report.json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
p, l = (json.load(open(x)) for x in sys.argv[1:3])
same = p["best"] == l["best"] and [c["selection"] for c in p["candidates"]] == [c["selection"] for c in l["candidates"]]
print("pool vs local on the GPU: best and every candidate's figures", "same" if same else "DIFFERENT")
PY
      ;;
    bench)
      log "bench: Qwen2.5-7B shapes, synthetic bf16 weights"
      /usr/bin/time -v "$bin" --quiet gpu bench --data "$dir/laser_epistemic_reasoning.jsonl" \
        --tokenizer "$dir/qwen-tokenizer.json" ${GPU_BENCH_ARGS:-} --out "$out/bench.json" 2> "$out/bench.time"
      log "bench exit $?"; grep -E "Elapsed|Maximum resident" "$out/bench.time" | tee -a "$out/summary.txt"
      ;;
  esac
done
log "done"
