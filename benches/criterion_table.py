#!/usr/bin/env python3
"""Prints a markdown table of criterion medians (and fused/unfused ratios) from
target/criterion, for benches/RESULTS.md. Usage: python3 benches/criterion_table.py"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in sorted(root.rglob("new/estimates.json")):
    parts = est.parent.parent.relative_to(root).parts
    if len(parts) < 2:
        continue
    group, bench = parts[0], "/".join(parts[1:])
    e = json.loads(est.read_text())
    rows.setdefault(group, {})[bench] = (e["median"]["point_estimate"], e["median"]["confidence_interval"])

def ms(ns):
    return f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.1f} µs"

print("| workload | variant | median | 95% CI of median | ratio |")
print("|---|---|---|---|---|")
for group, benches in rows.items():
    fused = benches.get("fused", (None,))[0]
    for bench, (med, ci) in benches.items():
        ratio = ""
        if fused and bench != "fused":
            ratio = f"{med / fused:.2f}x fused"
        print(f"| {group} | {bench} | {ms(med)} | {ms(ci['lower_bound'])} – {ms(ci['upper_bound'])} | {ratio} |")
