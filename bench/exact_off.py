#!/usr/bin/env python3
"""exact vs off: same winner, same full-row figures; candidate-rows and seconds saved.
Usage: exact_off.py DIR NAME...  (reads DIR/out/NAME-exact and DIR/out/NAME-off; see exact-vs-off.sh)"""
import json, sys
d = sys.argv[1]
print("| task | candidates | winner (exact) | same winner & figures as off | finished candidates identical | candidate-rows exact / off | saved | exact search s | s the off run added |")
print("|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    try:
        e = json.load(open(f"{d}/out/{name}-exact/report.json"))
        o = json.load(open(f"{d}/out/{name}-off/report.json"))
    except Exception as x:
        print(f"| {name} | missing: {x} |"); continue
    eb, ob = e["best"], o["best"]
    same = all(eb[k] == ob[k] for k in ("matrix", "blocks", "keep", "selection", "heldout"))
    fin = [(a, b) for a, b in zip(e["candidates"], o["candidates"]) if a.get("stopped_after_round") is None]
    ident = all(a["selection"] == b["selection"] for a, b in fin)
    r = e["race"]
    def search_s(rep):
        return sum(s["seconds"] for s in rep["stages"] if s["outcome"] in ("computed", "pulled") and not s["instance"].endswith("Heldout"))
    added = search_s(o)
    w = f'{eb["matrix"].replace("model.","").replace(".weight","")} K={eb["blocks"]} keep={round(eb["keep"],4)}'
    print(f'| {name} | {len(e["candidates"])} | {w} | {"yes" if same else "NO"} | {"yes" if ident else "NO"} ({len(fin)}) | {r["candidate_rows"]} / {r["candidate_rows_full"]} | {100*r["saved_share"]:.1f}% | {search_s(e):.0f} | {added:.1f} |')
