#!/usr/bin/env python3
"""Medians of the load-run JSON files in a folder (written by examples/loadgen via matrix.sh),
as a Markdown table per call count, with the engine/floor and TS/engine ratios."""
import glob
import json
import os
import statistics
import sys

folder = sys.argv[1] if len(sys.argv) > 1 else "target/loadrun"
runs = {}
for path in glob.glob(os.path.join(folder, "*.json")):
    with open(path) as f:
        r = json.load(f)
    runs.setdefault((r["label"], r["calls"]), []).append(r)


def med(rs, *keys):
    vals = []
    for r in rs:
        v = r
        for k in keys:
            v = v[k]
        vals.append(v)
    return statistics.median(vals)


print("| calls | bridge | runs | CPU s / call-min | peak RSS MB | KB / call | threads / call "
      "| in p50/p99/p99.9 µs | out p50/p99/p99.9 µs | lost (in+out) | generator % core |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = {"engine": 0, "floor": 1, "ts": 2}
for (label, n) in sorted(runs, key=lambda k: (k[1], order.get(k[0], 9), k[0])):
    rs = runs[(label, n)]
    lat = lambda d: "/".join(f"{med(rs, d, p):.0f}" for p in ("p50", "p99", "p999"))
    lost = sum(r["frames_in"]["lost"] + r["deltas_out"]["lost"] for r in rs)
    print(f"| {n} | {label} | {len(rs)} | {med(rs, 'bridge_cpu_s_per_call_minute'):.3f} "
          f"| {med(rs, 'bridge_peak_rss_mb'):.1f} | {med(rs, 'bridge_rss_per_call_kb'):.0f} "
          f"| {med(rs, 'bridge_threads_per_call'):.1f} | {lat('inbound_latency_us')} "
          f"| {lat('outbound_latency_us')} | {lost} "
          f"| {med(rs, 'generator_cpu_percent_of_one_core'):.0f} |")
print()
for n in sorted({k[1] for k in runs}):
    cpu = {l: med(runs[(l, m)], "bridge_cpu_s_per_call_minute") for (l, m) in runs if m == n}
    rss = {l: med(runs[(l, m)], "bridge_peak_rss_mb") for (l, m) in runs if m == n}
    parts = []
    if "engine" in cpu and "floor" in cpu:
        parts.append(f"engine/floor CPU {cpu['engine'] / cpu['floor']:.2f}")
    if "engine" in cpu and "ts" in cpu:
        parts.append(f"TS/engine CPU {cpu['ts'] / cpu['engine']:.2f}, "
                     f"TS/engine peak RSS {rss['ts'] / rss['engine']:.2f}")
    if parts:
        print(f"- {n} calls: " + "; ".join(parts))
