#!/usr/bin/env python3
"""Usage: race_table.py RUN_JSON [LAYERS=30]

Per-candidate evaluation cost from a run.json (its rounds summed) against
(layers recomputed / layers) x the base model's time on the same rounds."""
import json, sys, re, collections
run = json.load(open(sys.argv[1]))
n_layers = int(sys.argv[2]) if len(sys.argv) > 2 else 30
per = collections.defaultdict(dict)
for s in run["stages"]:
    if s["stage"] != "evaluate" or "Heldout" in s["instance"] or s["outcome"] != "computed":
        continue
    who, rows = s["instance"].split(", Selection")
    m = re.search(r"round (\d+)/", rows)
    per[who][int(m.group(1)) if m else 1] = s["seconds"]
base = per.pop("base model")
print(f"base model: {sum(base.values()):.1f} s over {len(base)} rounds: " + ", ".join(f"{v:.1f}" for _, v in sorted(base.items())))
print("| candidate | rounds | seconds | layers recomputed | expected | ratio |")
print("|---|---|---|---|---|---|")
ratios = []
for who, r in sorted(per.items(), key=lambda x: (int(re.search(r'layers\.(\d+)', x[0]).group(1)), x[0])):
    layer = int(re.search(r"layers\.(\d+)", who).group(1))
    rec = n_layers - layer
    t = sum(r.values())
    exp = sum(base[k] for k in r) * rec / n_layers
    ratios.append(t / exp)
    print(f"| {who} | {len(r)} | {t:.1f} | {rec} | {exp:.1f} | {t/exp:.2f} |")
print(f"ratio min {min(ratios):.2f} max {max(ratios):.2f}")
